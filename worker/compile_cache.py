"""When a CPU job's compiled step pays, by the figures the worker's warm-up measured on this host,
and where the compiled steps are kept.

The first compile of the step on a host takes 20 s or more on 2 cores; a job then loads the
compiled package in ~0.1 to 0.3 s (worker/aot_step.py); and what the compiled step saves depends
on the CPU (~0.6 ms a step on one Xeon, ~0.16 ms on an AMD EPYC: bench/end_to_end.py,
docs/benchmarks.md). worker/warm_up.py measures those for the default step and writes them here,
beside inductor's cache (`cifarq-warm/<shape>`, the packages in `cifarq-aoti/`; a cleared cache
takes them with it); worker/recipes/tutorial.py reads them to decide (`compile_pays`), and a job's
compile waits for a warm-up in progress (`compile_lock`) rather than compiling the same step beside
it on the same cores.
"""
from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
import platform
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

# A compile from the cache must save this many times its own cost: the figures come from a
# few hundred steps, and a job's machine may be busier than the warm-up's was.
MARGIN = 1.5

# How the step is compiled, in the shape key: figures and packages made another way are not reused.
# "aoti": torch.export + AOTInductor (worker/aot_step.py); before it, torch.compile.
COMPILED_AS = "aoti"
# The code a compiled step is built from, relative to worker/: its text is in the shape key, so
# that a cache kept across an upgrade (a volume at CIFARQ_HOME) never hands a job a package built
# from another version of the step.
STEP_SOURCES = ("recipes/tutorial_step.py", "recipes/packed_step.py", "aot_step.py", "model.py")


def can_compile() -> bool:
    """Inductor's CPU backend writes C++ and needs a compiler to build it."""
    return shutil.which(compiler()) is not None


def compiler() -> str:
    return os.environ.get("CXX", "g++")


def _cache_dir() -> Path:
    from torch._inductor.runtime.runtime_utils import cache_dir  # honours TORCHINDUCTOR_CACHE_DIR

    return Path(cache_dir())


def _marks_dir() -> Path:
    return _cache_dir() / "cifarq-warm"


def package_path(key: str) -> Path:
    """Where the compiled step of this shape is kept (worker/aot_step.py)."""
    return _cache_dir() / "cifarq-aoti" / f"{key}.pt2"


def shape_key(step_fn, batch_size: int) -> str:
    """What the compiled step depends on: the parameters' shapes (a packed step's carry the point
    count), momentum or none, the batch size, the threads it runs on (inductor builds its loops for
    that many), torch's version, the CPU (it builds for the CPU at hand, -march=native: a cache
    shared by hosts of different CPUs, or a worker image run on another host than the one it was
    built on, must not hand one's code to another), how it is compiled and the code it is compiled
    from."""
    import torch

    shapes = [tuple(p.shape) for p in step_fn.params]
    what = (type(step_fn).__name__, shapes, getattr(step_fn, "uses_momentum", None), batch_size, torch.__version__,
            torch.get_num_threads(), cpu_model(), _cpu_features(), COMPILED_AS, STEP_CODE)
    return hashlib.sha256(repr(what).encode()).hexdigest()[:20]


def step_code(worker_dir: Path) -> str:
    """A digest of the STEP_SOURCES under `worker_dir` (a file that cannot be read counts by its
    name alone)."""
    digest = hashlib.sha256()
    for name in STEP_SOURCES:
        try:
            text = (worker_dir / name).read_bytes()
        except OSError:
            text = b"unreadable"
        digest.update(name.encode() + b"\0" + text + b"\0")
    return digest.hexdigest()


# Read once, when the worker's code is loaded: a process keys the code it runs, even where the
# files on disk were upgraded under it.
STEP_CODE = step_code(Path(__file__).parent)


@functools.cache
def cpu_model() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo; elsewhere what platform knows)."""
    model = _cpuinfo_field("model name")
    return model or platform.processor() or platform.machine()


@functools.cache
def _cpu_features() -> str:
    """The instruction set extensions the CPU reports (x86's flags, ARM's Features): what
    -march=native builds for. One model name can come with different ones (a VM that hides
    AVX-512, ARM hosts that name no model at all)."""
    return _cpuinfo_field("flags") or _cpuinfo_field("Features") or ""


def _cpuinfo_field(name: str) -> Optional[str]:
    """The first `name` line of /proc/cpuinfo, or None (no such line, not Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":", 1)[0].strip() == name:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def warm_figures(key: str) -> Optional[dict]:
    """The warm-up's measurements for this shape, or None where it has none."""
    try:
        return json.loads((_marks_dir() / key).read_text())
    except (OSError, ValueError):
        return None


def seconds_saved(figures: dict, steps: int) -> float:
    """What `steps` compiled steps save against eager ones, by the warm-up's figures (< 0: they lose)."""
    return steps * (figures["eager_seconds_per_step"] - figures["compiled_seconds_per_step"])


def compile_pays(figures: dict, steps: int) -> bool:
    """Whether `steps` steps repay a compile from the cache, by the warm-up's figures."""
    saved = seconds_saved(figures, steps)
    return saved > 0 and saved > MARGIN * figures["cached_compile_seconds"]


def write_figures(key: str, figures: dict) -> None:
    marks = _marks_dir()
    marks.mkdir(parents=True, exist_ok=True)
    partial = marks / f".{key}.partial"
    partial.write_text(json.dumps(figures) + "\n")
    partial.replace(marks / key)  # whole or absent, never half-written


@contextmanager
def compile_lock(*, exclusive: bool) -> Iterator[None]:
    """The warm-up holds it exclusively while it compiles; a job's compile takes it shared, so it
    waits for a warm-up in progress and then reads the step from the cache. Where the lock file
    cannot be made (a read-only cache), nothing waits: the compile goes ahead unlocked."""
    try:
        marks = _marks_dir()
        marks.mkdir(parents=True, exist_ok=True)
        lock = open(marks / ".lock", "a+")
    except OSError:
        yield
        return
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)

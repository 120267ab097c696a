"""When a CPU job's compiled step pays, by the figures the worker's warm-up measured on this host.

The first compile of the step on a host takes 16 to 50 s on 2 cores; from inductor's on-disk
cache a new process compiles it in ~1.5 s; and what the compiled step saves depends on the CPU
(~0.6 ms a step on one Xeon, ~0.14 ms on an AMD EPYC: bench/end_to_end.py, docs/benchmarks.md).
worker/warm_up.py measures those for the default step and writes them here, beside inductor's
cache (`cifarq-warm/<shape>`; a cleared cache takes them with it); worker/recipes/tutorial.py
reads them to decide (`compile_pays`), and a job's compile waits for a warm-up in progress
(`compile_lock`) rather than compiling the same step beside it on the same cores.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

# A compile from the cache must save this many times its own cost: the figures come from a
# few hundred steps, and a job's machine may be busier than the warm-up's was.
MARGIN = 1.5

# inductor's options for every compiled CPU step. The C++ wrapper calls the graph's kernels from
# C++ instead of a generated Python function: on the EPYC of docs/benchmarks.md the default step
# went from 0.43 to 0.40 ms, and its first compile from 19.0 to 14.7 s (from the cache: 1.7 s
# both). Part of the shape key: figures measured under other options are not these.
COMPILE_OPTIONS = {"cpp_wrapper": True}


def can_compile() -> bool:
    """torch.compile's CPU backend writes C++ and needs a compiler to build it."""
    return shutil.which(compiler()) is not None


def compiler() -> str:
    return os.environ.get("CXX", "g++")


def _marks_dir() -> Path:
    from torch._inductor.runtime.runtime_utils import cache_dir  # honours TORCHINDUCTOR_CACHE_DIR

    return Path(cache_dir()) / "cifarq-warm"


def shape_key(step_fn, batch_size: int) -> str:
    """What the compiled graph depends on: the parameters' shapes (a packed step's carry the
    point count), momentum or none, the batch size, torch's version and the compile options."""
    import torch

    shapes = [tuple(p.shape) for p in step_fn.params]
    what = (type(step_fn).__name__, shapes, getattr(step_fn, "uses_momentum", None), batch_size, torch.__version__,
            sorted(COMPILE_OPTIONS.items()))
    return hashlib.sha256(repr(what).encode()).hexdigest()[:20]


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

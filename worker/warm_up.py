"""The compiled CPU step, ready before the first job asks for it, and measured.

A CPU job may compile its step with torch.compile (worker/recipes/tutorial.py). The first
compile on a host takes 16 to 50 s on 2 cores; once inductor's on-disk cache holds the step, a
new process compiles it in ~1.5 s. What the compiled step saves depends on the CPU: ~0.6 ms a
step on one Xeon, ~0.06 ms on an AMD EPYC (bench/end_to_end.py, docs/benchmarks.md). So whether
a compile pays is measured on the host rather than guessed: `cifarq worker` starts this module in a
low-priority child (CIFARQ_CPU_WARM_UP=auto), which
- compiles the default recipe's step into the cache while the worker waits for work;
- times the compile from the cache, and the eager and the compiled step, and writes the figures
  beside inductor's cache (`cifarq-warm/<shape>`; a cleared cache takes them with it).
A job of that shape then compiles when its steps times the saving repay the cached compile
(`compile_pays`); a shape without figures compiles only for very long jobs (COMPILE_MIN_STEPS in
worker/recipes/tutorial.py). A job that compiles while the warm-up still does waits for it rather
than compiling the same step beside it on the same cores.

    python -m worker.warm_up    # what the worker runs; by hand, it warms the cache it would use
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

# A compile from the cache must save this many times its own cost: the figures come from a
# few hundred steps, and a job's machine may be busier than the warm-up's was.
MARGIN = 1.5


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
    point count), momentum or none, the batch size and torch's version."""
    import torch

    shapes = [tuple(p.shape) for p in step_fn.params]
    what = (type(step_fn).__name__, shapes, getattr(step_fn, "uses_momentum", None), batch_size, torch.__version__)
    return hashlib.sha256(repr(what).encode()).hexdigest()[:20]


def warm_figures(key: str) -> Optional[dict]:
    """The warm-up's measurements for this shape, or None where it has none."""
    try:
        return json.loads((_marks_dir() / key).read_text())
    except (OSError, ValueError):
        return None


def compile_pays(figures: dict, steps: int) -> bool:
    saved = figures["eager_seconds_per_step"] - figures["compiled_seconds_per_step"]
    return saved > 0 and steps * saved > MARGIN * figures["cached_compile_seconds"]


def write_figures(key: str, figures: dict) -> None:
    marks = _marks_dir()
    marks.mkdir(parents=True, exist_ok=True)
    partial = marks / f".{key}.partial"
    partial.write_text(json.dumps(figures) + "\n")
    partial.replace(marks / key)  # whole or absent, never half-written


@contextmanager
def compile_lock(*, exclusive: bool) -> Iterator[None]:
    """The warm-up holds it exclusively while it compiles; a job's compile takes it shared, so it
    waits for a warm-up in progress and then reads the step from the cache."""
    marks = _marks_dir()
    marks.mkdir(parents=True, exist_ok=True)
    with open(marks / ".lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def warm_up() -> str:
    """Compile the default recipe's CPU step into inductor's cache and measure it, unless that
    was done already. One line saying what happened."""
    import torch

    from worker.recipes.tutorial import CompiledStep

    torch.set_num_threads(1)  # as a CPU job at batch 4 runs (worker/devices.py)
    step_fn, batch_size = _default_step()
    key = shape_key(step_fn, batch_size)
    with compile_lock(exclusive=True):
        if warm_figures(key) is not None:
            return "the default step is in the compile cache already"
        messages: list[str] = []
        compiled = CompiledStep(step_fn, _Log(messages), wait_for_warm_up=False)  # it holds the lock
        first_seconds = compiled.compile_now(batch_size, torch.device("cpu"))
        if compiled.state != "ready":
            return f"warming up the compile cache failed: {' '.join(messages)}"
        figures = {"first_compile_seconds": round(first_seconds, 2),
                   "cached_compile_seconds": _cached_compile_seconds(),
                   "eager_seconds_per_step": _seconds_per_step(step_fn, batch_size),
                   "compiled_seconds_per_step": _seconds_per_step(compiled, batch_size)}
        write_figures(key, figures)
    saved = 1000 * (figures["eager_seconds_per_step"] - figures["compiled_seconds_per_step"])
    return (f"the default step compiled into the cache in {first_seconds:.1f} s; from the cache "
            f"{figures['cached_compile_seconds']:.1f} s; it saves {saved:.3f} ms a step")


def _cached_compile_seconds() -> float:
    """What a job pays to compile the step from the cache: timed in a new process, as a job's is
    (in this one it would take 0.2 s instead of ~1.4 s: inductor's own modules are loaded here)."""
    result = subprocess.run([sys.executable, "-m", "worker.warm_up", "--time-cached-compile"],
                            capture_output=True, text=True, check=True)
    return round(float(result.stdout.split()[-1]), 2)


def _default_step():
    """The default recipe's step, as a job makes it, and its shape's key."""
    import torch

    from shared.jobspec import TrainConfig
    from worker.model import Net
    from worker.recipes.tutorial_step import TutorialStep

    config = TrainConfig()
    model = Net(config.width)
    step_fn = TutorialStep(model, torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum))
    return step_fn, config.batch_size


def _seconds_per_step(step, batch_size: int, steps: int = 300, rounds: int = 3) -> float:
    """Best of `rounds` rounds of `steps` steps on random batches (after one round's warm-up)."""
    import torch

    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(3, batch_size, 32, 32, generator=generator)
    targets = torch.randint(0, 10, (batch_size,), generator=generator)
    best = float("inf")
    for round_ in range(rounds + 1):
        started = time.perf_counter()
        for _ in range(steps):
            step(inputs, targets)
        if round_:
            best = min(best, (time.perf_counter() - started) / steps)
    return round(best, 7)


class _Log:
    def __init__(self, messages: list[str]):
        self.messages = messages

    def log(self, message: str) -> None:
        self.messages.append(message)


def main() -> None:
    if sys.argv[1:] == ["--time-cached-compile"]:
        import torch

        from worker.recipes.tutorial import CompiledStep

        torch.set_num_threads(1)
        step_fn, batch_size = _default_step()
        print(CompiledStep(step_fn, _Log([]), wait_for_warm_up=False).compile_now(batch_size, torch.device("cpu")))
        return
    started = time.perf_counter()
    try:
        os.nice(10)  # a job that arrives meanwhile comes first
    except OSError:
        pass
    line = warm_up() if can_compile() else f"no C++ compiler ({compiler()}): nothing to warm up"
    sys.stderr.write(f"cifarq warm-up: {line} ({time.perf_counter() - started:.1f} s in all)\n")


if __name__ == "__main__":
    main()

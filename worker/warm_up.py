"""A CPU worker's warm-up: the default step compiled ahead of time, and measured.

A CPU job may run its step compiled by AOTInductor (worker/aot_step.py), where that pays;
whether it does is measured on the host rather than guessed (worker/compile_cache.py).
`cifarq worker` starts this module in a low-priority child when it starts (CIFARQ_CPU_WARM_UP=auto):
it builds the default recipe's compiled step (its package, beside inductor's cache) while the
worker waits for work, times loading it (in a new process, as a job's), the eager and the
compiled step, and writes those figures. The first job then never pays the first compile, and
jobs load the compiled step only where their steps repay the load.

    python -m worker.warm_up    # what the worker runs; by hand, it warms the cache it would use

The worker image's build runs it too (docker/worker.Dockerfile), so that a new container's first
job loads the step rather than running eagerly beside its build.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

from worker.compile_cache import (can_compile, compile_lock, compiler, package_path, seconds_saved, shape_key,
                                  warm_figures, write_figures)


def warm_up() -> tuple[bool, str]:
    """Compile the default recipe's CPU step ahead of time and measure it, unless that was done
    already. Whether the step and its figures are in the cache now, and one line saying what happened."""
    step_fn, batch_size = _default_step()
    key = shape_key(step_fn, batch_size)
    with compile_lock(exclusive=True):
        if warm_figures(key) is not None and package_path(key).exists():
            return True, "the default step is in the compile cache already"
        messages: list[str] = []
        compiled, first_seconds = _compile(step_fn, batch_size, messages)
        if compiled.state != "ready":
            return False, f"warming up the compile cache failed: {' '.join(messages)}"
        try:
            figures = {"first_compile_seconds": round(first_seconds, 2),
                       "cached_compile_seconds": _cached_compile_seconds(),
                       "eager_seconds_per_step": _seconds_per_step(step_fn, batch_size),
                       "compiled_seconds_per_step": _seconds_per_step(compiled, batch_size)}
        except Exception as exc:  # noqa: BLE001 - without figures, jobs follow the rule for unmeasured shapes
            return False, f"the default step compiled into the cache in {first_seconds:.1f} s; timing it failed: {exc}"
        write_figures(key, figures)
    saved = 1000 * seconds_saved(figures, 1)
    return True, (f"the default step compiled into the cache in {first_seconds:.1f} s; loading it takes "
                  f"{figures['cached_compile_seconds']:.1f} s; it saves {saved:.3f} ms a step")


def _cached_compile_seconds() -> float:
    """What a job pays to load the compiled step: timed in a new process, as a job's is (in this
    one the package's loader is warm already)."""
    result = subprocess.run([sys.executable, "-m", "worker.warm_up", "--time-cached-compile"],
                            capture_output=True, text=True, check=True)
    return round(float(result.stdout.split()[-1]), 2)


def _compile(step_fn, batch_size: int, messages: list[str]):
    """The step compiled now (the warm-up holds the compile lock: no waiting for it), and the seconds it took."""
    import torch

    from worker.recipes.tutorial import CompiledStep

    compiled = CompiledStep(step_fn, _Log(messages), wait_for_warm_up=False)
    return compiled, compiled.compile_now(batch_size, torch.device("cpu"))


def _default_step():
    """The default recipe's step, as a job makes it (one thread, as a CPU job at batch 4 runs:
    worker/train.py), and its batch size."""
    import torch

    from shared.jobspec import TrainConfig
    from worker.model import Net
    from worker.recipes.tutorial_step import TutorialStep

    torch.set_num_threads(1)
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


def main() -> int:
    """Exit status 0 where the default step and its figures are in the cache afterwards: the
    worker image's build runs this too (docker/worker.Dockerfile) and fails rather than ship
    without them."""
    if sys.argv[1:] == ["--time-cached-compile"]:  # _cached_compile_seconds' new process
        print(_compile(*_default_step(), messages=[])[1])
        return 0
    started = time.perf_counter()
    try:
        os.nice(10)  # a job that arrives meanwhile comes first
    except OSError:
        pass
    warm, line = warm_up() if can_compile() else (False, f"no C++ compiler ({compiler()}): nothing to warm up")
    sys.stderr.write(f"cifarq warm-up: {line} ({time.perf_counter() - started:.1f} s in all)\n")
    return 0 if warm else 1


if __name__ == "__main__":
    sys.exit(main())

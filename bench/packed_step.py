"""The packed step against the lone job's step, in one process: time per step and per point.

usage: python bench/packed_step.py [--device cpu|cuda] [--points 1,2,4,8,16,32] [--threads 1]
                                   [--compile] [--steps 300] [--out FILE.json]

`TutorialStep` (a lone job's step, worker/recipes/tutorial_step.py) and `PackedStep` of P points
(worker/recipes/packed_step.py) on random batch-4 inputs, each warmed up, then timed over
--steps steps (CUDA: synchronised). --compile runs both compiled (AOTInductor) as a CPU job does
(compile time reported apart); on CUDA the steps are captured in a CUDA graph as the jobs do.
On CUDA also the peak memory of each pack, per point. No data set, no queue: what packing does
to the step itself; bench/packed_sweep.py measures a sweep end to end.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.common import machine, write_results  # noqa: E402
from tests.recording_hooks import Recorder  # noqa: E402
from worker.model import Net  # noqa: E402
from worker.recipes.packed_step import PackedStep  # noqa: E402
from worker.recipes.tutorial import CompiledStep, capture_step  # noqa: E402
from worker.recipes.tutorial_step import TutorialStep  # noqa: E402


def make_point(seed: int, device: torch.device) -> tuple[Net, torch.optim.SGD]:
    torch.manual_seed(seed)
    model = Net().to(device)
    return model, torch.optim.SGD(model.parameters(), lr=0.001 * (1 + seed % 4), momentum=0.9)


def time_step(step, inputs, targets, device: torch.device, steps: int) -> float:
    """Seconds per step."""
    for _ in range(20):
        step(inputs, targets)
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step(inputs, targets)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / steps


def prepared(step_fn, points, device: torch.device, compile: bool) -> tuple[object, float]:
    """The step as a job runs it: captured on CUDA, compiled on the CPU with --compile; and the
    seconds that took."""
    started = time.perf_counter()
    if device.type == "cuda":
        captured = capture_step(step_fn, 4, device, Recorder(), points=points)
        return captured or step_fn, time.perf_counter() - started
    if compile:
        compiled = CompiledStep(step_fn, Recorder(), wait_for_warm_up=False)
        compiled.compile_now(4, device, points=points)
        return compiled, time.perf_counter() - started
    return step_fn, 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--points", default="1,2,4,8,16,32")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)

    lone, lone_prepare = prepared(TutorialStep(*make_point(0, device)), None, device, args.compile)
    x, y = torch.randn(3, 4, 32, 32, device=device), torch.randint(0, 10, (4,), device=device)
    lone_seconds = time_step(lone, x, y, device, args.steps)
    rows = []
    for count in map(int, args.points.split(",")):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        step, prepare = prepared(PackedStep([make_point(seed, device) for seed in range(count)]), count, device,
                                 args.compile)
        xs = torch.randn(count, 3, 4, 32, 32, device=device)
        ys = torch.randint(0, 10, (count, 4), device=device)
        seconds = time_step(step, xs, ys, device, args.steps)
        row = {"points": count, "ms_per_step": round(seconds * 1e3, 3), "ms_per_point": round(seconds * 1e3 / count, 3),
               "points_per_lone_step": round(count * lone_seconds / seconds, 2), "prepare_seconds": round(prepare, 1)}
        if device.type == "cuda":
            row["peak_mib_per_point"] = round(torch.cuda.max_memory_allocated() / 2**20 / count, 2)
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {"machine": machine(), "device": str(device), "threads": args.threads, "compile": args.compile,
              "lone_ms_per_step": round(lone_seconds * 1e3, 3), "lone_prepare_seconds": round(lone_prepare, 1),
              "packs": rows}
    print(json.dumps(result, indent=2))
    if args.out:
        write_results(args.out, result)


if __name__ == "__main__":
    main()

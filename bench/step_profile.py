"""Where the CPU step's time goes: each kernel of its AOTInductor package, per step.

usage: python bench/step_profile.py [--steps 1000] [--options JSON] [--out FILE.json]

Builds the tutorial's step (worker/recipes/tutorial_step.py) into a package as a CPU job does
(worker/aot_step.build, with its PACKAGE_OPTIONS), plus inductor's `cpp.enable_kernel_profile`, so
that each generated C++ kernel is a row of torch.profiler's table beside the aten ops it calls
(MKL's matrix products). One thread, batch 4, random batches, in a temporary inductor cache.
`--options '{"realize_reads_threshold": 4}'` builds with other inductor options on top (that
one: inductor's default, before docs/benchmarks.md's "Inductor stores the max-pool once"). The
generated C++ stays in the printed folder, to be read beside the table.

Read the shares with care: in some processes, under the profiler only, the first kernel (conv1's
im2col, ~20 us) took 100 to 420 us a step (2026-11-30: 6 runs of 16, with either option, in the
process that built the package or in a new one that loaded it, with malloc's mmap and trim
thresholds raised or not). The same packages timed without the profiler never showed it (0.386 to 0.399 ms a step
in each of 10 processes for the kept option, 0.501 to 0.505 in 3 for the default). Run it twice.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import torch
import torch._inductor
from torch.profiler import ProfilerActivity, profile

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.common import machine, write_results  # noqa: E402
from worker import aot_step  # noqa: E402
from worker.model import Net  # noqa: E402
from worker.recipes.tutorial_step import TutorialStep  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--options", type=json.loads, default={})
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    # The package and inductor's generated C++ go to a new folder (inductor reads this at each
    # compile): the run builds from nothing and leaves the user's cache alone.
    cache = tempfile.mkdtemp(prefix="cifarq-step-profile-")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = Net()
    step = TutorialStep(model, torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9))
    inputs = torch.randn(500, 3, 4, 32, 32)
    targets = torch.randint(0, 10, (500, 4))
    extra_options = {"cpp.enable_kernel_profile": True, **args.options}
    package = Path(cache) / "step.pt2"
    aot_step.build(step, inputs[0], targets[0], package, extra_options=extra_options)
    compiled = aot_step.bound_step(torch._inductor.aoti_load_package(str(package)), aot_step.step_tensors(step))
    for i in range(200):
        compiled(inputs[i % 500], targets[i % 500])
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(args.steps):
            compiled(inputs[i % 500], targets[i % 500])

    rows = sorted(({"name": e.key, "calls_per_step": e.count / args.steps,
                    "us_per_step": e.self_cpu_time_total / args.steps}
                   for e in prof.key_averages() if e.self_cpu_time_total > 0),
                  key=lambda r: -r["us_per_step"])
    total = sum(r["us_per_step"] for r in rows)
    print(f"{'kernel or op':<72} {'calls':>5} {'us/step':>8} {'share':>6}")
    for r in rows[:25]:
        print(f"{r['name'][:72]:<72} {r['calls_per_step']:>5.0f} {r['us_per_step']:>8.1f} {r['us_per_step'] / total:>6.1%}")
    options = {**aot_step.PACKAGE_OPTIONS, **extra_options}
    print(f"total {total:.0f} us a step (under the profiler); options {options}; generated C++ under {cache}")
    if args.out:
        write_results(args.out, {"machine": machine(), "options": options, "steps": args.steps, "rows": rows})


if __name__ == "__main__":
    main()

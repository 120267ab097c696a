"""The compiled CPU step, built ahead of time by AOTInductor and loaded by each job in a fraction of a second.

torch.compile (the mechanism until 2026-11-30) compiled the step at a job's first call: ~15 s
cold on 2 cores, and 1.2 to 1.7 s again in every new job process even with inductor's cache warm
(the function traced anew), with dynamo's guards checked at every call. torch.export with
AOTInductor builds the same graph once into a package (a shared library and its metadata), which
a job loads in ~0.1 to 0.3 s and calls without guards (docs/benchmarks.md has the figures).

The step's tensors (parameters, momentum buffers, lr and momentum: each step class names them in
`TENSORS`) are the package's inputs, not constants baked into it, and the package updates them in
place as the eager step does; so one package serves every job of one shape, whatever its weights
or learning rate. Packages live beside inductor's cache, `cifarq-aoti/<shape key>.pt2`, keyed by
everything the code depends on (worker/compile_cache.py: shape_key), the CPU model included, since
inductor builds for the CPU it runs on (-march=native).
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from worker.compile_cache import package_path, shape_key

StepFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# Inductor's options for the package. By default inductor recomputes a small node inside each op
# that reads it unless the node reads more than 4 values. The max-pool reads 4, so conv2's im2col,
# which reads every pooled value 25 times, recomputed the pool (4 loads, 3 maxes, the ReLU) for each
# of its 60,000 outputs in a scalar gather: 71 us of a 0.50 ms step on an AMD EPYC. At 1, a node
# that several ops read is stored once whenever it reads more than one value: that kernel takes
# 12 us, the step 0.40 ms, with the same weights to 1.5e-8 after 100 steps (docs/benchmarks.md).
#
# The other three make a host's first build shorter, which the first job on a fresh host waits out
# (or runs eagerly beside). Measured on a 2-core Xeon (docs/benchmarks.md, 2026-11-30): 66 s -> 42 s.
# - Precompiled headers: inductor first builds two of them (~19 s on that host) to save ~6 s in each
#   later build. A host builds one to three packages, so they cost more than they save. The
#   package is the same code either way (same step time, measured).
# - `vec_isa_ok` (ISA_TRUSTED): inductor otherwise test-compiles a kernel for AVX-512 and one for
#   AVX2, where the CPU's flags name them (~10 s once per cache), to learn whether the compiler
#   takes them: when it builds, and again when a package loads (to compare the package's
#   instruction set with the host's, a comparison that only warns). A compiler that does not take
#   them fails the build, and the job runs its step eagerly (worker/recipes/tutorial.py). (CPUs
#   with AVX-512 BF16, VNNI or AMX still get those extensions' own test compiles.)
# Left at its default: the wrapper's optimisation level. At O0 the build saves ~5 s more, and every
# step is 8 to 17% slower.
# This file is in the packages' key (worker/compile_cache.py), so a change here builds them anew.
ISA_TRUSTED = {"cpp.vec_isa_ok": True}
PACKAGE_OPTIONS = {"realize_reads_threshold": 1,
                   "aot_inductor.precompile_headers": False, "cpp_cache_precompile_headers": False, **ISA_TRUSTED}


def load_or_build(step_fn: Any, inputs: torch.Tensor, targets: torch.Tensor, *,
                  build_missing: bool = True) -> tuple[StepFunction, bool]:
    """`step_fn` (a TutorialStep or a PackedStep) compiled for batches shaped like these: its
    package loaded, built first where this host has none for the shape (FileNotFoundError instead
    where not `build_missing`). Returns the compiled step, f(inputs, targets) -> loss, bound to
    step_fn's own tensors, and whether it was built now."""
    import torch._inductor  # here, not at import: inductor takes ~0.9 s to import, and a GPU job never needs it

    path = package_path(shape_key(step_fn, inputs.shape[-3]))  # (..., 3, n, 32, 32): n is the batch size
    built = not path.exists()
    if built and not build_missing:
        raise FileNotFoundError(f"no compiled step at {path}")
    if built:
        build(step_fn, inputs, targets, path)
    try:
        with torch._inductor.config.patch(ISA_TRUSTED):
            package = torch._inductor.aoti_load_package(str(path))
    except Exception:
        if not built:  # a package that does not load is built again by the next compile, not failed on again
            path.unlink(missing_ok=True)
        raise
    return bound_step(package, step_tensors(step_fn)), built


def bound_step(package: Any, tensors: list) -> StepFunction:
    """f(inputs, targets) -> loss: the package called on a batch and the step's tensors.
    The package's own __call__ flattens its arguments with pytree (the batch, its labels and the
    step's tensors, 22 for the tutorial's step) and unflattens the result at every call, ~35 us of
    a 0.5 ms step. The step's tensors are the same objects at every step (updated in place), so
    they are flattened once here and the package's loader is called with the list, in the order
    __call__ would give it. Where a torch has no such loader, through __call__."""
    from torch.utils import _pytree as pytree

    loader = getattr(package, "loader", None)
    if not callable(getattr(loader, "run", None)):
        return lambda x, y: package(x, y, tensors)
    flat_tensors = pytree.tree_flatten(tensors)[0]
    return lambda x, y: loader.run([x, y, *flat_tensors])[0]


def build(step_fn: Any, inputs: torch.Tensor, targets: torch.Tensor, path: Path,
          extra_options: Optional[dict] = None) -> None:
    """Export the step on example batches (traced on fake tensors: nothing is updated) and compile
    it into a package at `path`, whole or not at all. `extra_options`: inductor options on top of
    PACKAGE_OPTIONS (bench/step_profile.py turns the kernel profile on; jobs pass none)."""
    import torch._inductor
    import torch.export

    exported = torch.export.export(_StepModule(step_fn), (inputs, targets, step_tensors(step_fn)), strict=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.stem}.{os.getpid()}.partial.pt2")
    try:
        # A new dict: aoti_compile_and_package writes its own keys into the one it is given.
        torch._inductor.aoti_compile_and_package(exported, package_path=str(partial),
                                                 inductor_configs={**PACKAGE_OPTIONS, **(extra_options or {})})
        partial.replace(path)  # another worker building the same shape meanwhile: either whole package wins
    finally:
        partial.unlink(missing_ok=True)


def step_tensors(step_fn: Any) -> list:
    """The step's tensors as the package takes them. Parameters are detached (the same storage),
    so the package's in-place updates are the model's."""
    return [_detached(getattr(step_fn, name)) for name in step_fn.TENSORS]


def _detached(value: Any) -> Any:
    return [t.detach() for t in value] if isinstance(value, list) else value.detach()


class _StepModule(torch.nn.Module):
    """The step as torch.export takes it: a module whose forward gets the step's tensors as inputs."""

    def __init__(self, step_fn: Any):
        super().__init__()
        self.step_fn = copy.copy(step_fn)  # its tensors are rebound to export's inputs; the job's step keeps its own

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor, tensors: list) -> torch.Tensor:
        for name, value in zip(self.step_fn.TENSORS, tensors):
            setattr(self.step_fn, name, value)
        return self.step_fn(inputs, targets)

"""The tutorial's training loop, read top to bottom, minus its per-image and per-op overhead.

Same recipe as the tutorial (Net, CrossEntropyLoss, SGD with momentum, batch 4), but:
- the whole data set sits in one uint8 tensor on the device; a few thousand batches at a time are
  gathered and normalised in one go (channel-major, as the step wants them), so no DataLoader,
  PIL or per-image transform runs in the hot loop;
- the step is worker/recipes/tutorial_step.py: forward, backward and SGD written out as ~45 plain
  tensor ops, no autograd graph (same gradients up to float rounding, tested);
- on the CPU at small batches it runs on one thread (worker/train.py sets that): the ops are far
  too small to split, and waking a second thread costs more than it saves;
- on CUDA the full-batch step is captured once in a CUDA graph and replayed, so batch 4 is not
  bound by kernel launches; the last, short batch of an epoch runs eagerly;
- on the CPU, for jobs long enough to repay it, the full-batch step is compiled ahead of time by
  AOTInductor (inductor fuses the ~45 small ops into a few C++ loops: 1.4-1.7x per step;
  worker/aot_step.py); short jobs, hosts without a C++ compiler and failed compiles run the
  same step eagerly, and a job that starts before the worker's warm-up has measured the step
  (a fresh host's first job) takes the compiled step once it has (WarmUpWatch);
- the loss is summed on the device and read only when a log line is due.

worker/train.py picks this loop or the fast recipe's (worker/recipes/fast.py) by config.recipe.
"""
from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Optional

import torch

from shared.errors import first_line
from shared.jobspec import TrainConfig
from worker.data import Split, load_split
from worker.loop import Resume, TrainHooks, check_finite, end_epoch, epoch_generator, report_step
from worker.model import Net, normalize
from worker.recipes.tutorial_step import TutorialStep
from worker.aot_step import load_or_build
from worker.compile_cache import (MARGIN, can_compile, compile_lock, compile_pays, compiler, package_path,
                                  seconds_saved, shape_key, warm_figures)

CHUNK_STEPS = 2500  # batches gathered and normalised at once: 10,000 images at batch 4, 123 MB of float
# A CPU job compiles its step (CIFARQ_CPU_COMPILE=auto) where the worker's warm-up measured that
# it pays on this host (worker/warm_up.py). Without those figures (a shape the warm-up does not
# compile, a worker without it) only from this many full-batch steps on: a first compile takes 16
# to 50 s on 2 cores and saves 0.14 to 0.6 ms a step, by CPU; at 20,000 steps (the previous
# threshold) the default 2-epoch job took 31 s with its compile and 17 s without, on an AMD EPYC.
COMPILE_MIN_STEPS = 100_000


def train_tutorial(config: TrainConfig, *, data_dir: Path, device: torch.device, hooks: TrainHooks,
                   resume: Optional[Resume] = None, train_set: Optional[Split] = None,
                   cpu_compile: str = "auto") -> Net:
    torch.manual_seed(config.seed)
    train_set = train_set or load_split(data_dir, train=True)
    images = train_set.images.to(device)  # uint8 (N, 3, 32, 32), 150 MB for all of CIFAR-10
    labels = train_set.labels.to(device)
    n, batch_size = len(labels), config.batch_size

    model = Net(config.width, num_classes=len(train_set.classes)).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum)
    start_epoch = 0
    if resume is not None:
        model.load_state_dict(resume.model_state)
        optimizer.load_state_dict(resume.optimizer_state)
        start_epoch = resume.epochs_done
        hooks.log(f"resuming after epoch {start_epoch} from its checkpoint")
    step_fn = TutorialStep(model, optimizer)  # updates model's parameters and optimizer's buffers in place
    # Like the tutorial's DataLoader(shuffle=True, drop_last=False): the last batch may be short.
    steps_per_epoch = math.ceil(n / batch_size)
    # The full-batch step, captured (CUDA) or compiled (CPU); None: every step runs eagerly.
    if device.type == "cuda":
        full_batch_step = capture_step(step_fn, batch_size, device, hooks)
    else:
        full_batch_step = compile_step(step_fn, hooks, mode=cpu_compile, batch_size=batch_size,
                                       steps=(config.epochs - start_epoch) * (n // batch_size))
        if full_batch_step is not None:  # before the first epoch's clock starts: its images/s are training's
            hooks.phase("compiling")
            hooks.compiled(full_batch_step.compile_now(batch_size, device))
    # Eager for want of the warm-up's figures: take its compiled step once they are in, where it pays.
    warm_up = WarmUpWatch.for_job(step_fn, hooks, mode=cpu_compile, batch_size=batch_size) \
        if device.type == "cpu" and full_batch_step is None else None
    hooks.phase("training")
    model.train()
    for epoch in range(start_epoch, config.epochs):
        started = time.perf_counter()
        # The order of epoch e depends on (seed, e) only: a resumed job sees the same batches.
        order = torch.randperm(n, generator=epoch_generator(config.seed, epoch)).to(device)
        loss_sum = torch.zeros((), device=device)  # summed on the device; read at log points only
        logged_sum = 0.0
        for step in range(steps_per_epoch):
            if step % CHUNK_STEPS == 0:
                chunk = order[step * batch_size:(step + CHUNK_STEPS) * batch_size]
                chunk_batches = batches(images[chunk], labels[chunk], batch_size)
                if warm_up is not None and not warm_up.settled:
                    steps_left = (config.epochs - epoch) * (n // batch_size) - step
                    full_batch_step, seconds = warm_up.compiled_step(steps_left, epoch=epoch + 1, step=step)
                    started += seconds  # the load is the compile's time, not the epoch's
            inputs, targets = chunk_batches[step % CHUNK_STEPS]
            if full_batch_step is not None and len(targets) == batch_size:
                loss_sum += full_batch_step(inputs, targets)
            else:
                loss_sum += step_fn(inputs, targets)

            window = None
            if (step + 1) % config.log_every == 0:  # the tutorial prints every 2000 mini-batches
                total = loss_sum.item()
                window, logged_sum = (total - logged_sum) / config.log_every, total
                check_finite(window, epoch=epoch, step=step + 1, lr=config.lr)
            report_step(hooks, epoch=epoch, step=step + 1, steps_per_epoch=steps_per_epoch, loss=window)

        check_finite(loss_sum.item(), epoch=epoch, step=steps_per_epoch, lr=config.lr)
        end_epoch(hooks, config, epoch=epoch + 1, steps_per_epoch=steps_per_epoch,
                  loss=loss_sum.item() / steps_per_epoch, seconds=time.perf_counter() - started, images=n,
                  lr=config.lr, model=model, optimizer_state=optimizer.state_dict())
    hooks.log("Finished Training")
    return model


def batches(images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """uint8 images (k, 3, 32, 32) and their labels as mini-batches in order: (inputs, targets),
    inputs normalised and channel-major (3, b, 32, 32), as the step takes them; the last may be
    short. Each batch is contiguous on its own, so the compiled step takes it without a copy
    (slices of one channel-major chunk were copied at every step: ~8 us of a 0.4 ms step)."""
    count = len(labels) // batch_size
    full = count * batch_size
    inputs = normalize(images[:full].view(count, batch_size, 3, 32, 32).transpose(1, 2).contiguous())
    out = list(zip(inputs, labels[:full].view(count, batch_size)))
    if full < len(labels):
        out.append((normalize(images[full:].transpose(0, 1).contiguous()), labels[full:]))
    return out


def capture_step(step_fn, batch_size: int, device: torch.device, hooks: TrainHooks, points: Optional[int] = None):
    """The full-batch step captured in a CUDA graph: one replay launches all its kernels.
    `step_fn` is a TutorialStep, or a PackedStep of `points` points (worker/recipes/packed_step.py).

    Returns f(inputs, targets) -> the graph's static loss tensor (valid until the next replay;
    the caller adds it to its sum right away), or None (the loop then runs eagerly) when capture
    fails. Warm-up steps before the capture change the weights; they are put back afterwards.
    """
    snapshot = [t.detach().clone() for t in [*step_fn.params, *step_fn.buffers]]
    try:
        lead = () if points is None else (points,)
        static_x = torch.zeros(*lead, 3, batch_size, 32, 32, device=device)
        static_y = torch.zeros(*lead, batch_size, dtype=torch.int64, device=device)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # cuBLAS handles and workspaces are made before capture
            for _ in range(3):
                step_fn(static_x, static_y)
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_loss = step_fn(static_x, static_y)
        with torch.no_grad():
            for t, saved in zip([*step_fn.params, *step_fn.buffers], snapshot):
                t.copy_(saved)
    except Exception as exc:  # a driver or op without graph support: correct, only slower
        hooks.log(f"CUDA graph capture failed ({type(exc).__name__}: {exc}); running the step eagerly")
        with torch.no_grad():
            for t, saved in zip([*step_fn.params, *step_fn.buffers], snapshot):
                t.copy_(saved)
        return None

    def replay(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        static_x.copy_(inputs)
        static_y.copy_(targets)
        graph.replay()
        return static_loss

    return replay


class CompiledStep:
    """The step compiled ahead of time by AOTInductor (worker/aot_step.py), at its first call: the
    package of its shape loaded where this host built one before (the worker's warm-up builds the
    default one), built first otherwise. If that fails (no C++ compiler after all, an op inductor
    cannot lower), the step runs eagerly from then on."""

    def __init__(self, step_fn, hooks: TrainHooks, *, wait_for_warm_up: bool = True, build_missing: bool = True):
        """`step_fn`: a TutorialStep or a PackedStep; `wait_for_warm_up`: compile_now waits while
        the worker's warm-up compiles (worker/warm_up.py), then loads the step it built;
        `build_missing`: where the package is not there, build it (else run eagerly)."""
        import torch._inductor.config as inductor_config

        # Compile in this process rather than in a pool of compiler processes: a job runs in a
        # daemonic Celery pool process, and on a 2-core worker they would compete with it.
        inductor_config.compile_threads = 1
        self.eager, self.hooks = step_fn, hooks
        self.compiled = None
        self.state = "new"
        self.wait_for_warm_up, self.build_missing = wait_for_warm_up, build_missing

    def __call__(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # Contiguous: the package is built for one layout, and a packed recipe's batches are
        # slices of a chunk, whose strides depend on the chunk's size (a no-op where contiguous).
        inputs, targets = inputs.contiguous(), targets.contiguous()
        if self.state == "ready":
            return self.compiled(inputs, targets)
        if self.state == "failed":
            return self.eager(inputs, targets)
        started = time.perf_counter()
        try:  # nothing is updated before the step is compiled
            self.compiled, built = load_or_build(self.eager, inputs, targets, build_missing=self.build_missing)
        except Exception as exc:  # noqa: BLE001 - correct either way, only slower
            self.state = "failed"
            self.hooks.log(f"compiling the step failed ({type(exc).__name__}: {first_line(exc, 200)}); "
                           f"running it eagerly")
            return self.eager(inputs, targets)
        self.state = "ready"
        seconds = time.perf_counter() - started
        self.hooks.log(f"step compiled in {seconds:.1f} s" if built else
                       f"step compiled ahead of time, loaded in {seconds:.1f} s")
        return self.compiled(inputs, targets)

    def compile_now(self, batch_size: int, device: torch.device, points: Optional[int] = None) -> float:
        """Compile on a batch of zeros, then put the weights and momentum back as they were: the
        first real step runs compiled, and the compile is timed apart from the epochs. Seconds.
        `points`: the step is a PackedStep of that many points (worker/recipes/packed_step.py)."""
        started = time.perf_counter()
        saved = [t.detach().clone() for t in [*self.eager.params, *self.eager.buffers]]
        lead = () if points is None else (points,)
        try:
            with compile_lock(exclusive=False) if self.wait_for_warm_up else contextlib.nullcontext():
                self(torch.zeros(*lead, 3, batch_size, 32, 32, device=device),
                     torch.zeros(*lead, batch_size, dtype=torch.int64, device=device))
        finally:
            with torch.no_grad():
                for t, before in zip([*self.eager.params, *self.eager.buffers], saved):
                    t.copy_(before)
        return time.perf_counter() - started


class WarmUpWatch:
    """A CPU job that started eagerly for want of the warm-up's figures for its shape: the first job
    on a fresh host, while its worker's warm-up still builds the step on the other core (20 to 60 s
    on 2 cores). Once the figures are in, the job loads the warm-up's package for the steps it has
    left, where they repay the load. Checked once per chunk of batches: one small file read."""

    def __init__(self, step_fn, hooks: TrainHooks, key: str, batch_size: int):
        self.step_fn, self.hooks, self.key, self.batch_size = step_fn, hooks, key, batch_size
        self.settled = False  # the figures are in, and the job has its answer

    @classmethod
    def for_job(cls, step_fn, hooks: TrainHooks, *, mode: str, batch_size: int) -> Optional["WarmUpWatch"]:
        """A watch where the job runs eagerly only because there are no figures yet (mode auto)."""
        key = shape_key(step_fn, batch_size)
        return cls(step_fn, hooks, key, batch_size) if mode == "auto" and warm_figures(key) is None else None

    def compiled_step(self, steps_left: int, *, epoch: int, step: int) -> tuple[Optional[CompiledStep], float]:
        """The compiled step, loaded now, where the figures are in and say it pays for `steps_left`
        steps (else None), and the seconds the load took."""
        figures = warm_figures(self.key)
        if figures is None:
            return None, 0.0
        self.settled = True
        if not compile_pays(figures, steps_left) or not package_path(self.key).exists():
            return None, 0.0
        # Load only: a package gone meanwhile (a cleared cache) is not built in the middle of a job.
        compiled = CompiledStep(self.step_fn, self.hooks, build_missing=False)
        seconds = compiled.compile_now(self.batch_size, torch.device("cpu"))
        if compiled.state != "ready":  # it said why; the job goes on eagerly
            return None, seconds
        self.hooks.compiled(seconds)
        self.hooks.log(f"the worker's warm-up has compiled the step: it runs compiled from epoch {epoch}, "
                       f"step {step + 1} on")
        return compiled, seconds


def compile_step(step_fn, hooks: TrainHooks, *, mode: str, batch_size: int, steps: int,
                 cold_min_steps: int = COMPILE_MIN_STEPS) -> Optional[CompiledStep]:
    """The compiled CPU step, or None (eager) where compiling would not pay or cannot work.
    `cold_min_steps`: from how many steps on a shape the warm-up has not measured compiles."""
    if mode == "never":
        return None
    key = shape_key(step_fn, batch_size)
    figures = warm_figures(key)  # the worker's warm-up measured this shape on this host
    pays = steps >= cold_min_steps if figures is None else compile_pays(figures, steps)
    if mode == "auto" and not pays:
        if figures is not None:  # say why, where the answer came from a measurement
            hooks.log(f"the step runs eagerly: compiled, its {steps} steps would save "
                      f"{max(seconds_saved(figures, steps), 0):.1f} s, less "
                      f"than {MARGIN:g}x the {figures['cached_compile_seconds']:.1f} s its compile takes "
                      f"(this worker's warm-up figures)")
        return None
    if not can_compile() and not package_path(key).exists():  # a built package loads without one
        hooks.log(f"no C++ compiler ({compiler()}) to compile the step on this worker; it runs eagerly")
        return None
    return CompiledStep(step_fn, hooks)

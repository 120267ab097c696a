"""The tutorial's loop for a pack of sweep points, trained as one batched model.

Read beside worker/recipes/tutorial.py: the same data handling, order of batches, log lines,
checkpoints and safe points, per point. What differs:
- every point is made exactly as its standalone job makes it (`torch.manual_seed(seed)`, then
  `Net`, then SGD), and draws its own batches (`epoch_generator(seed, epoch)`): the same initial
  weights and the same batches in the same order as the job run alone;
- one PackedStep (worker/recipes/packed_step.py) trains the points that are still in the pack;
- a point leaves the pack alone, at a step boundary, when it is cancelled, diverges, or loses its
  job (its hooks raise): `on_leave(point, exception)` is told, and the others go on, with the
  stacked weights rebuilt from the points that remain;
- a point resumed from a later checkpoint than the others joins the pack when it reaches the
  epoch it stopped after, so each point trains its own epochs, in order, once.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from shared.jobspec import TrainConfig, pack_shape
from worker.data import Split, load_split
from worker.loop import Resume, TrainHooks, check_finite, end_epoch, epoch_generator, report_step
from worker.model import Net, normalize
from worker.recipes.packed_step import PackedStep
from worker.recipes.tutorial import CHUNK_STEPS, capture_step, compile_step

# Images gathered and normalised at once, over all the points of the pack: 10,000 as a lone job.
CHUNK_IMAGES = CHUNK_STEPS * 4
# Steps between the points' progress and safe points (and at every log line and epoch end): each
# costs a few microseconds a point, which a 64-point pack on a GPU would pay at every step.
REPORT_EVERY = 10
# A pack's step compiles from this many steps on, as every CPU step did before the warm-up (no
# warm-up measures packed shapes). For packs it pays: 8 points take 5.6 ms a step compiled against
# 14.7 ms eagerly (bench/packed_step.py), ~14 s of compile repaid within ~1,500 steps.
PACKED_COMPILE_MIN_STEPS = 20_000


@dataclass(eq=False)
class PackPoint:
    """One point of a pack: its job's config, hooks and checkpoint to resume from."""

    config: TrainConfig
    hooks: TrainHooks
    resume: Optional[Resume] = None
    model: Net = field(init=False)
    optimizer: torch.optim.SGD = field(init=False)
    start_epoch: int = field(init=False, default=0)


def train_packed(points: list[PackPoint], *, data_dir: Path, device: torch.device,
                 on_leave: Callable[[PackPoint, BaseException], None],
                 train_set: Optional[Split] = None, cpu_compile: str = "auto") -> list[PackPoint]:
    """Train every point; returns those that finished training (their `model` holds the weights).
    `cpu_compile` (auto|always|never) is CIFARQ_CPU_COMPILE, the worker's choice."""
    if len({pack_shape(p.config) for p in points}) != 1 or pack_shape(points[0].config) is None:
        raise ValueError("a pack's points are tutorial jobs of one width, batch size, epochs and device")
    train_set = train_set or load_split(data_dir, train=True)
    images, labels = train_set.images.to(device), train_set.labels.to(device)
    first = points[0].config
    n, batch_size, epochs = len(labels), first.batch_size, first.epochs
    steps_per_epoch = math.ceil(n / batch_size)  # the last batch may be short, as in the tutorial
    for point in points:
        _make(point, num_classes=len(train_set.classes), device=device)

    alive = list(points)
    log_everys = {p.config.log_every for p in points}
    step_fn, full_batch_step, built_for = None, None, []
    for epoch in range(min(p.start_epoch for p in points), epochs):
        members = [p for p in alive if p.start_epoch <= epoch]
        if not members:  # every point left (cancelled, handed back, failed)
            break
        if members != built_for:  # the first epoch, or a point left or joined: a new step
            step_fn, full_batch_step = _pack_step(members, batch_size, device, cpu_compile=cpu_compile,
                                                  steps=(epochs - epoch) * (n // batch_size))
            built_for = members
        started = time.perf_counter()
        # (P, n): each point's own order for this epoch, as its standalone job draws it.
        orders = torch.stack([torch.randperm(n, generator=epoch_generator(p.config.seed, epoch))
                              for p in members]).to(device)
        loss_sum = torch.zeros(len(members), device=device)
        logged_sum = torch.zeros(len(members), dtype=torch.float64)
        chunk_steps = max(1, CHUNK_IMAGES // (batch_size * len(members)))
        for step in range(steps_per_epoch):
            if step % chunk_steps == 0:  # (P, 3, k, 32, 32): channel-major per point
                chunk = orders[:, step * batch_size:(step + chunk_steps) * batch_size]
                inputs_chunk = normalize(images[chunk].transpose(1, 2).contiguous())
                targets_chunk = labels[chunk]
            offset = (step % chunk_steps) * batch_size
            inputs = inputs_chunk[:, :, offset:offset + batch_size]
            targets = targets_chunk[:, offset:offset + batch_size]
            if full_batch_step is not None and targets.shape[1] == batch_size:
                loss_sum += full_batch_step(inputs, targets)
            else:
                loss_sum += step_fn(inputs, targets)

            done = step + 1
            if done % REPORT_EVERY and done != steps_per_epoch and not any(done % k == 0 for k in log_everys):
                continue
            leaving = _report_step(members, loss_sum, logged_sum, epoch=epoch, step=done,
                                   steps_per_epoch=steps_per_epoch)
            if leaving:
                step_fn.write_back()
                keep = [i for i, p in enumerate(members) if p not in leaving]
                for point, exc in leaving.items():
                    alive.remove(point)
                    on_leave(point, exc)
                members = [members[i] for i in keep]
                if not members:
                    break
                rebuilding = time.perf_counter()  # not training: left out of the epoch's seconds
                step_fn, full_batch_step = _pack_step(members, batch_size, device, cpu_compile=cpu_compile,
                                                      steps=(epochs - epoch) * (n // batch_size) - step)
                built_for = members
                started += time.perf_counter() - rebuilding
                orders, loss_sum, logged_sum = orders[keep], loss_sum[keep], logged_sum[keep]
                inputs_chunk, targets_chunk = inputs_chunk[keep], targets_chunk[keep]
        if not members:
            break
        step_fn.write_back()
        seconds = time.perf_counter() - started
        losses = (loss_sum / steps_per_epoch).tolist()
        for point, loss in zip(members, losses):
            try:
                check_finite(loss, epoch=epoch, step=steps_per_epoch, lr=point.config.lr)
                end_epoch(point.hooks, point.config, epoch=epoch + 1, steps_per_epoch=steps_per_epoch, loss=loss,
                          seconds=seconds, images=n, lr=point.config.lr, model=point.model,
                          optimizer_state=point.optimizer.state_dict())
            except Exception as exc:  # noqa: BLE001 - this point's end; the others go on
                alive.remove(point)
                on_leave(point, exc)
    for point in alive:
        point.hooks.log("Finished Training")
    return alive


def _pack_step(members: list[PackPoint], batch_size: int, device: torch.device, *, cpu_compile: str, steps: int):
    """The step of these points, and its full-batch step: on CUDA captured in a CUDA graph, on
    the CPU compiled as a lone job's is (worker/recipes/tutorial.py: compile_step, for `steps`
    full batches to come). Made again whenever a point leaves: a CUDA graph in milliseconds, a
    compile of a new pack size in seconds (a size built before is loaded from its package)."""
    step_fn = PackedStep([(p.model, p.optimizer) for p in members])
    hooks = members[0].hooks  # a failed capture or compile is said once, in the first point's log
    if device.type == "cuda":
        return step_fn, capture_step(step_fn, batch_size, device, hooks, points=len(members))
    compiled = compile_step(step_fn, hooks, mode=cpu_compile, batch_size=batch_size, steps=steps,
                            cold_min_steps=PACKED_COMPILE_MIN_STEPS)
    if compiled is not None:
        for point in members:
            point.hooks.phase("compiling")
        seconds = compiled.compile_now(batch_size, device, points=len(members))
        for point in members:
            point.hooks.compiled(seconds)
    for point in members:
        point.hooks.phase("training")
    return step_fn, compiled


def _make(point: PackPoint, *, num_classes: int, device: torch.device) -> None:
    """The point's Net and SGD, as train_tutorial makes them (same seed: same initial weights)."""
    config = point.config
    torch.manual_seed(config.seed)
    point.model = Net(config.width, num_classes=num_classes).to(device)
    point.optimizer = torch.optim.SGD(point.model.parameters(), lr=config.lr, momentum=config.momentum)
    if point.resume is not None:
        point.model.load_state_dict(point.resume.model_state)
        point.optimizer.load_state_dict(point.resume.optimizer_state)
        point.start_epoch = point.resume.epochs_done
        point.hooks.log(f"resuming after epoch {point.start_epoch} from its checkpoint")
    point.model.train()


def _report_step(members: list[PackPoint], loss_sum: torch.Tensor, logged_sum: torch.Tensor, *, epoch: int,
                 step: int, steps_per_epoch: int) -> dict[PackPoint, BaseException]:
    """report_step (worker/loop.py) for each point: its log line when due, progress, then the safe
    point. Returns the points that leave the pack here, with why."""
    leaving: dict[PackPoint, BaseException] = {}
    totals = None
    for i, point in enumerate(members):
        try:
            window = None
            if step % point.config.log_every == 0:  # the tutorial prints every 2000 mini-batches
                if totals is None:  # one read of the device for all the points due now
                    totals = loss_sum.double().cpu()
                window = float(totals[i] - logged_sum[i]) / point.config.log_every
                logged_sum[i] = totals[i]
                check_finite(window, epoch=epoch, step=step, lr=point.config.lr)
            report_step(point.hooks, epoch=epoch, step=step, steps_per_epoch=steps_per_epoch, loss=window)
        except Exception as exc:  # noqa: BLE001 - StopRequested, Diverged, a lost lease: this point's
            leaving[point] = exc
    return leaving

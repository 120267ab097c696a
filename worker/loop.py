"""What every training loop shares, whatever its recipe: how it reports to the job (TrainHooks),
what a checkpoint gives back to resume (Resume), the safe point where a cancel or a stop takes
effect (report_step), the randomness of an epoch (epoch_generator), and the end of an epoch
(end_epoch: metrics and checkpoint written together).

Layer: above the networks (worker/model.py), below the recipes (worker/recipes/); it imports
nothing else from worker/.
"""
from __future__ import annotations

import io
import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Optional, Protocol

import torch
import torch.nn as nn

from shared.errors import CifarqError
from shared.jobspec import TrainConfig


# What a running job is doing, in order. `cifarq wait` shows it: a job that compiles its step or
# evaluates with test-time augmentation is busy for minutes at a time without a step to count.
PHASES = ("loading data", "compiling", "training", "evaluating")


class StopRequested(Exception):
    """Raised at a safe point when the job was cancelled (or the worker is shutting down)."""


class Diverged(CifarqError):
    """The loss is NaN or infinite: nothing the job trains from here on means anything."""


def check_finite(loss: float, *, epoch: int, step: int, lr: float) -> None:
    """Fail the job at the first logged loss that is NaN or infinite (epoch from 0, step from 1),
    rather than train on and record a 10% model as a success."""
    if not math.isfinite(loss):
        raise Diverged(f"diverged: the loss is {loss} in epoch {epoch + 1} at step {step} (lr {lr:g}); "
                       f"try a smaller --lr")


class TrainHooks(Protocol):
    """What the loop reports to (the job's record), kept apart so the loop runs without Celery."""

    def progress(self, *, epoch: int, step: int, steps_per_epoch: int, loss: Optional[float] = None) -> None: ...
    def phase(self, name: str) -> None: ...  # PHASES: what the job is doing, for the progress display
    def compiled(self, seconds: float) -> None: ...  # compile / warm-up time, kept out of the epochs' own
    def log(self, line: str) -> None: ...
    def should_stop(self) -> bool: ...
    def epoch_done(self, *, epoch: int, loss: float, seconds: float, images_per_second: float, lr: float,
                   weights: bytes, train_state: bytes) -> None: ...


@dataclass
class Resume:
    """What a checkpoint restores: the weights, the optimizer, and how many epochs are done."""

    model_state: dict
    optimizer_state: dict
    epochs_done: int


def epoch_generator(seed: int, epoch: int, stream: int = 0) -> torch.Generator:
    """The random source of epoch `epoch` (from 0): it depends on (seed, epoch) only, so a job
    resumed after epoch k draws the same batches as one that never stopped. `stream` keeps two
    independent draws of one epoch apart (the fast recipe's order and its augmentation)."""
    return torch.Generator().manual_seed(seed * 100_003 + epoch + stream)


def report_step(hooks: TrainHooks, *, epoch: int, step: int, steps_per_epoch: int, loss: Optional[float]) -> None:
    """After mini-batch `step` (from 1) of epoch `epoch` (from 0): the tutorial's log line when a
    loss was read, progress always, then the safe point where a cancel or a stop takes effect."""
    if loss is not None:
        hooks.log(f"[{epoch + 1}, {step:5d}] loss: {loss:.3f}")
    hooks.progress(epoch=epoch, step=step, steps_per_epoch=steps_per_epoch, loss=loss)
    if hooks.should_stop():
        raise StopRequested(f"stopped in epoch {epoch + 1} at step {step}")


def end_epoch(hooks: TrainHooks, config: TrainConfig, *, epoch: int, steps_per_epoch: int, loss: float,
              seconds: float, images: int, lr: float, model: nn.Module, optimizer_state: dict) -> None:
    """After epoch `epoch` (from 1): progress, the epoch's log line, then the safe point: its
    metrics and its checkpoint (the weights as the tutorial saves them, and what a resume needs)
    are written together. `lr` is the rate the epoch ended with, in the user's units."""
    hooks.progress(epoch=epoch, step=steps_per_epoch, steps_per_epoch=steps_per_epoch, loss=loss)
    hooks.log(f"epoch {epoch}/{config.epochs}: loss {loss:.3f}, {seconds:.1f} s, {images / seconds:.0f} images/s")
    train_state = {"optimizer": optimizer_state, "epochs_done": epoch, "config": config.model_dump()}
    hooks.epoch_done(epoch=epoch, loss=loss, seconds=seconds, images_per_second=images / seconds, lr=lr,
                     weights=to_bytes(model.state_dict()), train_state=to_bytes(train_state))


def to_bytes(obj: dict) -> bytes:
    """torch.save's bytes of `obj` with every tensor on the CPU: a checkpoint written on a GPU
    loads with a plain torch.load anywhere (the exported .pt file too)."""
    buffer = io.BytesIO()
    torch.save(on_cpu(obj), buffer)
    return buffer.getvalue()


def on_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {key: on_cpu(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(on_cpu(value) for value in obj)
    return obj


@contextmanager
def cpu_threads(count: Optional[int]):
    """torch's intra-op threads set to `count` for the block (None: unchanged)."""
    before = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)

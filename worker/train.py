"""The tutorial's training loop, read top to bottom, minus its per-image overhead.

Same recipe as the tutorial (Net, CrossEntropyLoss, SGD with momentum, batch 4), but the whole
data set sits in one uint8 tensor on the device and a batch is an index slice of it, so no
DataLoader, PIL or per-image transform runs in the hot loop. The loss is summed on the device
and read only when a log line is due, so a CUDA step never waits on the host.
"""
from __future__ import annotations

import io
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Protocol

import torch
import torch.nn as nn

from shared.jobspec import TrainConfig
from worker.data import Split, load_split
from worker.model import Net, normalize


class StopRequested(Exception):
    """Raised at a safe point when the job was cancelled (or the worker is shutting down)."""


class TrainHooks(Protocol):
    """What the loop reports to (the job's record), kept apart so the loop runs without Celery."""

    def progress(self, *, epoch: int, step: int, steps_per_epoch: int, loss: Optional[float] = None) -> None: ...
    def log(self, line: str) -> None: ...
    def should_stop(self) -> bool: ...
    def epoch_done(self, *, epoch: int, loss: float, seconds: float, images_per_second: float,
                   weights: bytes, train_state: bytes) -> None: ...


@dataclass
class Resume:
    """What a checkpoint restores: the weights, the optimizer, and how many epochs are done."""

    model_state: dict
    optimizer_state: dict
    epochs_done: int


def train(config: TrainConfig, *, data_dir: Path, device: torch.device, hooks: TrainHooks,
          resume: Optional[Resume] = None, train_set: Optional[Split] = None) -> Net:
    torch.manual_seed(config.seed)
    train_set = train_set or load_split(data_dir, train=True)
    images = train_set.images.to(device)  # uint8 (N, 3, 32, 32), 150 MB for all of CIFAR-10
    labels = train_set.labels.to(device)
    n = len(labels)

    model = Net(config.width, num_classes=len(train_set.classes)).to(device)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum)
    start_epoch = 0
    if resume is not None:
        model.load_state_dict(resume.model_state)
        optimizer.load_state_dict(resume.optimizer_state)
        start_epoch = resume.epochs_done
        hooks.log(f"resuming after epoch {start_epoch} from its checkpoint")

    # Like the tutorial's DataLoader(shuffle=True, drop_last=False): the last batch may be short.
    steps_per_epoch = math.ceil(n / config.batch_size)
    for epoch in range(start_epoch, config.epochs):
        model.train()
        started = time.perf_counter()
        # The order of epoch e depends on (seed, e) only: a resumed job sees the same batches.
        generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
        order = torch.randperm(n, generator=generator).to(device)
        loss_sum = torch.zeros((), device=device)  # summed on the device; read at log points only
        logged_sum = 0.0
        for step in range(steps_per_epoch):
            batch = order[step * config.batch_size:(step + 1) * config.batch_size]
            inputs, targets = normalize(images[batch]), labels[batch]

            optimizer.zero_grad(set_to_none=True)
            loss = criterion(model(inputs), targets)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach()

            if (step + 1) % config.log_every == 0:  # the tutorial prints every 2000 mini-batches
                total = loss_sum.item()
                window = (total - logged_sum) / config.log_every
                logged_sum = total
                hooks.log(f"[{epoch + 1}, {step + 1:5d}] loss: {window:.3f}")
                hooks.progress(epoch=epoch, step=step + 1, steps_per_epoch=steps_per_epoch, loss=window)
            else:
                hooks.progress(epoch=epoch, step=step + 1, steps_per_epoch=steps_per_epoch)
            if hooks.should_stop():
                raise StopRequested(f"stopped in epoch {epoch + 1} at step {step + 1}")

        seconds = time.perf_counter() - started
        epoch_loss = loss_sum.item() / steps_per_epoch
        hooks.progress(epoch=epoch + 1, step=steps_per_epoch, steps_per_epoch=steps_per_epoch, loss=epoch_loss)
        hooks.log(f"epoch {epoch + 1}/{config.epochs}: loss {epoch_loss:.3f}, "
                  f"{seconds:.1f} s, {n / seconds:.0f} images/s")
        # The epoch boundary is the safe point: metrics and checkpoint are written together.
        hooks.epoch_done(epoch=epoch + 1, loss=epoch_loss, seconds=seconds, images_per_second=n / seconds,
                         weights=to_bytes(model.state_dict()),
                         train_state=to_bytes({"optimizer": optimizer.state_dict(), "epochs_done": epoch + 1,
                                               "config": config.model_dump()}))
    hooks.log("Finished Training")
    return model


def to_bytes(obj: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()

"""`--recipe fast`: an airbench94-style recipe (methods of KellerJordan/cifar10-airbench's
legacy/airbench94.py, our own code): 94% in ~10 epochs on a GPU, by its author's account.

What makes it fast and good, section by section:
- Data: the set stays on the device as uint8; each epoch is augmented there in one go
  (random crop with 2-pixel reflect padding, horizontal flip), no loader.
- Network (FastNet, in worker/model.py): a 2x2 conv whose weights whiten the input patches
  (computed from the training data, frozen; its bias trains for the first 3 epochs), then three
  conv blocks (conv-pool-BN-GELU-conv-BN-GELU) of widths w, 4w, 4w, a max-pool and a linear head
  scaled by 1/9.
- Training: Nesterov SGD with the learning rate and weight decay per 1024 examples, BN biases at
  64x the rate, a triangular schedule, label smoothing 0.2, and lookahead (an EMA of the weights,
  blended back every 5 steps, copied in at the end). bfloat16 autocast and channels_last on CUDA.
- Evaluation: test-time augmentation (mirror, and 1-pixel shifts), done by `FastNet.predict`,
  which worker/evaluate.py calls.

Every hyperparameter is in shared/recipes.py (RECIPE_DEFAULTS["fast"] for those with a flag,
FAST_HYP for the fixed ones). It runs on the CPU too (float32, slowly), so that CI trains it end
to end on a small data set.
Its GPU figures, beside airbench94's own on the same GPU and data, are in docs/benchmarks.md.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from shared.jobspec import TrainConfig
from shared.recipes import FAST_HYP
from worker.data import Split, load_split
from worker.loop import Resume, TrainHooks, end_epoch, epoch_generator, report_step
from worker.model import FastNet, autocast


# ----------------------------------------------------------------------------- data
def augmented_epoch(images: torch.Tensor, seed: int, epoch: int) -> torch.Tensor:
    """The epoch's inputs: random 32x32 crops of the 2-pixel reflect-padded images, half of them
    mirrored. Depends on (seed, epoch) only, so a resumed job sees the same batches. On the device."""
    generator = epoch_generator(seed, epoch, stream=7)
    n = len(images)
    shifts = torch.randint(0, 5, (2, n), generator=generator).to(images.device)
    flips = (torch.rand(n, generator=generator) < 0.5).to(images.device)
    padded = F.pad(images, (2, 2, 2, 2), mode="reflect")  # (n, 3, 36, 36)
    out = torch.empty_like(images)
    for dy in range(5):  # 25 crop offsets, each a masked copy: no per-image Python
        for dx in range(5):
            mask = (shifts[0] == dy) & (shifts[1] == dx)
            out[mask] = padded[mask, :, dy:dy + 32, dx:dx + 32]
    return torch.where(flips.view(n, 1, 1, 1), out.flip(-1), out)


# ----------------------------------------------------------------------------- training
def train_fast(config: TrainConfig, *, data_dir: Path, device: torch.device, hooks: TrainHooks,
               resume: Optional[Resume] = None, train_set: Optional[Split] = None) -> FastNet:
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    train_set = train_set or load_split(data_dir, train=True)
    images, labels = train_set.images.to(device), train_set.labels.to(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    n = len(labels)
    data_seconds = time.perf_counter() - started
    hooks.log(f"data: {n} images on {device.type} in {data_seconds:.1f} s")

    model = FastNet(config.width, len(train_set.classes), config.tta_level).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    model.init_whitening(images)
    batch_size = min(config.batch_size, n)
    steps_per_epoch = n // batch_size  # the last partial batch is dropped: every step has one shape
    total_steps = config.epochs * steps_per_epoch

    optimizer = make_optimizer(model, config, batch_size)
    lookahead = [p.detach().clone() for p in model.state_dict().values()]
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing, reduction="sum")

    start_epoch = 0
    if resume is not None:
        model.load_state_dict(resume.model_state)
        optimizer.load_state_dict(resume.optimizer_state["sgd"])
        lookahead = [t.to(device) for t in resume.optimizer_state["lookahead"]]
        start_epoch = resume.epochs_done
        hooks.log(f"resuming after epoch {start_epoch} from its checkpoint")

    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # one shape all along: the fastest kernels are picked once
    compile_seconds = 0.0
    train_seconds = 0.0
    hooks.phase("training")
    for epoch in range(start_epoch, config.epochs):
        epoch_started = time.perf_counter()
        warm_up = 0.0  # the first step's kernel selection: kept out of this epoch's images/s
        timer = DeviceTimer(device)
        model.train()
        model.whiten.bias.requires_grad_(epoch < FAST_HYP["whiten_bias_epochs"])
        order = torch.randperm(n, generator=epoch_generator(config.seed, epoch)).to(device)
        inputs_epoch = augmented_epoch(images, config.seed, epoch)
        loss_sum = torch.zeros((), device=device)
        for step in range(steps_per_epoch):
            step_started = time.perf_counter()
            global_step = epoch * steps_per_epoch + step
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"] * triangle(global_step / total_steps)
            batch = order[step * batch_size:(step + 1) * batch_size]
            x, y = model.normalize(inputs_epoch[batch]), labels[batch]
            with autocast(device):
                loss = criterion(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() / batch_size
            if (global_step + 1) % FAST_HYP["lookahead_every"] == 0:
                # The EMA decays ever more slowly as training ends (airbench: 0.95^5 * progress^3).
                blend_lookahead(model, lookahead, 0.95 ** 5 * ((global_step + 1) / total_steps) ** 3)
            if global_step == 0:  # the first step builds kernels / cuDNN plans: timed apart
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                compile_seconds = warm_up = time.perf_counter() - step_started
                hooks.compiled(compile_seconds)
            # The mean loss of the epoch so far (read from the device only at log points).
            window = loss_sum.item() / (step + 1) if (step + 1) % config.log_every == 0 else None
            report_step(hooks, epoch=epoch, step=step + 1, steps_per_epoch=steps_per_epoch, loss=window)
        if epoch + 1 == config.epochs:
            blend_lookahead(model, lookahead, 1.0)  # the final weights are the lookahead's
        train_seconds += timer.seconds()
        # The rate the epoch ended with, per 1024 examples as --lr gives it (TensorBoard's train/lr).
        lr = config.lr * triangle((epoch + 1) * steps_per_epoch / total_steps)
        end_epoch(hooks, config, epoch=epoch + 1, steps_per_epoch=steps_per_epoch,
                  loss=loss_sum.item() / steps_per_epoch, seconds=time.perf_counter() - epoch_started - warm_up,
                  images=steps_per_epoch * batch_size, lr=lr, model=model,
                  optimizer_state={"sgd": optimizer.state_dict(), "lookahead": lookahead})
    hooks.log(f"timing: data loading {data_seconds:.1f} s; first step (kernel selection, warm-up) "
              f"{compile_seconds:.2f} s; training {train_seconds - compile_seconds:.2f} s "
              f"for {config.epochs - start_epoch} epoch(s)")
    hooks.log("Finished Training")
    return model


def make_optimizer(model: FastNet, config: TrainConfig, batch_size: int) -> torch.optim.SGD:
    """Nesterov SGD with the learning rate and weight decay per 1024 examples, as airbench94
    states them, and the BatchNorm biases at 64x the rate.

    torch's SGD multiplies the decay term by the rate, so each group's weight_decay is divided by
    its rate: every weight then shrinks by `wd` per step (times the schedule), whatever its
    group's rate. (Passing `wd` itself would make the decay ~700x too weak.)"""
    kilostep = 1024 * (1 + 1 / (1 - config.momentum))
    lr, wd = config.lr / kilostep, FAST_HYP["weight_decay"] * batch_size / kilostep
    bias_lr = lr * FAST_HYP["bias_lr_scale"]
    norm_biases = [p for name, p in model.named_parameters() if "norm" in name and p.requires_grad]
    others = [p for name, p in model.named_parameters() if "norm" not in name and p.requires_grad]
    optimizer = torch.optim.SGD([dict(params=norm_biases, lr=bias_lr, weight_decay=wd / bias_lr),
                                 dict(params=others, lr=lr, weight_decay=wd / lr)],
                                momentum=config.momentum, nesterov=True)
    for group in optimizer.param_groups:
        group["initial_lr"] = group["lr"]  # the schedule scales the rate from here
    return optimizer


class DeviceTimer:
    """Seconds of device work since it was made: CUDA events on a GPU (as airbench times itself,
    so nothing waits on the host), the host clock on the CPU."""

    def __init__(self, device: torch.device):
        self.device, self.started = device, time.perf_counter()
        if device.type == "cuda":
            self.start = torch.cuda.Event(enable_timing=True)
            self.start.record()

    def seconds(self) -> float:
        if self.device.type != "cuda":
            return time.perf_counter() - self.started
        end = torch.cuda.Event(enable_timing=True)
        end.record()
        end.synchronize()
        return self.start.elapsed_time(end) / 1000


def triangle(progress: float) -> float:
    """The learning-rate multiplier at `progress` (0..1 of all steps): linear from `start` up to 1
    at `peak_at`, then down to `end` (FAST_HYP["lr_schedule"])."""
    start, peak_at, end = (FAST_HYP["lr_schedule"][k] for k in ("start", "peak_at", "end"))
    if progress < peak_at:
        return start + (1 - start) * progress / peak_at
    return 1 + (end - 1) * (progress - peak_at) / (1 - peak_at)


@torch.no_grad()
def blend_lookahead(model: nn.Module, lookahead: list[torch.Tensor], decay: float) -> None:
    """Lookahead: the slow copy moves toward the weights, and the weights are set back to it.
    Buffers (BN statistics) are blended the same way; integer counters are copied."""
    current = list(model.state_dict().values())
    for slow, fast in zip(lookahead, current):
        if slow.is_floating_point():
            slow.lerp_(fast, 1 - decay)
            fast.copy_(slow)
        else:
            slow.copy_(fast)

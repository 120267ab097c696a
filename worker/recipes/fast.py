"""`--recipe fast`: an airbench94-style recipe (methods of KellerJordan/cifar10-airbench's
legacy/airbench94.py, our own code): 94% in ~10 epochs on a GPU, by its author's account.

What makes it fast and good, section by section:
- Data: the set stays on the device as uint8; each epoch is augmented there in one go
  (random crop with 2-pixel reflect padding, horizontal flip), no loader.
- Network: a 2x2 conv whose weights whiten the input patches (computed from the training
  data, frozen; its bias trains for the first 3 epochs), then three conv blocks
  (conv-pool-BN-GELU-conv-BN-GELU) of widths w, 4w, 4w, a max-pool and a linear head scaled by 1/9.
- Training: Nesterov SGD with the learning rate and weight decay per 1024 examples, BN biases at
  64x the rate, a triangular schedule, label smoothing 0.2, and lookahead (an EMA of the weights,
  blended back every 5 steps, copied in at the end). bfloat16 autocast and channels_last on CUDA.
- Evaluation: test-time augmentation (mirror, and 1-pixel shifts), done by `FastNet.predict`,
  which worker/evaluate.py calls.

It runs on the CPU too (float32, slowly), so that CI trains it end to end on a small data set.
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
from worker.data import Split, load_split

MEAN = (125.31, 122.95, 113.87)  # CIFAR-10 channel means and stds, on the 0..255 scale
STD = (62.99, 62.09, 66.70)
WHITEN_KERNEL = 2
WHITEN_BIAS_EPOCHS = 3  # the whitening conv's bias trains this many epochs, then freezes
BN_MOMENTUM = 0.6  # airbench's, in its (1 - torch's) convention: torch momentum 0.4
BIAS_LR_SCALE = 64.0  # BatchNorm biases learn this much faster (weight decay unchanged)
WEIGHT_DECAY = 0.0153  # per 1024 examples
LOOKAHEAD_EVERY = 5  # steps between lookahead blends
SCALE_OUT = 1 / 9  # the head's output scaling


# ----------------------------------------------------------------------------- network
class ConvGroup(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding="same", bias=False)
        self.norm1 = nn.BatchNorm2d(c_out, momentum=1 - BN_MOMENTUM, eps=1e-12)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding="same", bias=False)
        self.norm2 = nn.BatchNorm2d(c_out, momentum=1 - BN_MOMENTUM, eps=1e-12)
        for norm in (self.norm1, self.norm2):
            norm.weight.requires_grad_(False)  # scale fixed at 1: only the bias learns
        for conv in (self.conv1, self.conv2):  # identity-like start: partial Dirac init
            w = conv.weight.data
            torch.nn.init.dirac_(w[:min(w.shape[0], w.shape[1])])

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, c_in, H, W) -> (B, c_out, H/2, W/2)
        x = F.max_pool2d(self.conv1(x), 2)
        x = F.gelu(self.norm1(x))
        return F.gelu(self.norm2(self.conv2(x)))


class FastNet(nn.Module):
    def __init__(self, width: int = 64, num_classes: int = 10, tta_level: int = 2):
        super().__init__()
        whiten_channels = 2 * 3 * WHITEN_KERNEL ** 2  # each whitening direction, and its negative
        self.whiten = nn.Conv2d(3, whiten_channels, WHITEN_KERNEL, padding=0, bias=True)
        self.whiten.weight.requires_grad_(False)
        nn.init.zeros_(self.whiten.bias)  # the whitening starts unbiased; the bias learns for 3 epochs
        self.block1 = ConvGroup(whiten_channels, width)
        self.block2 = ConvGroup(width, 4 * width)
        self.block3 = ConvGroup(4 * width, 4 * width)
        self.head = nn.Linear(4 * width, num_classes, bias=False)
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1))
        self.tta_level = tta_level  # read by predict(); not a weight

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, 32, 32) -> float, per-channel standardised, in the weights' memory format."""
        x = (images.float() - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if images.is_cuda else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # normalised (B, 3, 32, 32) -> (B, classes)
        x = F.gelu(self.whiten(x))  # (B, 24, 31, 31)
        x = self.block3(self.block2(self.block1(x)))  # (B, 4w, 3, 3)
        x = F.adaptive_max_pool2d(x, 1).flatten(1)
        return self.head(x) * SCALE_OUT

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Logits of uint8 images with test-time augmentation (worker/evaluate.py calls this)."""
        x = self.normalize(images)
        with autocast(x.device):
            if self.tta_level == 0:
                return self(x).float()
            logits = (self(x) + self(x.flip(-1))).float() / 2
            if self.tta_level == 1:
                return logits
            # Shifted by one pixel up-left and down-right (reflect-padded), each mirrored too.
            padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
            shifted = [padded[:, :, :32, :32], padded[:, :, 2:, 2:]]
            shifted_logits = sum((self(s) + self(s.flip(-1))).float() for s in shifted) / 4
            return 0.5 * logits + 0.5 * shifted_logits

    def init_whitening(self, train_images: torch.Tensor, eps: float = 5e-4) -> None:
        """Whitening weights from the 2x2 patches of (up to) 5000 training images: each
        eigenvector of the patch covariance scaled by 1/sqrt(its eigenvalue), plus its negative."""
        x = self.normalize(train_images[:5000]).float()
        patches = x.unfold(2, WHITEN_KERNEL, 1).unfold(3, WHITEN_KERNEL, 1)  # (n, 3, 31, 31, 2, 2)
        patches = patches.transpose(1, 3).reshape(-1, 3 * WHITEN_KERNEL ** 2).double()
        covariance = patches.T @ patches / len(patches)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
        filters = (eigenvectors.T / torch.sqrt(eigenvalues + eps)[:, None]).flip(0)
        filters = filters.view(-1, 3, WHITEN_KERNEL, WHITEN_KERNEL).float()  # (12, 3, 2, 2), (c, h, w) order
        with torch.no_grad():
            self.whiten.weight.copy_(torch.cat([filters, -filters]).to(self.whiten.weight))


def autocast(device: torch.device):
    """bfloat16 autocast on CUDA; nothing on the CPU (float32 there: correct first, CI-sized)."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


# ----------------------------------------------------------------------------- data
def augmented_epoch(images: torch.Tensor, seed: int, epoch: int) -> torch.Tensor:
    """The epoch's inputs: random 32x32 crops of the 2-pixel reflect-padded images, half of them
    mirrored. Depends on (seed, epoch) only, so a resumed job sees the same batches. On the device."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch + 7)
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
def train_fast(config: TrainConfig, *, data_dir: Path, device: torch.device, hooks, resume=None,
               train_set: Optional[Split] = None) -> FastNet:
    from worker.train import report_step, to_bytes

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
    for epoch in range(start_epoch, config.epochs):
        epoch_started = time.perf_counter()
        timer = DeviceTimer(device)
        model.train()
        model.whiten.bias.requires_grad_(epoch < WHITEN_BIAS_EPOCHS)
        generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
        order = torch.randperm(n, generator=generator).to(device)
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
            if (global_step + 1) % LOOKAHEAD_EVERY == 0:
                # The EMA decays ever more slowly as training ends (airbench: 0.95^5 * progress^3).
                blend_lookahead(model, lookahead, 0.95 ** 5 * ((global_step + 1) / total_steps) ** 3)
            if global_step == 0:  # the first step builds kernels / cuDNN plans: timed apart
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                compile_seconds = time.perf_counter() - step_started
            # The mean loss of the epoch so far (read from the device only at log points).
            window = loss_sum.item() / (step + 1) if (step + 1) % config.log_every == 0 else None
            report_step(hooks, epoch=epoch, step=step + 1, steps_per_epoch=steps_per_epoch, loss=window)
        if epoch + 1 == config.epochs:
            blend_lookahead(model, lookahead, 1.0)  # the final weights are the lookahead's
        train_seconds += timer.seconds()
        epoch_loss = loss_sum.item() / steps_per_epoch
        seconds = time.perf_counter() - epoch_started
        images_done = steps_per_epoch * batch_size
        hooks.progress(epoch=epoch + 1, step=steps_per_epoch, steps_per_epoch=steps_per_epoch, loss=epoch_loss)
        hooks.log(f"epoch {epoch + 1}/{config.epochs}: loss {epoch_loss:.3f}, {seconds:.1f} s, "
                  f"{images_done / seconds:.0f} images/s")
        hooks.epoch_done(epoch=epoch + 1, loss=epoch_loss, seconds=seconds, images_per_second=images_done / seconds,
                         weights=to_bytes(model.state_dict()),
                         train_state=to_bytes({"optimizer": {"sgd": optimizer.state_dict(),
                                                             "lookahead": lookahead},
                                               "epochs_done": epoch + 1, "config": config.model_dump()}))
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
    lr, wd = config.lr / kilostep, WEIGHT_DECAY * batch_size / kilostep
    norm_biases = [p for name, p in model.named_parameters() if "norm" in name and p.requires_grad]
    others = [p for name, p in model.named_parameters() if "norm" not in name and p.requires_grad]
    optimizer = torch.optim.SGD([dict(params=norm_biases, lr=lr * BIAS_LR_SCALE, weight_decay=wd / (lr * BIAS_LR_SCALE)),
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


def triangle(progress: float, start: float = 0.2, peak_at: float = 0.23, end: float = 0.07) -> float:
    """The learning-rate multiplier: linear from `start` up to 1 at `peak_at`, then down to `end`."""
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

"""The networks, and nothing that trains them: the tutorial's `Net` (`width` is the tutorial's own
exercise: widen the two convs) and the fast recipe's `FastNet` (airbench94's architecture, our
own code). The bottom layer of worker/: it imports nothing from the rest of it.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from shared.recipes import FAST_HYP, RECIPE_DEFAULTS

CIFAR10_MEAN = (125.31, 122.95, 113.87)  # channel means and stds, on the 0..255 scale
CIFAR10_STD = (62.99, 62.09, 66.70)


class Net(nn.Module):
    def __init__(self, width: int = 6, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(width, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 3, 32, 32) -> (B, classes)
        x = self.pool(F.relu(self.conv1(x)))  # (B, width, 14, 14)
        x = self.pool(F.relu(self.conv2(x)))  # (B, 16, 5, 5)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def model_from_state_dict(state_dict: dict, *, recipe: str = "tutorial", tta_level: Optional[int] = None) -> nn.Module:
    """The network these weights belong to, with them loaded; a fast one evaluates with the test-time
    augmentation of `tta_level` (the job's own; the recipe's default when None).

    Raises ValueError naming what does not fit (a missing key, a shape).
    """
    if recipe == "fast":
        try:
            model = FastNet(int(state_dict["block1.conv1.weight"].shape[0]),
                            num_classes=int(state_dict["head.weight"].shape[0]),
                            tta_level=RECIPE_DEFAULTS["fast"]["tta_level"] if tta_level is None else tta_level)
        except (KeyError, AttributeError, IndexError) as exc:
            raise ValueError(f"not a state dict of the fast recipe's network: missing {exc}") from exc
        return _load(model, state_dict)
    try:
        model = Net(width_of(state_dict), num_classes=int(state_dict["fc3.weight"].shape[0]))
    except (KeyError, AttributeError, IndexError) as exc:
        raise ValueError(f"not a state dict of cifarq's Net: missing {exc}") from exc
    return _load(model, state_dict)


def _load(model: nn.Module, state_dict: dict) -> nn.Module:
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        details = "; ".join(line.strip() for line in str(exc).splitlines()[1:] if line.strip())
        raise ValueError(details or str(exc)) from exc
    return model


def width_of(state_dict: dict) -> int:
    """The width a state dict was trained with, read off conv1's weight (width, 3, 5, 5)."""
    weight = state_dict.get("conv1.weight")
    if weight is None or weight.dim() != 4:
        raise ValueError("not a state dict of cifarq's Net: no conv1.weight of shape (width, 3, 5, 5)")
    return int(weight.shape[0])


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 in [0, 255] -> float in [-1, 1]: the tutorial's ToTensor + Normalize(0.5, 0.5)."""
    return images.float().div_(127.5).sub_(1.0)


# ----------------------------------------------------------------------------- the fast recipe's network
class ConvGroup(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding="same", bias=False)
        self.norm1 = nn.BatchNorm2d(c_out, momentum=1 - FAST_HYP["batchnorm_momentum"], eps=1e-12)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding="same", bias=False)
        self.norm2 = nn.BatchNorm2d(c_out, momentum=1 - FAST_HYP["batchnorm_momentum"], eps=1e-12)
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
    def __init__(self, width: int, num_classes: int = 10, tta_level: int = RECIPE_DEFAULTS["fast"]["tta_level"]):
        super().__init__()
        kernel = FAST_HYP["whiten_kernel"]
        whiten_channels = 2 * 3 * kernel ** 2  # each whitening direction, and its negative
        self.whiten = nn.Conv2d(3, whiten_channels, kernel, padding=0, bias=True)
        self.whiten.weight.requires_grad_(False)
        nn.init.zeros_(self.whiten.bias)  # the whitening starts unbiased; the bias learns for 3 epochs
        self.block1 = ConvGroup(whiten_channels, width)
        self.block2 = ConvGroup(width, 4 * width)
        self.block3 = ConvGroup(4 * width, 4 * width)
        self.head = nn.Linear(4 * width, num_classes, bias=False)
        self.register_buffer("mean", torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(CIFAR10_STD).view(1, 3, 1, 1))
        self.tta_level = tta_level  # read by predict(); not a weight

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, 32, 32) -> float, per-channel standardised, in the weights' memory format."""
        x = (images.float() - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if images.is_cuda else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # normalised (B, 3, 32, 32) -> (B, classes)
        x = F.gelu(self.whiten(x))  # (B, 24, 31, 31)
        x = self.block3(self.block2(self.block1(x)))  # (B, 4w, 3, 3)
        x = F.adaptive_max_pool2d(x, 1).flatten(1)
        return self.head(x) * FAST_HYP["scale_out"]

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
        kernel = FAST_HYP["whiten_kernel"]
        x = self.normalize(train_images[:5000]).float()
        patches = x.unfold(2, kernel, 1).unfold(3, kernel, 1)  # (n, 3, 31, 31, 2, 2)
        patches = patches.transpose(1, 3).reshape(-1, 3 * kernel ** 2).double()
        covariance = patches.T @ patches / len(patches)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
        filters = (eigenvectors.T / torch.sqrt(eigenvalues + eps)[:, None]).flip(0)
        filters = filters.view(-1, 3, kernel, kernel).float()  # (12, 3, 2, 2), (c, h, w) order
        with torch.no_grad():
            self.whiten.weight.copy_(torch.cat([filters, -filters]).to(self.whiten.weight))


def autocast(device: torch.device):
    """bfloat16 autocast on CUDA; nothing on the CPU (float32 there: correct first, CI-sized)."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


"""The tutorial's network. `width` is the tutorial's own exercise: widen the two convs."""
import torch
import torch.nn as nn
import torch.nn.functional as F


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


def model_from_state_dict(state_dict: dict, *, recipe: str = "tutorial") -> nn.Module:
    """The network these weights belong to, with them loaded.

    Raises ValueError naming what does not fit (a missing key, a shape).
    """
    if recipe == "fast":
        from worker.recipes.fast import FastNet

        try:
            model = FastNet(int(state_dict["block1.conv1.weight"].shape[0]),
                            num_classes=int(state_dict["head.weight"].shape[0]))
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

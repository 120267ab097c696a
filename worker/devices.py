"""Which device a job runs on. CUDA is touched only here, and only inside the job's process."""
from __future__ import annotations

import torch

from shared.errors import CifarqError


class DeviceUnavailable(CifarqError):
    """The job asks for a device this worker does not have: another worker may (worker/run.py
    hands the job back rather than failing it)."""


def resolve_device(requested: str) -> torch.device:
    """auto: CUDA when this worker has it, else the CPU. cuda[:N] on a worker without it is an error."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceUnavailable(f"device {requested} asked for, but this worker has no CUDA device")
        if (device.index or 0) >= torch.cuda.device_count():
            raise DeviceUnavailable(f"device {requested} asked for, but this worker sees "
                              f"{torch.cuda.device_count()} CUDA device(s)")
    return device


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"

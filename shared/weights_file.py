"""Checks on a weights file that a client can make without torch, before anything is queued.

A file written by `torch.save(net.state_dict(), PATH)` is a zip archive whose `data.pkl` names
each tensor's shape. That pickle is read here with an unpickler that knows only the few names a
state dict needs and calls none of them: a pickle that would import anything else (and so could
run code) is refused, and the keys and shapes are checked against the tutorial's Net. The worker
still loads the file with `torch.load(weights_only=True)`.
"""
from __future__ import annotations

import io
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path

from shared.errors import CifarqError

MAX_WEIGHTS_BYTES = 256 * 1024 * 1024
CIFAR10_CLASSES = 10
_TENSOR_REBUILDERS = {("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter")}
_STORAGES = {"FloatStorage", "DoubleStorage", "HalfStorage", "BFloat16Storage", "UntypedStorage"}


class Shape(tuple):
    """Stands in for a tensor: only its shape is kept."""


def _rebuild_tensor(storage, offset, size, *args, **kwargs) -> Shape:
    return Shape(size)


def _rebuild_parameter(tensor, *args, **kwargs) -> Shape:
    return tensor


class _ShapesOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if (module, name) in _TENSOR_REBUILDERS:
            return _rebuild_tensor if name == "_rebuild_tensor_v2" else _rebuild_parameter
        if module == "torch" and name in _STORAGES:
            return name
        raise pickle.UnpicklingError(f"it would load {module}.{name}, which a state dict never needs")

    def persistent_load(self, pid):
        return pid  # a storage reference; the bytes themselves are never read here


def expected_shapes(width: int, num_classes: int = 10) -> dict[str, tuple[int, ...]]:
    """The tutorial's Net, with `width` channels in the first conv."""
    return {
        "conv1.weight": (width, 3, 5, 5), "conv1.bias": (width,),
        "conv2.weight": (16, width, 5, 5), "conv2.bias": (16,),
        "fc1.weight": (120, 400), "fc1.bias": (120,),
        "fc2.weight": (84, 120), "fc2.bias": (84,),
        "fc3.weight": (num_classes, 84), "fc3.bias": (num_classes,),
    }


def read_state_dict_shapes(data: bytes, *, name: str) -> dict[str, tuple[int, ...]]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
        if len(pickles) != 1 or archive.testzip() is not None:
            raise zipfile.BadZipFile("no single data.pkl")
        payload = archive.read(pickles[0])
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise CifarqError(f"weights file {name} is truncated or not written by torch.save ({exc})") from None
    try:
        obj = _ShapesOnly(io.BytesIO(payload)).load()
    except pickle.UnpicklingError as exc:
        raise CifarqError(f"weights file {name} is refused: {exc}") from None
    except Exception as exc:  # a damaged pickle can fail in many ways
        raise CifarqError(f"weights file {name} cannot be read: {type(exc).__name__}: {exc}") from None
    if not isinstance(obj, dict) or not all(isinstance(v, Shape) for v in obj.values()):
        raise CifarqError(f"weights file {name} is not a state dict (tensors by name)")
    return {key: tuple(shape) for key, shape in obj.items()}


def check_fits_net(shapes: dict[str, tuple[int, ...]], *, name: str) -> None:
    conv1 = shapes.get("conv1.weight")
    fc3 = shapes.get("fc3.weight")
    width = conv1[0] if conv1 and len(conv1) == 4 else 6
    if fc3 and len(fc3) == 2 and fc3[0] != CIFAR10_CLASSES:  # evaluated on CIFAR-10's test set
        raise CifarqError(f"weights file {name} has {fc3[0]} output classes (fc3.weight is {list(fc3)}); "
                          f"CIFAR-10 has {CIFAR10_CLASSES}")
    expected = expected_shapes(width, CIFAR10_CLASSES)
    missing = [k for k in expected if k not in shapes]
    unexpected = [k for k in shapes if k not in expected]
    wrong = [f"{k} is {list(shapes[k])}, expected {list(v)}" for k, v in expected.items()
             if k in shapes and shapes[k] != v]
    problems = ([f"missing keys {', '.join(missing)}"] if missing else []) + \
               ([f"unexpected keys {', '.join(unexpected[:5])}"] if unexpected else []) + wrong
    if problems:
        raise CifarqError(f"weights file {name} does not fit the tutorial's Net: {'; '.join(problems)}")


def read_weights_file(path: Path) -> bytes:
    """The file's bytes, once it is known to be a state dict of the tutorial's Net."""
    try:
        if not path.is_file():
            raise CifarqError(f"weights file {path} does not exist")
        size = path.stat().st_size
        if size == 0 or size > MAX_WEIGHTS_BYTES:
            raise CifarqError(f"weights file {path} is {size} bytes: not a state dict of the tutorial's Net")
        data = path.read_bytes()
    except OSError as exc:  # a name too long, a file we may not read
        raise CifarqError(f"weights file {path}: {exc.strerror}") from None
    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise CifarqError(f"weights file {path} is not a file written by torch.save (not a zip archive)")
    check_fits_net(read_state_dict_shapes(data, name=str(path)), name=str(path))
    return data

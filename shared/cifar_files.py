"""CIFAR-10's files in the official python layout, read with numpy alone (no torch): the worker
trains on them (worker/data.py) and `cifarq report` shows their test images (api_cli/report).

The batches are pickles, and a pickle can run any code it names. These are read with an
unpickler that admits only what the official files (and faithful copies) contain: dicts, lists,
strings, bytes, numbers, and numpy's own array reconstruction. Anything else (a planted
`__reduce__` calling os.system, say) stops the read with a DataError naming the file.
"""
from __future__ import annotations

import io
import os
import pickle
import shutil
import tarfile
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Union

import numpy as np

from shared.errors import CifarqError

BATCHES_DIR = "cifar-10-batches-py"
ARCHIVE = "cifar-10-python.tar.gz"
TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_FILES = ["test_batch"]
META_FILE = "batches.meta"
ALL_FILES = [*TRAIN_FILES, *TEST_FILES, META_FILE]

# (module, name) pairs a CIFAR-10 pickle may name: how numpy 1.x and 2.x pickle an array, and
# how Python 2 pickles bytes (the official files are Python 2 pickles).
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}


class DataError(CifarqError):
    """The data set is missing or malformed; a job fails with this message."""


class _CifarUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which a CIFAR-10 file never does")
        return super().find_class(module, name)


def unpickle(source: Union[Path, BinaryIO], name: str) -> dict:
    """One CIFAR-10 pickle as a dict with str keys. `name` says which file, for the error."""
    try:
        if isinstance(source, Path):
            with open(source, "rb") as f:
                entry = _CifarUnpickler(f, encoding="latin1").load()
        else:
            # The official files are python-2 pickles of numpy arrays: bytes keys, latin1 payload.
            entry = _CifarUnpickler(source, encoding="latin1").load()
    except Exception as exc:
        raise DataError(f"{name} is not a CIFAR-10 batch file: {type(exc).__name__}: {exc}") from exc
    if not isinstance(entry, dict):
        raise DataError(f"{name} is not a CIFAR-10 batch file: expected a dict, got {type(entry).__name__}")
    return {key.decode() if isinstance(key, bytes) else key: value for key, value in entry.items()}


def read_classes(folder: Path) -> tuple[str, ...]:
    path = folder / META_FILE
    names = unpickle(path, str(path)).get("label_names")
    if not names or not all(isinstance(n, (str, bytes)) for n in names):
        raise DataError(f"{path} has no label_names")
    return tuple(n.decode() if isinstance(n, bytes) else n for n in names)


def read_batch(source: Union[Path, BinaryIO], name: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Images as uint8 (N, 3, 32, 32) and labels as int64 (N,), checked."""
    entry = unpickle(source, name)
    if "data" not in entry or "labels" not in entry:
        raise DataError(f"{name} lacks 'data' or 'labels'")
    data = np.asarray(entry["data"])
    labels = np.asarray(entry["labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{name}: data must be uint8 of shape (N, 3072), got {data.dtype} {data.shape}")
    if len(labels) != len(data):
        raise DataError(f"{name}: {len(data)} images but {len(labels)} labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{name}: labels outside 0..{num_classes - 1}")
    # Rows hold the R, G and B planes one after another: (N, 3072) -> (N, 3, 32, 32).
    return data.reshape(-1, 3, 32, 32), labels


def read_test_batch(data_dir: Path, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """The test batch from the folder, or straight out of the archive beside it (not extracted)."""
    folder, archive = data_dir / BATCHES_DIR, data_dir / ARCHIVE
    if (folder / "test_batch").is_file():
        return read_batch(folder / "test_batch", str(folder / "test_batch"), num_classes)
    if archive.is_file():
        try:
            with tarfile.open(archive) as tar:
                member = tar.extractfile(f"{BATCHES_DIR}/test_batch")
                payload = member.read() if member else None
        except (tarfile.TarError, OSError, EOFError, KeyError) as exc:
            raise DataError(f"cannot read {archive}: {exc}") from exc
        if payload is None:
            raise DataError(f"{archive} holds no regular file {BATCHES_DIR}/test_batch")
        return read_batch(io.BytesIO(payload), f"{archive}:{BATCHES_DIR}/test_batch", num_classes)
    raise DataError(f"no CIFAR-10 test set under {data_dir}")


def extract_archive(archive: Path, data_dir: Path) -> None:
    """Only the regular files directly in cifar-10-batches-py/ are written, each under its own
    name: whatever else the archive holds (links, devices, `..`, absolute paths) is skipped. Done
    by hand rather than with tarfile's extraction filters, which Python 3.11 has only from 3.11.4
    (Debian 12 ships 3.11.2). Each file appears complete or not at all (written aside, renamed)."""
    folder = data_dir / BATCHES_DIR
    try:
        with tarfile.open(archive) as tar:
            for member in tar:
                parts = PurePosixPath(member.name).parts
                if not member.isfile() or len(parts) != 2 or parts[0] != BATCHES_DIR or parts[1] in (".", ".."):
                    continue
                folder.mkdir(parents=True, exist_ok=True)
                partial = folder / f".{parts[1]}.partial"
                with tar.extractfile(member) as source, open(partial, "wb") as out:
                    shutil.copyfileobj(source, out)
                os.replace(partial, folder / parts[1])
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"cannot extract {archive}: {exc}") from exc

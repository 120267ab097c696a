"""CIFAR-10 in the official python layout, read straight into one uint8 tensor (N, 3, 32, 32).

No per-image PIL work: batches are index slices, normalised on the device (DESIGN.md, decision 8).
"""
from __future__ import annotations

import os
import pickle
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from shared.errors import CifarqError

BATCHES_DIR = "cifar-10-batches-py"
ARCHIVE = "cifar-10-python.tar.gz"
TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_FILES = ["test_batch"]


class DataError(CifarqError):
    """The data set is missing or malformed; the job fails with this message."""


@dataclass(frozen=True)
class Split:
    images: torch.Tensor  # uint8 (N, 3, 32, 32)
    labels: torch.Tensor  # int64 (N,)
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)


def load_split(data_dir: Path, train: bool) -> Split:
    folder = ensure_cifar10(data_dir)
    classes = _read_classes(folder)
    images, labels = [], []
    for name in TRAIN_FILES if train else TEST_FILES:
        batch_images, batch_labels = _read_batch(folder / name, num_classes=len(classes))
        images.append(batch_images)
        labels.append(batch_labels)
    return Split(torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels)), classes)


def ensure_cifar10(data_dir: Path) -> Path:
    """The folder with the pickles: present, extracted from the archive, or downloaded.

    Several workers may start together on one shared data volume, so extraction and download
    happen once, under a file lock.
    """
    folder = data_dir / BATCHES_DIR
    if _complete(folder):
        return folder
    from filelock import FileLock

    data_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(data_dir / ".cifar10.lock"), timeout=1800):
        if _complete(folder):
            return folder
        archive = data_dir / ARCHIVE
        if archive.exists():
            _extract(archive, data_dir)
        else:
            _download(data_dir)
    if not _complete(folder):
        missing = [n for n in [*TRAIN_FILES, *TEST_FILES, "batches.meta"] if not (folder / n).exists()]
        raise DataError(f"CIFAR-10 in {folder} is incomplete: missing {', '.join(missing)}")
    return folder


def _complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in [*TRAIN_FILES, *TEST_FILES, "batches.meta"])


def _extract(archive: Path, data_dir: Path) -> None:
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


def _download(data_dir: Path) -> None:
    from torchvision.datasets import CIFAR10

    try:
        # torchvision downloads, checks the md5 and extracts into data_dir/cifar-10-batches-py.
        CIFAR10(root=str(data_dir), train=True, download=True)
    except Exception as exc:  # URLError, md5 mismatch, disk full: all end the job the same way
        raise DataError(
            f"CIFAR-10 not found in {data_dir} and the download failed ({type(exc).__name__}: {exc}); "
            f"put {BATCHES_DIR}/ or {ARCHIVE} there"
        ) from exc


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            # The official files are python-2 pickles of numpy arrays: bytes keys, latin1 payload.
            entry = pickle.load(f, encoding="latin1")
    except Exception as exc:
        raise DataError(f"{path} is not a CIFAR-10 batch file: {type(exc).__name__}: {exc}") from exc
    if not isinstance(entry, dict):
        raise DataError(f"{path} is not a CIFAR-10 batch file: expected a dict, got {type(entry).__name__}")
    return {key.decode() if isinstance(key, bytes) else key: value for key, value in entry.items()}


def _read_classes(folder: Path) -> tuple[str, ...]:
    meta = _unpickle(folder / "batches.meta")
    names = meta.get("label_names")
    if not names or not all(isinstance(n, (str, bytes)) for n in names):
        raise DataError(f"{folder / 'batches.meta'} has no label_names")
    return tuple(n.decode() if isinstance(n, bytes) else n for n in names)


def _read_batch(path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    entry = _unpickle(path)
    if "data" not in entry or "labels" not in entry:
        raise DataError(f"{path} lacks 'data' or 'labels'")
    data = np.asarray(entry["data"])
    labels = np.asarray(entry["labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: data must be uint8 of shape (N, 3072), got {data.dtype} {data.shape}")
    if len(labels) != len(data):
        raise DataError(f"{path}: {len(data)} images but {len(labels)} labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{path}: labels outside 0..{num_classes - 1}")
    # Rows hold the R, G and B planes one after another: (N, 3072) -> (N, 3, 32, 32).
    return data.reshape(-1, 3, 32, 32), labels

"""CIFAR-10 in the official python layout, read straight into one uint8 tensor (N, 3, 32, 32).

No per-image PIL work: batches are index slices, normalised on the device. The files are read
by shared/cifar_files.py (safely: no pickle may run code).
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from shared.cifar_files import (ALL_FILES, ARCHIVE, BATCHES_DIR, META_FILE, TEST_FILES, TRAIN_FILES, DataError,
                                extract_archive, read_batch, read_classes)

log = logging.getLogger("cifarq.data")

__all__ = ["DataError", "Split", "load_split", "ensure_cifar10"]


@dataclass(frozen=True)
class Split:
    images: torch.Tensor  # uint8 (N, 3, 32, 32)
    labels: torch.Tensor  # int64 (N,)
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)


# The split read last, train and test, by the folder and the files' sizes and mtimes: a worker
# keeps the data set in memory between jobs (a CPU worker's process runs up to 100), and its
# parent reads it before it forks the processes that run jobs (worker/tasks.py), so a job starts
# without unpickling 180 MB (~0.35 s on 2 cores). A file changed on disk is read again. Jobs
# share the tensors, so nothing may write into them (the recipes index and copy them).
_last_read: dict[bool, tuple[tuple, "Split"]] = {}


def load_split(data_dir: Path, train: bool) -> Split:
    folder = ensure_cifar10(data_dir)
    names = [*(TRAIN_FILES if train else TEST_FILES), META_FILE]
    signature = _signature(folder, names)
    cached = _last_read.get(train)
    if cached is not None and cached[0] == signature:
        return cached[1]
    split = _read_split(folder, train)
    _last_read[train] = (signature, split)
    return split


def read_ahead(data_dir: Path) -> bool:
    """Both splits read into memory now, and the files' digest taken (what a job records as its
    provenance: ~0.15 s more), where the data set is in place; nothing is downloaded or extracted
    here (the first job does that). False where it is not in place."""
    from shared.provenance import data_digest

    folder = data_dir / BATCHES_DIR
    if not _complete(folder):
        return False
    load_split(data_dir, train=True)
    load_split(data_dir, train=False)
    data_digest(folder, ALL_FILES)
    return True


def _signature(folder: Path, names: list[str]) -> tuple:
    stats = [(folder / name).stat() for name in names]
    return (str(folder.resolve()), *((name, st.st_size, st.st_mtime_ns) for name, st in zip(names, stats)))


def _read_split(folder: Path, train: bool) -> Split:
    classes = read_classes(folder)
    images, labels = [], []
    for name in TRAIN_FILES if train else TEST_FILES:
        batch_images, batch_labels = read_batch(folder / name, str(folder / name), num_classes=len(classes))
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
            _say_if_not_the_official(archive)
            extract_archive(archive, data_dir)
        else:
            _download(data_dir)
    if not _complete(folder):
        missing = [n for n in ALL_FILES if not (folder / n).exists()]
        raise DataError(f"CIFAR-10 in {folder} is incomplete: missing {', '.join(missing)}")
    return folder


# torchvision's own record of the official archive (torchvision.datasets.CIFAR10.tgz_md5).
OFFICIAL_ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"


def _say_if_not_the_official(archive: Path) -> None:
    """A local copy that differs from the official archive is used (it may be a deliberate
    subset), but the worker's log says so: the results are then not CIFAR-10's."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(archive, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    if digest.hexdigest() != OFFICIAL_ARCHIVE_MD5:
        log.warning("%s has md5 %s, not the official archive's %s: extracting this different copy",
                    archive, digest.hexdigest(), OFFICIAL_ARCHIVE_MD5)


def _complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in ALL_FILES)


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

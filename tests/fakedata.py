"""Small CIFAR-10-format data sets that tests make themselves (the real one is never committed).

Each class gets its own colour and stripe pattern plus noise, so a few epochs of the tutorial's
Net learn it well above chance: results are meaningful, and differ from class to class.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def make_images(n: int, rng: np.random.Generator, signal: float = 1.0) -> tuple[np.ndarray, list[int]]:
    labels = rng.integers(0, 10, size=n)
    images = rng.integers(0, 90, size=(n, 3, 32, 32)).astype(np.int16)
    for i, label in enumerate(labels):
        images[i, label % 3] += int(signal * (60 + 15 * (label // 3)))  # a colour per class...
        images[i, :, (label * 3) % 32:(label * 3) % 32 + 4, :] += int(signal * 80)  # ...and a stripe
    return np.clip(images, 0, 255).astype(np.uint8).reshape(n, 3072), [int(x) for x in labels]


def write_cifar10(root: Path, *, train_per_batch: int = 40, test: int = 100, seed: int = 0,
                  signal: float = 1.0) -> Path:
    """`signal` scales how far the classes stand out of the noise: below 1, they get hard."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for b in range(1, 6):
        data, labels = make_images(train_per_batch, rng, signal)
        _dump(folder / f"data_batch_{b}", data, labels, f"training batch {b} of 5")
    data, labels = make_images(test, rng, signal)
    _dump(folder / "test_batch", data, labels, "testing batch 1 of 1")
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": CLASSES, "num_cases_per_batch": train_per_batch, "num_vis": 3072}, f)
    return root


def _dump(path: Path, data: np.ndarray, labels: list[int], batch_label: str) -> None:
    with open(path, "wb") as f:
        pickle.dump({"batch_label": batch_label, "labels": labels, "data": data,
                     "filenames": [f"img_{i}.png" for i in range(len(labels))]}, f)

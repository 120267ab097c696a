"""The tutorial's own loop vs cifarq's default recipe: images/s and test accuracy, one run, same data.

usage: python bench/train_throughput.py [--epochs 2] [--data-dir DIR] [--device cpu|cuda] [--out FILE.json]

The tutorial side is its code as published: torchvision's CIFAR10 with ToTensor + Normalize per
image, a DataLoader (batch 4, shuffle, 2 workers), loss.item() every step. (The offline copy of
CIFAR-10 is not byte-identical to the official files, so torchvision's md5 check is skipped.)
"""
from __future__ import annotations

import argparse
import json
import pickle
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torchvision
import torchvision.transforms as transforms

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import machine, real_cifar10  # noqa: E402
from shared.jobspec import TrainConfig  # noqa: E402
from worker.data import load_split  # noqa: E402
from worker.evaluate import evaluate  # noqa: E402
from worker.model import Net  # noqa: E402
from worker.train import train  # noqa: E402


class OfflineCIFAR10(torchvision.datasets.CIFAR10):
    """torchvision's CIFAR10 minus its md5 checks; images still go through PIL one by one."""

    def _check_integrity(self) -> bool:
        return True

    def _load_meta(self) -> None:
        with open(Path(self.root) / self.base_folder / self.meta["filename"], "rb") as f:
            self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}


def tutorial_loop(data_dir: Path, epochs: int, device: torch.device) -> dict:
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])
    trainset = OfflineCIFAR10(root=str(data_dir), train=True, download=False, transform=transform)
    trainloader = torch.utils.data.DataLoader(trainset, batch_size=4, shuffle=True, num_workers=2)
    testset = OfflineCIFAR10(root=str(data_dir), train=False, download=False, transform=transform)
    testloader = torch.utils.data.DataLoader(testset, batch_size=4, shuffle=False, num_workers=2)
    torch.manual_seed(0)
    net = Net().to(device)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.001, momentum=0.9)
    started = time.perf_counter()
    for epoch in range(epochs):
        running_loss = 0.0
        for i, data in enumerate(trainloader, 0):
            inputs, labels = data[0].to(device), data[1].to(device)
            optimizer.zero_grad()
            outputs = net(inputs)
            loss = criterion(outputs, labels)
            loss.backward()
            optimizer.step()
            running_loss += loss.item()
            if i % 2000 == 1999:
                running_loss = 0.0
    seconds = time.perf_counter() - started
    correct = total = 0
    with torch.no_grad():
        for images, labels in testloader:
            outputs = net(images.to(device))
            _, predicted = torch.max(outputs, 1)
            total += labels.size(0)
            correct += (predicted.cpu() == labels).sum().item()
    return {"seconds": seconds, "images_per_second": epochs * len(trainset) / seconds, "accuracy": correct / total}


class Quiet:
    def progress(self, **_): pass
    def log(self, line): pass
    def should_stop(self): return False
    def epoch_done(self, **_): pass


def cifarq_recipe(data_dir: Path, epochs: int, device: torch.device) -> dict:
    config = TrainConfig(epochs=epochs)
    train_set, test_set = load_split(data_dir, train=True), load_split(data_dir, train=False)
    started = time.perf_counter()
    model = train(config, data_dir=data_dir, device=device, hooks=Quiet(), train_set=train_set)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    result = evaluate(model, test_set, device=device)
    return {"seconds": seconds, "images_per_second": epochs * len(train_set) / seconds, "accuracy": result.accuracy}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--data-dir", type=Path, default=Path.home() / ".cifarq" / "data")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=Path("bench/results/train_throughput.json"))
    args = parser.parse_args()
    data_dir = real_cifar10(args.data_dir)
    device = torch.device(args.device)

    rows = {"tutorial loop": tutorial_loop(data_dir, args.epochs, device),
            "cifarq default (tutorial recipe)": cifarq_recipe(data_dir, args.epochs, device)}
    base = rows["tutorial loop"]["images_per_second"]
    print(f"{'loop':34s} {'images/s':>9s} {'x tutorial':>10s} {'seconds':>8s} {'accuracy':>8s}")
    for name, row in rows.items():
        row["speedup"] = row["images_per_second"] / base
        print(f"{name:34s} {row['images_per_second']:9.0f} {row['speedup']:10.2f} {row['seconds']:8.1f} "
              f"{100 * row['accuracy']:7.1f}%")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine(), "device": str(device), "epochs": args.epochs,
                                    "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

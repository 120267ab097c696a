"""The tutorial's own loop vs cifarq's recipes: images/s and test accuracy, one run, same data.

usage: python bench/train_throughput.py [--epochs 2] [--data-dir DIR] [--device cpu|cuda] [--out FILE.json]
           [--fast-epochs N] [--fast-train-images N] [--fast-test-images N] [--seeds 0,1,2]
           [--fast-seeds 0,1,2,3,4] [--cpu-compile auto|always|never] [--skip tutorial,autograd,default,fast]

Rows, all measured in this one run on this one device, speed as a ratio to the first:
- "tutorial loop": the tutorial's code as published (below);
- "autograd step (previous default)": cifarq's data path (uint8 tensor, index slices) with the
  tutorial's autograd step + torch.optim.SGD: what `cifarq submit train` ran before issue 5;
- "cifarq default (tutorial recipe)": worker/train.py's train() as the worker runs it now;
- "cifarq --recipe fast": worker/recipes/fast.py. On a CPU it is far too slow for the full set,
  so it trains on the first --fast-train-images images and is tested on the first
  --fast-test-images test images; its row says so.

The tutorial side is its code as published: torchvision's CIFAR10 with ToTensor + Normalize per
image, a DataLoader (batch 4, shuffle, 2 workers), loss.item() every step. (The offline copy of
CIFAR-10 is not byte-identical to the official files, so torchvision's md5 check is skipped.)
"""
from __future__ import annotations

import argparse
import os
import pickle
import re
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torchvision
import torchvision.transforms as transforms

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import machine, real_cifar10, write_results  # noqa: E402
from shared.jobspec import TrainConfig  # noqa: E402
from worker.data import load_split  # noqa: E402
from worker.evaluate import evaluate  # noqa: E402
from worker.model import Net, normalize  # noqa: E402
from worker.data import Split  # noqa: E402
from worker.train import train  # noqa: E402


# train() reads the data set only when it is not handed one; every row here is handed one.
DATA_READ_BY_MAIN = Path("(read once by main())")


class OfflineCIFAR10(torchvision.datasets.CIFAR10):
    """torchvision's CIFAR10 minus its md5 checks; images still go through PIL one by one."""

    def _check_integrity(self) -> bool:
        return True

    def _load_meta(self) -> None:
        with open(Path(self.root) / self.base_folder / self.meta["filename"], "rb") as f:
            self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}


def tutorial_loop(data_dir: Path, epochs: int, device: torch.device, seed: int = 0) -> dict:
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])
    trainset = OfflineCIFAR10(root=str(data_dir), train=True, download=False, transform=transform)
    trainloader = torch.utils.data.DataLoader(trainset, batch_size=4, shuffle=True, num_workers=2)
    testset = OfflineCIFAR10(root=str(data_dir), train=False, download=False, transform=transform)
    testloader = torch.utils.data.DataLoader(testset, batch_size=4, shuffle=False, num_workers=2)
    torch.manual_seed(seed)
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
    return {"seconds": seconds, "images_per_second": epochs * len(trainset) / seconds, "accuracy": correct / total,
            "seed": seed}


class Quiet:  # worker/loop.py's TrainHooks, doing nothing
    def progress(self, **_): pass
    def phase(self, name): pass
    def compiled(self, seconds): pass
    def log(self, line): pass
    def should_stop(self): return False
    def epoch_done(self, **_): pass


# --cpu-compile: the worker's CIFARQ_CPU_COMPILE. With `auto`, the row follows a worker's rule: the
# figures of a warm-up (python -m worker.warm_up) in this process's inductor cache where there are
# some, else eager below 100,000 steps (worker/compile_cache.py).
CPU_COMPILE = "auto"


def timed_train(config: TrainConfig, train_set: Split, device: torch.device) -> tuple[nn.Module, float, list[str]]:
    """worker/train.py's train() on a set already in memory (read once for every row): the
    model, its wall seconds, its log lines."""
    hooks = Timings()
    started = time.perf_counter()
    model = train(config, data_dir=DATA_READ_BY_MAIN, device=device, hooks=hooks, train_set=train_set,
                  cpu_compile=CPU_COMPILE)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return model, time.perf_counter() - started, hooks.lines


def cifarq_recipe(splits: tuple[Split, Split], epochs: int, device: torch.device, seed: int = 0) -> dict:
    train_set, test_set = splits
    model, seconds, lines = timed_train(TrainConfig(epochs=epochs, seed=seed), train_set, device)
    result = evaluate(model, test_set, device=device)
    # On the CPU the step may be compiled (worker/recipes/tutorial.py): its time is inside `seconds`, and apart here.
    compiled = next((float(m.group(1)) for line in lines
                     if (m := re.match(r"step compiled (?:ahead of time, loaded )?in ([0-9.]+) s", line))), None)
    row = {"seconds": seconds, "images_per_second": epochs * len(train_set) / seconds, "accuracy": result.accuracy,
           "seed": seed, "compile_seconds": compiled}
    if compiled is not None:
        row["images_per_second_excluding_compile"] = epochs * len(train_set) / (seconds - compiled)
    return row


def autograd_step(splits: tuple[Split, Split], epochs: int, device: torch.device) -> dict:
    """cifarq's loop before issue 5: same data path and batches, the autograd step, 2 threads."""
    config = TrainConfig(epochs=epochs)
    train_set, test_set = splits
    images, labels = train_set.images.to(device), train_set.labels.to(device)
    torch.manual_seed(config.seed)
    model = Net(config.width).to(device)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum)
    n = len(labels)
    started = time.perf_counter()
    for epoch in range(epochs):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed * 100_003 + epoch)).to(device)
        loss_sum = torch.zeros((), device=device)
        for step in range((n + 3) // 4):
            batch = order[step * 4:(step + 1) * 4]
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(model(normalize(images[batch])), labels[batch])
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    result = evaluate(model, test_set, device=device)
    return {"seconds": seconds, "images_per_second": epochs * n / seconds, "accuracy": result.accuracy}


class Timings(Quiet):
    def __init__(self):
        self.lines = []

    def log(self, line):
        self.lines.append(line)


def fast_recipe(splits: tuple[Split, Split], epochs: int, device: torch.device, train_images: int,
                test_images: int, seed: int = 0) -> dict:
    full_train, full_test = splits
    train_set = Split(full_train.images[:train_images], full_train.labels[:train_images], full_train.classes)
    test_set = Split(full_test.images[:test_images], full_test.labels[:test_images], full_test.classes)
    config = TrainConfig(recipe="fast", epochs=epochs, seed=seed)
    model, seconds, lines = timed_train(config, train_set, device)
    eval_started = time.perf_counter()
    result = evaluate(model, test_set, device=device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    timing = next((line for line in lines if line.startswith("timing:")), None)
    train_only = re.search(r"training ([0-9.]+) s", timing or "")
    return {"seed": seed, "train_seconds_excluding_first_step": float(train_only.group(1)) if train_only else None,
            "seconds": seconds, "images_per_second": epochs * (len(train_set) // min(config.batch_size, len(train_set)))
            * min(config.batch_size, len(train_set)) / seconds,
            "accuracy": result.accuracy, "epochs": epochs, "train_images": len(train_set),
            "test_images": len(test_set), "evaluate_seconds_with_tta": time.perf_counter() - eval_started,
            "timing_line": timing}


def attempt(measure, *args) -> dict:
    """One row; a row that fails is reported as failed, and the others still run."""
    try:
        return measure(*args)
    except Exception as exc:  # noqa: BLE001 - a benchmark table, not a service
        import traceback

        traceback.print_exc()
        return {"error": f"{type(exc).__name__}: {exc}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--data-dir", type=Path, default=Path.home() / ".cifarq" / "data")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=Path("bench/results/train_throughput.json"))
    parser.add_argument("--seeds", default="0", help="seeds of the tutorial and cifarq default rows, comma-separated")
    parser.add_argument("--fast-seeds", default="0", help="seeds of the fast recipe's rows, comma-separated")
    parser.add_argument("--fast-epochs", type=int, default=None, help="default: the recipe's 10 (CUDA), 2 (CPU)")
    parser.add_argument("--fast-train-images", type=int, default=None, help="default: all (CUDA), 5000 (CPU)")
    parser.add_argument("--fast-test-images", type=int, default=None, help="default: all (CUDA), 2000 (CPU)")
    parser.add_argument("--cpu-compile", choices=["auto", "always", "never"], default="auto",
                        help="the worker's CIFARQ_CPU_COMPILE for the cifarq rows")
    parser.add_argument("--skip", default="", help="rows to leave out, comma-separated: tutorial,autograd,default,fast")
    args = parser.parse_args()
    global CPU_COMPILE
    CPU_COMPILE = args.cpu_compile
    data_dir = real_cifar10(args.data_dir)
    device = torch.device(args.device)
    cpu = device.type == "cpu"
    skip = set(filter(None, args.skip.split(",")))

    splits = (load_split(data_dir, train=True), load_split(data_dir, train=False))  # once, for every cifarq row
    rows = {}
    seeds = [int(seed) for seed in args.seeds.split(",")]
    suffix = (lambda seed: f", seed {seed}") if len(seeds) > 1 else (lambda seed: "")
    if "tutorial" not in skip:
        for seed in seeds:
            rows["tutorial loop" + suffix(seed)] = attempt(tutorial_loop, data_dir, args.epochs, device, seed)
    if "autograd" not in skip:
        rows["autograd step (previous default)"] = attempt(autograd_step, splits, args.epochs, device)
    if "default" not in skip:
        for seed in seeds:
            rows["cifarq default (tutorial recipe)" + suffix(seed)] = attempt(cifarq_recipe, splits, args.epochs,
                                                                              device, seed)
    fast_seeds = [int(seed) for seed in args.fast_seeds.split(",")]
    if "fast" not in skip:
        for seed in fast_seeds:
            epochs, train_images, test_images = (args.fast_epochs or (2 if cpu else 10),
                                                 args.fast_train_images or (5000 if cpu else 50_000),
                                                 args.fast_test_images or (2000 if cpu else 10_000))
            rows[f"cifarq --recipe fast ({epochs} ep, {train_images} train / {test_images} test images)"
                 f"{', seed %d' % seed if len(fast_seeds) > 1 else ''}"] = attempt(
                fast_recipe, splits, epochs, device, train_images, test_images, seed)
    base = next(row["images_per_second"] for row in rows.values() if "error" not in row)
    print(f"{'loop':62s} {'images/s':>9s} {'x first':>8s} {'seconds':>8s} {'accuracy':>8s}")
    for name, row in rows.items():
        if "error" in row:
            print(f"{name:62s} failed: {row['error']}")
            continue
        row["speedup"] = row["images_per_second"] / base
        print(f"{name:62s} {row['images_per_second']:9.0f} {row['speedup']:8.2f} {row['seconds']:8.1f} "
              f"{100 * row['accuracy']:7.1f}%")
    for recipe in ("tutorial loop", "cifarq default (tutorial recipe)", "cifarq --recipe fast"):
        accuracies = [row["accuracy"] for name, row in rows.items() if name.startswith(recipe) and "error" not in row]
        if len(accuracies) > 1:
            print(f"{recipe}: mean accuracy {100 * sum(accuracies) / len(accuracies):.2f}% over {len(accuracies)} seeds")
    fast_seconds = sorted(row["train_seconds_excluding_first_step"] for row in rows.values()
                          if row.get("train_seconds_excluding_first_step") is not None)
    if fast_seconds:
        print(f"cifarq --recipe fast: median training time {fast_seconds[len(fast_seconds) // 2]:.2f} s "
              f"(after the first step; data loading and the first step are in each row's timing line)")
    for name, row in rows.items():
        if row.get("compile_seconds") is not None:
            print(f"{name}: includes {row['compile_seconds']:.1f} s compiling the step; without it "
                  f"{row['images_per_second_excluding_compile']:.0f} images/s, "
                  f"{row['images_per_second_excluding_compile'] / base:.2f}x the first row")
    for row in rows.values():
        if row.get("timing_line"):
            print(f"fast recipe, seed {row['seed']}:", row["timing_line"])
    write_results(args.out, {"machine": machine(), "device": str(device), "epochs": args.epochs,
                             "load_average_at_end": os.getloadavg(), "rows": rows})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

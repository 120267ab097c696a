"""airbench94's own code on our data and GPU: the reference that `--recipe fast` is measured against.

usage: python bench/airbench_reference.py [--data-dir DIR] [--runs 5] [--work-dir DIR] [--out FILE.json]

Needs a CUDA GPU and the `airbench` package by airbench94's author (`pip install airbench==0.1.8`,
or its source on PYTHONPATH); nothing of it is copied into cifarq. Its `train94` is the published
airbench94 recipe (94.01% mean over 1000 runs on the original CIFAR-10, arXiv 2404.00498).

airbench reads CIFAR-10 from ./cifar10/{train,test}.pt, which it makes through torchvision's
download; the offline copy fails torchvision's md5 check, so this script writes those two files
from the python-layout pickles in --data-dir, in airbench's format (uint8 images NHWC, labels,
class names), into --work-dir, and runs there: airbench's warm-up run, then --runs runs. Each run's
time is airbench's own (CUDA events: whitening init + training + test-time-augmented evaluation,
not its per-epoch evaluation), its accuracy airbench's own `evaluate(..., tta_level=2)`.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import machine, real_cifar10, write_results  # noqa: E402
from worker.data import load_split  # noqa: E402


def write_airbench_files(data_dir: Path, work_dir: Path) -> None:
    folder = work_dir / "cifar10"
    folder.mkdir(parents=True, exist_ok=True)
    for train, name in ((True, "train.pt"), (False, "test.pt")):
        split = load_split(data_dir, train=train)
        torch.save({"images": split.images.permute(0, 2, 3, 1).contiguous(), "labels": split.labels,
                    "classes": list(split.classes)}, folder / name)


def final_row(printed: str) -> dict:
    """airbench's last table row, `|  run | eval | ... | tta_val_acc | total_time_seconds |`."""
    for line in reversed(printed.splitlines()):
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[1] == "eval":
            return {"tta_val_acc": float(cells[-2]), "total_time_seconds": float(cells[-1])}
    raise SystemExit(f"no final row in airbench's output:\n{printed}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path.home() / ".cifarq" / "data")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--work-dir", type=Path, default=Path("bench/results/airbench"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/airbench_reference.json"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("airbench runs on a CUDA GPU only; this machine has none")
    try:
        import airbench
    except ImportError:
        sys.exit("the airbench package is not installed: pip install airbench==0.1.8")

    data_dir = real_cifar10(args.data_dir).resolve()
    out = args.out.resolve()
    write_airbench_files(data_dir, args.work_dir)
    os.chdir(args.work_dir)  # airbench opens ./cifar10/*.pt
    airbench.warmup94()
    test_loader = airbench.CifarLoader("cifar10", train=False, batch_size=2000)
    runs = []
    for run in range(args.runs):
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            model = airbench.train94(run=run, verbose=True)
        row = final_row(printed.getvalue())
        row["accuracy"] = airbench.evaluate(model, test_loader, tta_level=2)
        runs.append(row)
        print(f"airbench94 run {run}: {100 * row['accuracy']:.2f}% in {row['total_time_seconds']:.2f} s", flush=True)
    accuracies = [row["accuracy"] for row in runs]
    seconds = [row["total_time_seconds"] for row in runs]
    summary = {"runs": len(runs), "mean_accuracy": statistics.mean(accuracies),
               "stdev_accuracy": statistics.stdev(accuracies) if len(runs) > 1 else 0.0,
               "median_seconds": statistics.median(seconds), "airbench_version": getattr(airbench, "__version__", None)}
    print(f"airbench94 ({len(runs)} runs): mean {100 * summary['mean_accuracy']:.2f}% "
          f"(sd {100 * summary['stdev_accuracy']:.2f}), median {summary['median_seconds']:.2f} s")
    write_results(out, {"machine": machine(), "summary": summary, "runs": runs})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""Shared by the benchmarks: where the real CIFAR-10 is, the machine a figure came from, and where it is written."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = Path(os.environ.get("CIFARQ_SHARED_DATASETS", REPO.parent / "shared" / "datasets"))


def real_cifar10(data_dir: Path) -> Path:
    """data_dir holding cifar-10-batches-py/, laid out from ../shared/datasets when absent."""
    if not (data_dir / "cifar-10-batches-py" / "test_batch").exists():
        script = SHARED_DATASETS / "make_cifar10_batches.py"
        if not script.exists():
            sys.exit(f"no CIFAR-10 in {data_dir} and no {script} to make it from")
        subprocess.run([sys.executable, str(script), str(data_dir)], check=True)
    return data_dir


def machine() -> dict:
    import torch

    from worker.compile_cache import cpu_model

    info = {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def write_results(path: Path, results: dict) -> None:
    """The figures as JSON at `path`, its folder made first (bench/results/ is not in a fresh clone)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")

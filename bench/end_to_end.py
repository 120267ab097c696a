"""`cifarq submit train` end to end through the queue, against the tutorial's script, in one run.

usage: python bench/end_to_end.py [--data DIR] [--epochs 1,2] [--rows tutorial,cold,warmed,no-warm-up,eager]
                                  [--device cpu|cuda] [--out FILE.json]

Per --epochs value, each row on the real CIFAR-10 (laid out from ../shared/datasets into --data
when absent), one after another on this machine:
- "tutorial": the tutorial's script (bench/train_throughput.py's tutorial_loop: torchvision's
  CIFAR10, DataLoader with 2 workers, autograd, test accuracy) as a fresh process, timed from its
  start to its exit, imports included;
- "cold": a new worker on a new CIFARQ_HOME (an empty compile cache), the job submitted as soon as
  the worker is ready: what the first job on a fresh host or container gets today. The worker's
  warm-up (worker/warm_up.py) is still compiling then, and a job that compiles waits for it;
- "warmed": the same, the job submitted once the worker's warm-up has put the step in the cache
  (how long that took is reported too): the first job on a worker that started before it;
- "no-warm-up": a new worker with CIFARQ_CPU_WARM_UP=never, submitted at once: before the warm-up;
- "eager": CIFARQ_CPU_COMPILE=never, the step never compiled.

A cifarq row's time runs from `cifarq submit train` to `cifarq wait` returning: the job's start,
data loading, compile where it compiles, training, the test evaluation, the records. The worker
is the embedded default (SQLite + filesystem broker). `--device cuda` runs the tutorial and the
jobs on the GPU (the warm-up is the CPU's: there, `cold` is the row; `compile_seconds` is then the
CUDA graph's capture). Each row also has the job's queue-to-start time (`submit_to_start_seconds`).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.common import machine, real_cifar10, write_results  # noqa: E402
from bench.queue_latency import cli, start_worker, stop_worker  # noqa: E402

TUTORIAL = """
import json, sys
from pathlib import Path
import torch
from bench.train_throughput import tutorial_loop
print(json.dumps(tutorial_loop(Path(sys.argv[1]), int(sys.argv[2]), torch.device(sys.argv[3]))))
"""


def tutorial_row(data: Path, epochs: int, device: str) -> dict:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", TUTORIAL, str(data), str(epochs), device], cwd=REPO, check=True,
                            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    seconds = time.perf_counter() - started
    loop = json.loads(result.stdout.strip().splitlines()[-1])
    return {"seconds": round(seconds, 1), "training_seconds": round(loop["seconds"], 1), "accuracy": loop["accuracy"]}


def warm_marks(home: Path) -> list[Path]:
    marks = home / "cache" / "inductor" / "cifarq-warm"
    return [p for p in marks.iterdir() if not p.name.startswith(".")] if marks.is_dir() else []


def cifarq_row(data: Path, epochs: int, row: str, device: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="cifarq-bench-e2e-") as tmp:
        home = Path(tmp)
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("CIFARQ_") and k != "TORCHINDUCTOR_CACHE_DIR"},
               "CIFARQ_HOME": str(home), "CIFARQ_DATA_DIR": str(data), "PYTHONPATH": str(REPO),
               "CIFARQ_CPU_WARM_UP": "never" if row in ("no-warm-up", "eager") else "auto",
               "CIFARQ_CPU_COMPILE": "never" if row == "eager" else "auto"}
        cli(env, "list")  # the database made and migrated before anything is timed
        worker_started = time.perf_counter()
        worker = start_worker(env, home / "worker.log")
        out: dict = {"worker_ready_seconds": round(time.perf_counter() - worker_started, 1)}
        try:
            if row == "warmed":
                while not warm_marks(home):
                    if worker.poll() is not None or time.perf_counter() - worker_started > 600:
                        raise SystemExit(f"the warm-up never finished:\n{(home / 'worker.log').read_text()}")
                    time.sleep(0.5)
                out["warm_up_seconds"] = round(time.perf_counter() - worker_started, 1)
            started = time.perf_counter()
            job = json.loads(cli(env, "submit", "train", "--epochs", str(epochs), "--device", device,
                                 "--json")[0].stdout)["id"]
            subprocess.run([sys.executable, "-m", "api_cli.main", "wait", job, "--timeout", "3600"], env=env,
                           cwd=REPO, capture_output=True, check=False, timeout=3700)
            out["seconds"] = round(time.perf_counter() - started, 1)
            status = json.loads(cli(env, "status", job, "--json")[0].stdout)
            if status["status"] != "succeeded":
                raise SystemExit(f"{row}: job ended {status['status']}: {status['error']}")
            out["accuracy"] = status["metrics"]["test_accuracy"]
            out["compile_seconds"] = status["progress"]["compile_seconds"]
            out["submit_to_start_seconds"] = round((datetime.fromisoformat(status["started_at"]) -
                                                    datetime.fromisoformat(status["created_at"])).total_seconds(), 2)
            out["epoch_images_per_second"] = [int(m) for m in re.findall(r"(\d+) images/s",
                                                                         cli(env, "logs", job)[0].stdout)]
        finally:
            stop_worker(worker)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "cifarq-bench-cifar10")
    parser.add_argument("--epochs", default="1,2")
    parser.add_argument("--rows", default="tutorial,cold,warmed,no-warm-up")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    data = real_cifar10(args.data)
    rows = args.rows.split(",")
    results: dict = {"machine": machine(), "runs": {}}
    for epochs in [int(e) for e in args.epochs.split(",")]:
        run: dict = {}
        for row in rows:
            run[row] = (tutorial_row(data, epochs, args.device) if row == "tutorial"
                        else cifarq_row(data, epochs, row, args.device))
            if "tutorial" in run and row != "tutorial":
                run[row]["x_tutorial"] = round(run["tutorial"]["seconds"] / run[row]["seconds"], 2)
            print(f"--epochs {epochs} {row}: {json.dumps(run[row])}", file=sys.stderr, flush=True)
        results["runs"][f"epochs={epochs}"] = run
    print(json.dumps(results, indent=2))
    if args.out:
        write_results(args.out, results)


if __name__ == "__main__":
    main()

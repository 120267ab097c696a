"""A sweep packed against the same sweep with --no-pack, through one real worker, in one run.

usage: python bench/packed_sweep.py [--data DIR] [--epochs 2] [--lr 0.0005,0.001,0.002,0.004]
                                    [--seed 0,1] [--pack-size 8] [--device cpu] [--baseline sweep|single]
                                    [--out FILE.json]

The real CLI and one real `cifarq worker` (the embedded default: SQLite + the filesystem broker)
in a fresh CIFARQ_HOME, on the real CIFAR-10 (laid out from ../shared/datasets into --data when
absent). Each round submits the whole sweep and waits for every job; its wall time runs from the
submit to the last job's end, so it holds everything a user waits for: start, data loading, the
compile where a lone job compiles, training, test evaluation, the records. The --no-pack round
runs first and the packed one second (the worker's inductor cache is then no colder for the lone
jobs than for the pack). Per point, the packed and the lone job's test accuracy are compared.
`--baseline single` (for a GPU and a pack of 64: `--device cuda --lr 0.001 --seed 0,1,...,63
--pack-size 64`) runs only the first point alone as the baseline: the pack against one job.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.common import machine, real_cifar10, write_results  # noqa: E402
from bench.queue_latency import cli, start_worker, stop_worker  # noqa: E402


def sweep_round(env: dict, flags: list[str]) -> dict:
    started = time.perf_counter()
    jobs = json.loads(cli(env, "submit", "sweep", *flags, "--json")[0].stdout)["jobs"]
    for job in jobs:  # not bench.queue_latency.cli: its 300 s limit is for one command, not a sweep
        subprocess.run([sys.executable, "-m", "api_cli.main", "wait", job["id"], "--timeout", "7200"], env=env,
                       cwd=REPO, capture_output=True, check=False, timeout=7300)
    seconds = time.perf_counter() - started
    points = {}
    for job in jobs:
        status = json.loads(cli(env, "status", job["id"], "--json")[0].stdout)
        if status["status"] != "succeeded":
            raise SystemExit(f"job {job['id']} ended {status['status']}: {status['error']}")
        params = status["params"]
        points[f"lr={params['lr']} seed={params['seed']}"] = {
            "accuracy": status["metrics"]["test_accuracy"], "compile_seconds": status["progress"]["compile_seconds"],
            "packed_with": status["packed_with"]}
    return {"seconds": round(seconds, 1), "points": points}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "cifarq-bench-cifar10")
    parser.add_argument("--epochs", default="2")
    parser.add_argument("--lr", default="0.0005,0.001,0.002,0.004")
    parser.add_argument("--seed", default="0,1")
    parser.add_argument("--pack-size", default="8")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--baseline", choices=["sweep", "single"], default="sweep")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    data = real_cifar10(args.data)
    sweep = ["--lr", args.lr, "--seed", args.seed, "--epochs", args.epochs, "--device", args.device]
    first = ["--lr", args.lr.split(",")[0], "--seed", args.seed.split(",")[0], "--epochs", args.epochs,
             "--device", args.device]
    with tempfile.TemporaryDirectory(prefix="cifarq-bench-packed-") as home:
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("CIFARQ_")},
               "CIFARQ_HOME": home, "CIFARQ_DATA_DIR": str(data), "PYTHONPATH": str(REPO)}
        worker = start_worker(env, Path(home) / "worker.log")
        try:
            # A sweep of one point is one lone job (a pack of one is never made).
            alone = sweep_round(env, [*(sweep if args.baseline == "sweep" else first), "--no-pack"])
            packed = sweep_round(env, [*sweep, "--pack-size", args.pack_size])
        finally:
            stop_worker(worker)
    differences = [abs(packed["points"][k]["accuracy"] - alone["points"][k]["accuracy"]) for k in alone["points"]]
    result = {
        "machine": machine(), "sweep": " ".join(sweep), "pack_size": int(args.pack_size), "baseline": args.baseline,
        "no_pack": alone, "packed": packed,
        "speedup": round(alone["seconds"] / packed["seconds"], 2),
        "throughput_ratio": round(len(packed["points"]) / len(alone["points"]) * alone["seconds"] / packed["seconds"], 2),
        "accuracy_difference_max_points": round(100 * max(differences), 2),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        write_results(args.out, result)


if __name__ == "__main__":
    main()

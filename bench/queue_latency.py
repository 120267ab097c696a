"""The queue as a user meets it: submit rate, queue-to-start latency, `cifarq status` wall time.

usage: python bench/queue_latency.py [--burst 20] [--sequential 10] [--status-calls 20] [--out FILE.json]

Everything runs the real `cifarq` CLI as subprocesses against the embedded default (SQLite +
filesystem broker) in a fresh temporary CIFARQ_HOME, with one `cifarq worker` started here, on a
tiny generated data set (tests/fakedata.write_cifar10: 200 training images). Jobs are the
tutorial recipe for 1 epoch at batch 50 (4 steps), so the figures are the system's, not training's.

- submit rate: a burst of --burst `submit train` calls, one after another (each a new process);
- queue-to-start latency: --sequential jobs, each submitted to an idle worker and waited for;
  started_at - created_at from `status --json` (the worker starts a fresh child per job);
- `cifarq status ID` wall time: --status-calls calls, each a new process (the client's budget: < 0.5 s).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.common import machine, write_results  # noqa: E402
from tests.fakedata import write_cifar10  # noqa: E402

JOB = ["--epochs", "1", "--batch-size", "50", "--log-every", "1000", "--device", "cpu"]


def cli(env: dict, *args: str) -> tuple[subprocess.CompletedProcess, float]:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "api_cli.main", *args], capture_output=True, text=True,
                            env=env, cwd=REPO, timeout=300)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"cifarq {' '.join(args)} exited {result.returncode}: {result.stderr}")
    return result, seconds


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(values: list[float]) -> dict:
    return {"n": len(values), "p50": percentile(values, 0.5), "p95": percentile(values, 0.95),
            "max": max(values), "mean": statistics.fmean(values)}


def start_worker(env: dict, log_path: Path) -> subprocess.Popen:
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "-m", "api_cli.main", "worker"], env=env, cwd=REPO, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 120
    while "ready." not in log_path.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"worker did not start:\n{log_path.read_text()}")
        time.sleep(0.2)
    return proc


def stop_worker(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def latency(status: dict) -> float:
    created, started = (datetime.fromisoformat(status[key]) for key in ("created_at", "started_at"))
    return (started - created).total_seconds()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--burst", type=int, default=20)
    parser.add_argument("--sequential", type=int, default=10)
    parser.add_argument("--status-calls", type=int, default=20)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "queue.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="cifarq-bench-") as tmp:
        home = Path(tmp) / "home"
        data_dir = write_cifar10(Path(tmp) / "data")
        env = {k: v for k, v in os.environ.items() if not k.startswith("CIFARQ_")}
        env.update(CIFARQ_HOME=str(home), CIFARQ_DATA_DIR=str(data_dir), PYTHONPATH=str(REPO))
        cli(env, "list")  # creates and migrates the database before anything is timed
        worker = start_worker(env, Path(tmp) / "worker.log")
        try:
            # 1. A burst of submits, one process each.
            submit_seconds, burst_ids = [], []
            started = time.perf_counter()
            for _ in range(args.burst):
                result, seconds = cli(env, "submit", "train", *JOB, "--json")
                submit_seconds.append(seconds)
                burst_ids.append(json.loads(result.stdout)["id"])
            burst_wall = time.perf_counter() - started
            for job_id in burst_ids:
                cli(env, "wait", job_id, "--timeout", "600")
            # 2. Queue-to-start latency with an idle worker.
            latencies = []
            for _ in range(args.sequential):
                job_id = json.loads(cli(env, "submit", "train", *JOB, "--json")[0].stdout)["id"]
                cli(env, "wait", job_id, "--timeout", "600")
                latencies.append(latency(json.loads(cli(env, "status", job_id, "--json")[0].stdout)))
            # 3. `cifarq status` wall time, with the database holding all those jobs.
            status_seconds = [cli(env, "status", burst_ids[i % len(burst_ids)])[1] for i in range(args.status_calls)]
            list_seconds = [cli(env, "list")[1] for _ in range(5)]
        finally:
            stop_worker(worker)

    report = {"machine": machine(), "load_average_at_end": os.getloadavg(),
              "submit": {"rate_per_second": args.burst / burst_wall, "seconds": summary(submit_seconds)},
              "queue_to_start_seconds": summary(latencies),
              "status_seconds": summary(status_seconds), "list_seconds": summary(list_seconds)}
    print(f"submit: {report['submit']['rate_per_second']:.2f} jobs/s "
          f"(p50 {report['submit']['seconds']['p50']:.2f} s per call)")
    print(f"queue-to-start (idle worker): p50 {report['queue_to_start_seconds']['p50']:.2f} s, "
          f"p95 {report['queue_to_start_seconds']['p95']:.2f} s")
    print(f"cifarq status: p50 {report['status_seconds']['p50']:.3f} s, p95 {report['status_seconds']['p95']:.3f} s, "
          f"max {report['status_seconds']['max']:.3f} s  (limit 0.5 s)")
    print(f"cifarq list: p50 {report['list_seconds']['p50']:.3f} s")
    write_results(args.out, report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

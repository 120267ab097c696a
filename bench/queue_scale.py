"""Queue throughput at scale: N one-step jobs through Redis + PostgreSQL with W CPU workers,
against raw Celery (a no-op task, the same pool settings) on the same Redis, in the same run.

usage: python bench/queue_scale.py [--jobs 2000] [--workers 4] [--out FILE.json]

- raw Celery: W `celery worker` processes (prefork, concurrency 1, as cifarq's), N tasks sent
  from this process; each task pushes (started - sent) onto a Redis list.
- cifarq: W `cifarq worker --gpu none` processes, N train jobs queued by `cifarq submit sweep`
  (1,000 per sweep, its limit), each one step (50 generated images at batch 50, 10 test
  images): claim, data, one step, the epoch's checkpoint, the test evaluation, the results.
  Timings come from the job rows: created -> started (queue to start), started -> finished.

Both report jobs per second end to end (first sent to last finished) and p50/p95/p99 of queue to
start. Needs PostgreSQL and Redis (CIFARQ_BENCH_PG, CIFARQ_BENCH_REDIS).
"""
from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.common import machine, write_results  # noqa: E402
from bench.queue_latency import percentile  # noqa: E402
from tests.fakedata import write_cifar10  # noqa: E402

PG_ADMIN = os.environ.get("CIFARQ_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS = os.environ.get("CIFARQ_BENCH_REDIS", "redis://127.0.0.1:6379")
RAW_DB, CIFARQ_DB = 13, 14  # Redis database numbers, emptied first
ONE_STEP = ["--epochs", "1", "--batch-size", "50", "--log-every", "1000", "--device", "cpu"]

NOOP_APP = """
import time
import redis
from celery import Celery

app = Celery("noop", broker={broker!r})
app.conf.update(task_acks_late=True, worker_prefetch_multiplier=1, broker_connection_retry_on_startup=True)
_results = redis.Redis.from_url({broker!r})

@app.task(name="noop")
def noop(sent_at):
    _results.rpush("started", repr(time.time() - sent_at))
    _results.rpush("done", repr(time.time()))
"""


def quantiles(values: list[float]) -> dict:
    return {"p50": percentile(values, 0.5), "p95": percentile(values, 0.95), "p99": percentile(values, 0.99),
            "mean": statistics.fmean(values)}


def spawn(command: list[str], env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen(command, env=env, cwd=REPO, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def wait_ready(logs: list[Path], marker: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not all(marker in log.read_text() for log in logs):
        if time.monotonic() > deadline:
            raise SystemExit("workers did not start:\n" + "\n".join(log.read_text()[-2000:] for log in logs))
        time.sleep(0.5)


def raw_celery(tmp: Path, jobs: int, workers: int) -> dict:
    import redis

    broker = f"{REDIS}/{RAW_DB}"
    client = redis.Redis.from_url(broker)
    client.flushdb()
    (tmp / "noop_app.py").write_text(textwrap.dedent(NOOP_APP.format(broker=broker)))
    env = {**os.environ, "PYTHONPATH": str(tmp)}
    logs = [tmp / f"noop-{i}.log" for i in range(workers)]
    procs = [spawn([sys.executable, "-m", "celery", "-A", "noop_app", "worker", "--pool", "prefork",
                    "--concurrency", "1", "--max-tasks-per-child", "100", "--hostname", f"noop{i}@%h",
                    "--without-gossip", "--without-mingle", "--loglevel", "WARNING"], env, log)
             for i, log in enumerate(logs)]
    try:
        time.sleep(3)
        sys.path.insert(0, str(tmp))
        from noop_app import app  # noqa: E402 - written above

        time.sleep(7)  # the workers connect (they log nothing at WARNING)
        started = time.time()
        for _ in range(jobs):
            app.send_task("noop", args=(time.time(),))
        sent = time.time() - started
        while client.llen("done") < jobs:
            time.sleep(0.2)
        finished = max(float(v) for v in client.lrange("done", 0, -1))
        waits = [float(v) for v in client.lrange("started", 0, -1)]
    finally:
        stop(procs)
        client.flushdb()
    return {"jobs": jobs, "send_seconds": sent, "jobs_per_second": jobs / (finished - started),
            "queue_to_start_seconds": quantiles(waits)}


def cifarq(tmp: Path, jobs: int, workers: int) -> dict:
    import psycopg
    import redis

    database = f"cifarq_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    redis.Redis.from_url(f"{REDIS}/{CIFARQ_DB}").flushdb()
    data_dir = write_cifar10(tmp / "data", train_per_batch=10, test=10)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIFARQ_")}
    env.update(CIFARQ_HOME=str(tmp / "home"), CIFARQ_DATA_DIR=str(data_dir), PYTHONPATH=str(REPO),
               CIFARQ_BROKER_URL=f"{REDIS}/{CIFARQ_DB}",
               CIFARQ_DATABASE_URL=PG_ADMIN.replace("postgresql://", "postgresql+psycopg://").rsplit("/", 1)[0]
               + f"/{database}")
    cli = [sys.executable, "-m", "api_cli.main"]
    procs: list[subprocess.Popen] = []
    try:
        subprocess.run([*cli, "db", "upgrade"], env=env, cwd=REPO, check=True, capture_output=True)
        logs = [tmp / f"cifarq-{i}.log" for i in range(workers)]
        procs = [spawn([*cli, "worker", "--gpu", "none"], env, log) for log in logs]
        wait_ready(logs, " ready.")
        started = time.time()
        left = jobs
        while left:
            batch = min(left, 1000)
            seeds = ",".join(str(s) for s in range(jobs - left, jobs - left + batch))
            subprocess.run([*cli, "submit", "sweep", "--seed", seeds, *ONE_STEP, "--json"], env=env, cwd=REPO,
                           check=True, capture_output=True)
            left -= batch
        sent = time.time() - started
        with psycopg.connect(PG_ADMIN.rsplit("/", 1)[0] + f"/{database}", autocommit=True) as conn:
            while conn.execute("SELECT count(*) FROM jobs WHERE status IN ('queued', 'running')").fetchone()[0]:
                time.sleep(1)
            rows = conn.execute("SELECT status, extract(epoch FROM started_at - created_at), "
                                "extract(epoch FROM finished_at - started_at), extract(epoch FROM finished_at) "
                                "FROM jobs").fetchall()
    finally:
        stop(procs)
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        redis.Redis.from_url(f"{REDIS}/{CIFARQ_DB}").flushdb()
    failed = [r for r in rows if r[0] != "succeeded"]
    if failed:
        raise SystemExit(f"{len(failed)} of {len(rows)} jobs did not succeed: {failed[:3]}")
    finished = max(float(r[3]) for r in rows)
    return {"jobs": jobs, "submit_seconds": sent, "jobs_per_second": jobs / (finished - started),
            "queue_to_start_seconds": quantiles([float(r[1]) for r in rows]),
            "run_seconds": quantiles([float(r[2]) for r in rows])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "queue_scale.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cifarq-bench-") as tmp_name:
        tmp = Path(tmp_name)
        raw = raw_celery(tmp, args.jobs, args.workers)
        print(f"raw Celery: {raw['jobs_per_second']:.1f} tasks/s, queue to start p50 "
              f"{raw['queue_to_start_seconds']['p50']:.3f} s, p99 {raw['queue_to_start_seconds']['p99']:.3f} s")
        ours = cifarq(tmp, args.jobs, args.workers)
        print(f"cifarq: {ours['jobs_per_second']:.1f} jobs/s, submit {args.jobs / ours['submit_seconds']:.0f} jobs/s, "
              f"run p50 {ours['run_seconds']['p50']:.3f} s, queue to start p50 "
              f"{ours['queue_to_start_seconds']['p50']:.1f} s, p95 {ours['queue_to_start_seconds']['p95']:.1f} s, "
              f"p99 {ours['queue_to_start_seconds']['p99']:.1f} s")
    report = {"machine": machine(), "workers": args.workers, "raw_celery": raw, "cifarq": ours,
              "ratio_jobs_per_second": ours["jobs_per_second"] / raw["jobs_per_second"]}
    write_results(args.out, report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

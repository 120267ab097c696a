"""What following a job costs it: its training time alone, and with N `cifarq wait` processes on it.

usage: python bench/followers.py [--followers 50] [--rounds 2] [--backend sqlite|postgres] [--out FILE.json]

The real CLI and a real `cifarq worker`, in a fresh CIFARQ_HOME, on a generated data set of
10,000 training images (tests/fakedata.write_cifar10), the tutorial recipe for 6 epochs. A round
submits the job with no worker running; with followers, N `cifarq wait ID` processes start and
are given time to finish importing (each then reads the job row once a second, api_cli/jobs_cmd.py
POLL_SECONDS); then the worker starts and the job runs. The figure is the job's own training time,
the sum of its epochs' seconds as its log records them, so that starting N Python processes (about
a second of CPU each) is not counted against it. Rounds alternate, alone and followed, to spread
the machine's drift over both.

On PostgreSQL the followers' reads are counted too: committed transactions per second on the
job's database while only the followers run (pg_stat_database), divided by N.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.common import machine, write_results  # noqa: E402
from bench.queue_latency import cli, start_worker, stop_worker  # noqa: E402
from tests.fakedata import write_cifar10  # noqa: E402

JOB = ["--epochs", "6", "--lr", "0.005", "--log-every", "1000", "--device", "cpu", "--json"]
PG_ADMIN = os.environ.get("CIFARQ_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
SETTLE_SECONDS = 20.0  # N processes importing the CLI on 2 cores: done well within this


def epoch_seconds(env: dict, job_id: str) -> float:
    log = cli(env, "logs", job_id)[0].stdout
    seconds = [float(s) for s in re.findall(r"^epoch \d+/\d+: loss [\d.]+, ([\d.]+) s,", log, re.M)]
    if len(seconds) != 6:
        raise SystemExit(f"job {job_id}: expected 6 epoch lines in its log:\n{log}")
    return sum(seconds)


def committed(database: str) -> int:
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        return conn.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = %s", (database,)).fetchone()[0]


def one_round(env: dict, tmp: Path, followers: int, database: str | None) -> dict:
    job_id = json.loads(cli(env, "submit", "train", *JOB)[0].stdout)["id"]
    waiting = [subprocess.Popen([sys.executable, "-m", "api_cli.main", "wait", job_id, "--timeout", "900"], env=env,
                                cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
               for _ in range(followers)]
    reads_per_follower = None
    if followers:
        time.sleep(SETTLE_SECONDS)
        if database:  # the followers alone, polling a queued job
            before, started = committed(database), time.monotonic()
            time.sleep(10)
            reads_per_follower = (committed(database) - before) / (time.monotonic() - started) / followers
    worker = start_worker(env, tmp / f"worker-{job_id}.log")
    try:
        cli(env, "wait", job_id, "--timeout", "900")
    finally:
        stop_worker(worker)
    for proc in waiting:
        proc.wait(timeout=120)
    return {"followers": followers, "job": job_id, "training_seconds": epoch_seconds(env, job_id),
            "transactions_per_second_per_follower": reads_per_follower}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--followers", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=2, help="rounds of each kind, alternating")
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out = args.out or REPO / "bench" / "results" / f"followers-{args.backend}.json"

    with tempfile.TemporaryDirectory(prefix="cifarq-bench-") as tmp_name:
        tmp = Path(tmp_name)
        data_dir = write_cifar10(tmp / "data", train_per_batch=2000, test=500)
        env = {k: v for k, v in os.environ.items() if not k.startswith("CIFARQ_")}
        env.update(CIFARQ_HOME=str(tmp / "home"), CIFARQ_DATA_DIR=str(data_dir), PYTHONPATH=str(REPO))
        database = None
        if args.backend == "postgres":
            import psycopg

            database = f"cifarq_bench_{uuid.uuid4().hex[:8]}"
            with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{database}"')
            env["CIFARQ_DATABASE_URL"] = PG_ADMIN.replace("postgresql://", "postgresql+psycopg://").rsplit("/", 1)[0] \
                + f"/{database}"
        try:
            cli(env, "db", "upgrade")
            rounds = []
            for _ in range(args.rounds):
                for followers in (0, args.followers):
                    rounds.append(one_round(env, tmp, followers, database))
                    print(json.dumps(rounds[-1]))
        finally:
            if database:
                import psycopg

                with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                    conn.execute(f'DROP DATABASE "{database}" WITH (FORCE)')

    alone = [r["training_seconds"] for r in rounds if not r["followers"]]
    followed = [r["training_seconds"] for r in rounds if r["followers"]]
    reads = [r["transactions_per_second_per_follower"] for r in rounds if r["transactions_per_second_per_follower"]]
    report = {"machine": machine(), "backend": args.backend, "followers": args.followers, "rounds": rounds,
              "alone_seconds": statistics.fmean(alone), "followed_seconds": statistics.fmean(followed),
              "slowdown_percent": 100 * (statistics.fmean(followed) / statistics.fmean(alone) - 1),
              "transactions_per_second_per_follower": statistics.fmean(reads) if reads else None}
    print(f"{args.backend}: training {report['alone_seconds']:.1f} s alone, {report['followed_seconds']:.1f} s "
          f"with {args.followers} followers: {report['slowdown_percent']:+.1f}%"
          + (f"; {report['transactions_per_second_per_follower']:.2f} transactions/s per follower" if reads else ""))
    write_results(out, report)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

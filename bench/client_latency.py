"""The client's own wall time: `cifarq status ID` and `cifarq submit train`, median of N, per backend.

usage: python bench/client_latency.py [--calls 10] [--backends sqlite,postgres]
                                      [--postgres postgresql://postgres@127.0.0.1:5432/postgres]
                                      [--redis redis://127.0.0.1:6379/14] [--checkout DIR] [--out FILE.json]

Each call is a new process of the installed `cifarq` script (beside this Python), as a user or a
script runs it, with no worker running. Per backend, a fresh installation: the embedded default
(SQLite + filesystem broker in a temporary CIFARQ_HOME), or PostgreSQL (a new database, dropped
afterwards) + Redis. Rows:
- `status` of a finished job (cancelled before it started): the common case for scripts;
- `status` of a queued job: it also asks whether a live worker consumes its queue;
- `submit train --epochs 1`: a row and a message (each call queues one more job).
`--checkout DIR` runs `python -m api_cli.main` from another checkout instead (an earlier commit
in a `git worktree`: before and after in the same run).
"""
from __future__ import annotations

import argparse
import json
import os
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


CHECKOUT: Path | None = None  # --checkout


def cifarq_command() -> list[str]:
    script = Path(sys.executable).parent / "cifarq"
    if CHECKOUT is None and script.exists():
        return [str(script)]
    return [sys.executable, "-m", "api_cli.main"]


def timed(env: dict, *args: str) -> tuple[float, str]:
    started = time.perf_counter()
    result = subprocess.run([*cifarq_command(), *args], capture_output=True, text=True, env=env, timeout=120,
                            cwd=CHECKOUT or REPO)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"cifarq {' '.join(args)} exited {result.returncode}: {result.stderr}")
    return seconds, result.stdout


def measure(env: dict, calls: int) -> dict:
    timed(env, "list")  # the database made and migrated before anything is timed
    finished = json.loads(timed(env, "submit", "train", "--epochs", "1", "--json")[1])["id"]
    timed(env, "cancel", finished)
    queued = json.loads(timed(env, "submit", "train", "--epochs", "1", "--json")[1])["id"]
    rows = {
        "status of a finished job": [timed(env, "status", finished)[0] for _ in range(calls)],
        "status of a queued job": [timed(env, "status", queued)[0] for _ in range(calls)],
        "submit train": [timed(env, "submit", "train", "--epochs", "1")[0] for _ in range(calls)],
    }
    return {name: {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
                   "max": round(max(values), 3)} for name, values in rows.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/14")
    parser.add_argument("--checkout", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    global CHECKOUT
    CHECKOUT = args.checkout

    results: dict = {"machine": machine(), "calls": args.calls, "load_average_at_start": os.getloadavg()[0],
                     "checkout": str(args.checkout or REPO)}
    base = {k: v for k, v in os.environ.items() if not k.startswith("CIFARQ_")}
    for backend in args.backends.split(","):
        with tempfile.TemporaryDirectory(prefix="cifarq-bench-client-") as home:
            env = {**base, "CIFARQ_HOME": home}
            if backend == "sqlite":
                results[backend] = measure(env, args.calls)
                continue
            import psycopg

            name = f"cifarq_bench_{uuid.uuid4().hex[:8]}"
            with psycopg.connect(args.postgres, autocommit=True) as admin:
                admin.execute(f"CREATE DATABASE {name}")
            try:
                env.update(CIFARQ_DATABASE_URL=args.postgres.rsplit("/", 1)[0].replace(
                    "postgresql://", "postgresql+psycopg://") + f"/{name}", CIFARQ_BROKER_URL=args.redis)
                timed(env, "db", "upgrade")
                results[backend] = measure(env, args.calls)
            finally:
                with psycopg.connect(args.postgres, autocommit=True) as admin:
                    admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
                import redis

                redis.Redis.from_url(args.redis).flushdb()  # the submitted jobs' messages
    print(json.dumps(results, indent=2))
    if args.out:
        write_results(args.out, results)


if __name__ == "__main__":
    main()

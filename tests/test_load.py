"""Load: 500 short jobs submitted at once to 2 real workers; every one succeeds, once, and is listed."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO, make_env
from tests.fakedata import write_cifar10

pytestmark = pytest.mark.slow  # 500 jobs through 2 real workers: CI runs it, the inner loop does not
JOBS = int(os.environ.get("CIFARQ_LOAD_JOBS", "500"))

SUBMIT = """
import json, sys
from api_cli.submit_cmd import submit
from shared.jobspec import TrainConfig
from shared.states import JobKind
config = TrainConfig(epochs=1, batch_size=20, lr=0.01, log_every=1000)
ids = [submit(JobKind.train, config, None) for _ in range(int(sys.argv[1]))]
print(json.dumps(ids))
"""


@pytest.mark.parametrize("backend", ["postgres"])
def test_many_short_jobs_all_succeed_once(backend, tmp_path):
    tiny = write_cifar10(tmp_path / "tiny", train_per_batch=4, test=10)
    env, cleanup = make_env(backend, tmp_path / "home", tiny)
    try:
        started = time.monotonic()
        out = subprocess.run([sys.executable, "-c", SUBMIT, str(JOBS)], env=env.vars, cwd=REPO, check=True,
                             capture_output=True, text=True).stdout
        submit_seconds = time.monotonic() - started
        ids = set(__import__("json").loads(out))
        assert len(ids) == JOBS
        env.start_worker()
        env.start_worker()
        deadline = time.monotonic() + 600
        while True:
            jobs = env.cli_json("list", "--limit", str(JOBS * 2))
            done = [j for j in jobs if j["status"] in ("succeeded", "failed", "cancelled")]
            if len(done) == JOBS or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert {j["id"] for j in jobs} == ids, "list shows every job"
        assert all(j["status"] == "succeeded" for j in jobs), [j for j in jobs if j["status"] != "succeeded"][:3]
        assert all(j["attempts"] == 1 for j in jobs), "none ran twice"
        from sqlalchemy import create_engine, text

        engine = create_engine(env.vars["CIFARQ_DATABASE_URL"])
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*), count(DISTINCT job_id) FROM results")).one() == (JOBS, JOBS)
            finished = conn.execute(text("SELECT count(*) FROM log_lines WHERE line = 'Finished Training'")).scalar()
        engine.dispose()
        assert finished == JOBS, "every job trained exactly once"
        print(f"{JOBS} jobs submitted in {submit_seconds:.1f} s ({JOBS / submit_seconds:.0f}/s)")
    finally:
        env.stop_workers()
        cleanup()

"""One clock: hosts whose clocks disagree by more than the stale threshold still agree on who is
alive, because heartbeats are written and judged with the database server's time.

The hosts' clocks are shifted with libfaketime (Debian's `faketime` package; CI installs it): a
worker whose clock runs 70 s slow, and a `cifarq beat` whose clock runs 70 s fast. Judged by their
own clocks, the worker's heartbeats are 140 s old to the beat, well past the 60 s threshold.
"""
from __future__ import annotations

import glob
import os
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO, make_env

LIBFAKETIME = next(iter(glob.glob("/usr/lib/*/faketime/libfaketime.so.1")), None)


def shifted(seconds: int) -> dict[str, str]:
    # Only the wall clock moves: Celery's and the reaper's timers run on the monotonic one.
    return {"LD_PRELOAD": LIBFAKETIME, "FAKETIME": f"{seconds:+d}s", "DONT_FAKE_MONOTONIC": "1",
            "FAKETIME_DONT_RESET": "1"}


@pytest.fixture
def env(tmp_path, medium_cifar):
    if LIBFAKETIME is None:
        reason = "libfaketime is not installed (apt-get install faketime)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI must run the clock test, but {reason}")
        pytest.skip(reason)
    env, cleanup = make_env("postgres", tmp_path / "home", medium_cifar)
    env.vars.update(CIFARQ_STALE_AFTER_SECONDS="60", CIFARQ_REAP_INTERVAL_SECONDS="1")
    yield env
    env.stop_workers()
    cleanup()


def test_a_slow_worker_and_a_fast_reaper_never_requeue_a_live_job(env):
    plain = dict(env.vars)
    env.vars.update(shifted(-70))
    env.start_worker()
    env.vars = plain
    check = subprocess.run([sys.executable, "-c", "import datetime; print(datetime.datetime.now().timestamp())"],
                           env={**plain, **shifted(+70)}, capture_output=True, text=True, check=True)
    assert float(check.stdout) - time.time() > 60, "libfaketime did not shift the clock"

    beat_log = env.home / "beat.log"
    with open(beat_log, "w") as log:
        beat = subprocess.Popen([sys.executable, "-m", "api_cli.main", "beat"], env={**plain, **shifted(+70)},
                                cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    env.workers.append(beat)  # stopped with the workers
    job_id = env.submit_train("--epochs", "12", "--lr", "0.01", "--log-every", "100")
    env.wait_until_training(job_id)
    assert env.cli("wait", job_id, "--timeout", "300").returncode == 0
    status = env.cli_json("status", job_id)
    assert status["status"] == "succeeded" and status["attempts"] == 1, status
    assert beat.poll() is None, beat_log.read_text()
    assert "lost its worker" not in beat_log.read_text()

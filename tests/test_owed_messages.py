"""No job is left queued without a message: the database says what is owed, the broker is told
after, and the debt is cleared only once the broker took the message (shared/jobs.py).

Each fault leaves exactly the state that the production code writes before the step that fails:
a process that commits and exits before it sends (killed between commit and send), a reaper round
whose broker is down at the send, a broker wiped between rounds and a round cut short after its
first step. A real worker started afterwards must run every job, once.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import redis

from tests.conftest import REPO, make_env

FAST = {"CIFARQ_STALE_AFTER_SECONDS": "3", "CIFARQ_REAP_INTERVAL_SECONDS": "1", "CIFARQ_SEND_LEASE_SECONDS": "2"}
TRAIN = {"epochs": 1, "batch_size": 64, "lr": 0.01}


@pytest.fixture(params=["sqlite", "postgres"])
def env(request, tmp_path, small_cifar):
    env, cleanup = make_env(request.param, tmp_path / "home", small_cifar)
    env.vars.update(FAST)
    yield env
    env.stop_workers()
    cleanup()


def run_python(env, code: str, check: bool = True, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    """A separate process with the installation's settings: it exits where the code ends."""
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env={**env.vars, **(extra_env or {})},
                            cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(result.stderr)
    return result


def committed_but_never_sent(env) -> str:
    """What `cifarq submit` leaves when it is killed between its commit and its send."""
    return run_python(env, f"""
        from shared.db import session_scope
        from shared.jobs import create_job
        from shared.jobspec import TrainConfig
        from shared.models import JobKind
        with session_scope() as session:
            job = create_job(session=session, kind=JobKind.train, params=TrainConfig(**{TRAIN!r}).model_dump(),
                             queue="default")
            print(job.id)
    """).stdout.strip()


def owed_since(env, job_id: str):
    return run_python(env, f"""
        from shared.db import session_scope
        from shared.models import Job
        with session_scope() as session:
            print(session.get(Job, {job_id!r}).resend_after)
    """).stdout.strip()


def test_a_submit_killed_between_commit_and_send_still_runs(env):
    run_python(env, "from shared.reaper import reap_once; reap_once()")  # the broker's marker is set
    job_id = committed_but_never_sent(env)
    assert owed_since(env, job_id) != "None"
    worker = env.start_worker()  # its launcher's reaper pays the debt once the lease ran out
    status = env.wait_for(job_id, lambda s: s["status"] == "succeeded", timeout=180, what="succeeded")
    assert status["attempts"] == 1
    assert f"job {job_id}: message sent to queue default" in worker.log_path.read_text()
    assert owed_since(env, job_id) == "None"


def test_a_requeue_whose_send_fails_is_sent_by_a_later_round(env):
    job_id = committed_but_never_sent(env)
    # The job's worker died: running, with a heartbeat long stale.
    run_python(env, f"""
        from datetime import timedelta
        from sqlalchemy import update
        from shared.db import session_scope
        from shared.models import Job, JobStatus, utcnow
        with session_scope() as session:
            session.execute(update(Job).where(Job.id == {job_id!r}).values(
                status=JobStatus.running, attempts=1, resend_after=None, worker="gone",
                heartbeat_at=utcnow() - timedelta(hours=1)))
    """)
    # A reaper round with the broker down: the requeue is written, the send fails.
    round_ = run_python(env, """
        from shared.reaper import requeue_stale_jobs, send_owed_messages
        print(requeue_stale_jobs())
        send_owed_messages()
    """, check=False, extra_env={"CIFARQ_BROKER_URL": "redis://127.0.0.1:9/0"})
    assert round_.returncode != 0 and job_id in round_.stdout, round_.stderr
    assert env.cli_json("status", job_id)["status"] == "queued"
    assert owed_since(env, job_id) != "None"  # still owed: the next round sends it
    env.start_worker()
    status = env.wait_for(job_id, lambda s: s["status"] == "succeeded", timeout=180, what="succeeded")
    assert status["attempts"] == 2


@pytest.mark.parametrize("env", ["postgres"], indirect=True)  # the embedded broker's folder: test_broker_and_database_faults.py
def test_a_broker_wiped_then_a_round_cut_short_loses_no_message(env):
    jobs = [env.cli_json("submit", "train", "--epochs", "1", "--batch-size", "64", "--device", "cpu")["id"]
            for _ in range(2)]
    run_python(env, "from shared.reaper import reap_once; reap_once()")  # the marker is set
    broker = redis.Redis.from_url(env.vars["CIFARQ_BROKER_URL"])
    broker.flushdb()  # Redis restarted without its data: both messages and the marker are gone
    # A round that stops right after its first step, before any send.
    run_python(env, "from shared.reaper import owe_messages_if_broker_lost_them as f; print(f())")
    assert broker.exists("cifarq:broker-marker")
    assert all(owed_since(env, job_id) != "None" for job_id in jobs)
    worker = env.start_worker()
    for job_id in jobs:
        assert env.wait_for(job_id, lambda s: s["status"] == "succeeded", timeout=180,
                            what="succeeded")["attempts"] == 1
    log = worker.log_path.read_text()
    assert all(f"job {job_id}: message sent" in log for job_id in jobs)

"""`cifarq wait` and `status --follow` return when the job ends, not at their next read
(shared/job_watch.py): the end is announced at its commit, on both backends, by the worker and by
a cancel, and never for a write that was rolled back."""
from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from shared.job_watch import JobWatch
from shared.jobs import get_job, request_cancel
from tests.conftest import REPO


def _cancel(database, job_id: str, *, then_fail: bool = False) -> None:
    with database.session_scope() as session:
        request_cancel(session=session, job=get_job(session=session, job_id=job_id))
        if then_fail:
            raise RuntimeError("rolled back")


def test_a_cancel_is_announced_at_its_commit_and_not_when_rolled_back(env, database):
    from shared.settings import get_settings

    job_id = env.submit_train("--epochs", "1")
    with JobWatch(get_settings().database, job_id) as watch:
        assert watch.read()["status"] == "queued"
        assert watch.wait(0.3) is False  # nothing announced: the seconds are waited out

        with pytest.raises(RuntimeError, match="rolled back"):
            _cancel(database, job_id, then_fail=True)
        assert watch.wait(0.3) is False
        assert watch.read()["status"] == "queued"

        timer = threading.Timer(0.5, _cancel, args=(database, job_id))
        started = time.monotonic()
        timer.start()
        try:
            assert watch.wait(60) is True
        finally:
            timer.join()
        assert time.monotonic() - started < 30
        assert watch.read()["status"] == "cancelled"


def test_a_workers_end_of_a_job_is_announced(env, database):
    """The watch listens before the worker starts; its wait ends with the job, not with its 60 s."""
    from shared.settings import get_settings

    job_id = env.submit_train("--epochs", "1")
    with JobWatch(get_settings().database, job_id) as watch:
        env.start_worker()
        deadline = time.monotonic() + 120
        while watch.read()["status"] in ("queued", "running"):
            assert time.monotonic() < deadline, "the job did not end"
            assert watch.wait(60) is True, "the job's end was not announced"
        assert watch.read()["status"] == "succeeded"
    env.stop_workers()


def test_a_url_the_plain_driver_does_not_take_reads_nothing_and_sleeps(tmp_path):
    with JobWatch(f"sqlite:///{tmp_path}/absent.db", "0123456789abcdef") as watch:
        assert watch.read() is None  # the caller reads through the ORM
        started = time.monotonic()
        assert watch.wait(0.2) is False
        assert time.monotonic() - started >= 0.2


def test_a_follower_holds_one_postgresql_connection(tmp_path, small_cifar):
    """All of a follower's reads go through the connection it listens on: 50 followers take 50 of
    PostgreSQL's 100 connections, not 100 (the ORM's pool held a second one each)."""
    import psycopg

    from tests.conftest import PG_ADMIN_URL, make_env

    env, cleanup = make_env("postgres", tmp_path / "home", small_cifar)
    database = env.vars["CIFARQ_DATABASE_URL"].rsplit("/", 1)[1]
    job_id = env.submit_train("--epochs", "1")
    follower = subprocess.Popen([sys.executable, "-m", "api_cli.main", "wait", job_id, "--timeout", "60"],
                                env=env.vars, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        counts = []
        deadline = time.monotonic() + 30
        while len(counts) < 8 or counts[-8:] != [counts[-1]] * 8:  # the same count for 2 s
            assert time.monotonic() < deadline and follower.poll() is None, f"counts {counts}"
            with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
                counts.append(admin.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s",
                                            (database,)).fetchone()[0])
            time.sleep(0.25)
        assert counts[-1] == 1
    finally:
        follower.kill()
        follower.wait()
        cleanup()


def test_an_end_is_told_once(tmp_path, small_cifar):
    """A SQLite end file seen once does not end the next wait too: no loop of reads."""
    from tests.conftest import make_env

    env, _ = make_env("sqlite", tmp_path / "home", small_cifar)
    job_id = env.submit_train("--epochs", "1")
    env.cli("cancel", job_id)
    with JobWatch(f"sqlite:///{env.home / 'cifarq.db'}", job_id) as watch:
        assert watch.read()["status"] == "cancelled"
        assert watch.wait(5) is True  # the cancel's end file, written before the watch began
        started = time.monotonic()
        assert watch.wait(0.3) is False
        assert time.monotonic() - started >= 0.3

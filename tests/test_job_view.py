"""`cifarq status` reads the job without SQLAlchemy (shared/job_view.py): the same object as the
ORM's read, on both backends, for jobs in every state; and the ORM's read, with its errors,
wherever the quick read cannot answer."""
from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timezone

import pytest
from sqlalchemy import update

from shared.job_view import job_to_dict, read_job
from shared.models import Job, JobStatus
from tests.conftest import REPO, register_some_workers


def orm_read(database, job_id: str) -> dict:
    from shared.jobs import get_job

    with database.session_scope() as session:
        return job_to_dict(get_job(session=session, job_id=job_id))


def test_the_quick_read_gives_what_the_orm_gives(env, database):
    from shared.settings import get_settings

    url = get_settings().database
    queued = env.submit_train("--epochs", "3", "--lr", "0.01")
    cancelled = env.submit_train("--epochs", "1")
    env.cli("cancel", cancelled)
    running = env.submit_train("--epochs", "2", "--seed", "7")
    succeeded = env.submit_train("--epochs", "1")
    with database.session_scope() as session:
        now = datetime.now(timezone.utc)
        session.execute(update(Job).where(Job.id == running).values(
            status=JobStatus.running, started_at=now, heartbeat_at=now, worker="w@host", device="cpu", attempts=1,
            epoch=1, step=1234, steps_per_epoch=12500, loss=1.25, phase="training", compile_seconds=1.5,
            pack_id="abcd1234", packed_with=3, provenance={"cifarq": "0.1.0", "data": {"files": ["a", "b"]}}))
        session.execute(update(Job).where(Job.id == succeeded).values(
            status=JobStatus.succeeded, started_at=now, finished_at=now, attempts=2, test_accuracy=0.5432,
            cancel_requested=True, error=None))
    for job_id in (queued, cancelled, running, succeeded):
        quick = read_job(url, job_id)
        assert quick is not None and quick == {**orm_read(database, job_id), "live_consumers": quick["live_consumers"]}
        assert read_job(url, job_id[:6]) == quick  # a unique prefix
        assert (quick["live_consumers"] is None) == (job_id != queued)
    running_view = read_job(url, running)
    assert running_view["progress"]["phase"] == "training" and running_view["packed_with"] == 3
    assert running_view["provenance"]["data"]["files"] == ["a", "b"]
    assert running_view["started_at"] == orm_read(database, running)["started_at"] is not None

    # A queued job's live consumers, counted as shared.registry counts them: a fresh heartbeat and
    # the job's queue among the worker's.
    from shared.registry import live_workers

    assert read_job(url, queued)["live_consumers"] == 0
    register_some_workers(database)
    with database.session_scope() as session:
        counted = len(live_workers(session=session, queue="default"))
    assert read_job(url, queued)["live_consumers"] == counted == 1

    # Where it cannot answer, it says nothing, and the ORM's read explains.
    assert read_job(url, "ffff0000ffff0000") is None  # no such job
    assert read_job(url, "abc") is None  # too short to be meant
    assert read_job(url, "a'%_") is None  # characters no id has
    assert read_job("mysql://somewhere/db", queued) is None  # a database it does not read
    if url.startswith("sqlite"):
        assert read_job("sqlite:////nonexistent/cifarq.db", queued) is None
    else:
        assert read_job(url.replace("127.0.0.1:5432", "127.0.0.1:1"), queued) is None  # away


def test_status_never_imports_sqlalchemy(sqlite_env):
    job = sqlite_env.submit_train("--epochs", "1")
    sqlite_env.cli("cancel", job)
    probe = ("import sys\nsys.argv = ['cifarq', 'status', sys.argv[1], '--json']\nfrom api_cli.main import main\n"
             "try:\n    main()\nexcept SystemExit as exit:\n"
             "    print('SQLALCHEMY', 'sqlalchemy' in sys.modules, 'EXIT', exit.code, file=sys.stderr)\n")
    result = subprocess.run([sys.executable, "-c", probe, job], capture_output=True, text=True,
                            env=sqlite_env.vars, cwd=REPO, timeout=60)
    assert "SQLALCHEMY False EXIT 0" in result.stderr, result.stderr
    assert '"status": "cancelled"' in result.stdout
    queued = sqlite_env.submit_train("--epochs", "1")
    result = subprocess.run([sys.executable, "-c", probe, queued], capture_output=True, text=True,
                            env=sqlite_env.vars, cwd=REPO, timeout=60)
    assert "SQLALCHEMY False EXIT 0" in result.stderr and '"live_consumers": 0' in result.stdout, result.stderr
    # Following reads on one plain connection too (shared/job_watch.py).
    result = subprocess.run([sys.executable, "-c", probe.replace("'--json'", "'--json', '--follow'"), job],
                            capture_output=True, text=True, env=sqlite_env.vars, cwd=REPO, timeout=60)
    assert "SQLALCHEMY False EXIT 0" in result.stderr and '"status": "cancelled"' in result.stdout, result.stderr
    # The probe would notice: `list` reads through the ORM.
    result = subprocess.run([sys.executable, "-c", probe.replace("'status', sys.argv[1], '--json'", "'list', '--json'"),
                             job], capture_output=True, text=True, env=sqlite_env.vars, cwd=REPO, timeout=60)
    assert "SQLALCHEMY True EXIT 0" in result.stderr, result.stderr


@pytest.mark.parametrize("job_id, message", [("ffff0000ffff0000", "error: no job with id 'ffff0000ffff0000'"),
                                             ("abc", "error: job id 'abc' is too short: give at least 4 characters of it")])
def test_what_the_quick_read_leaves_gets_the_usual_errors(sqlite_env, job_id, message):
    result = sqlite_env.cli("status", job_id, check=False)
    assert result.returncode != 0 and result.stderr.strip() == message

"""Writes that meet each other or repeat change only what they may; --json is JSON even after a diverged run."""
from __future__ import annotations

import json
import math

import pytest


def test_a_cancel_that_read_the_job_queued_does_not_overwrite_a_claim(env, database):
    from shared.jobs import request_cancel
    from shared.models import Job
    from worker.records import claim_job

    job_id = env.submit_train("--epochs", "1")
    with database.session_scope() as canceller:
        job = canceller.get(Job, job_id)  # the CLI read it: queued
        assert job.status.value == "queued"
        with database.session_scope() as worker:  # ...then a worker claims it and commits
            claim = claim_job(session=worker, job_id=job_id, worker="w1", stale_after=60, max_attempts=3)
        assert claim is not None
        request_cancel(session=canceller, job=job)
    status = env.cli_json("status", job_id)
    assert status["status"] == "running" and status["worker"] == "w1" and status["finished_at"] is None
    with database.session_scope() as session:
        job = session.get(Job, job_id)
        assert job.cancel_requested and job.attempt_token == claim.token  # the worker stops on the flag


def test_an_epoch_write_retried_after_its_reply_was_lost_does_not_fail_the_job(env, database):
    # retry_while_unreachable runs the write again when the connection drops; if the COMMIT
    # reached the server first, the rows are there: the retry must see its own write.
    from sqlalchemy import func, select

    from shared.models import Checkpoint, EpochMetric
    from worker.records import claim_job, record_epoch

    job_id = env.submit_train("--epochs", "1")
    with database.session_scope() as session:
        claim = claim_job(session=session, job_id=job_id, worker="w1", stale_after=60, max_attempts=3)
    epoch = dict(epoch=1, loss=1.5, seconds=2.0, images_per_second=100.0, weights=b"weights", train_state=b"state",
                 config={"epochs": 1})
    for _ in range(2):  # the write, then its retry
        with database.session_scope() as session:
            record_epoch(session=session, claim=claim, **epoch)
    with database.session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Checkpoint).where(Checkpoint.job_id == job_id)) == 1
        assert session.scalar(select(func.count()).select_from(EpochMetric).where(EpochMetric.job_id == job_id)) == 1


@pytest.mark.parametrize("outcome", ["succeeded", "failed"])
def test_a_job_s_end_retried_after_its_reply_was_lost_is_written_once(env, database, outcome):
    # The same for the job's last write: the retry finds the end it wrote, with its own token,
    # and neither raises LeaseLost ("another attempt owns it") nor writes the results twice.
    from sqlalchemy import func, select

    from shared.models import JobStatus, Result
    from worker.records import LeaseLost, claim_job, finish, finish_succeeded

    job_id = env.submit_train("--epochs", "1")
    with database.session_scope() as session:
        claim = claim_job(session=session, job_id=job_id, worker="w1", stale_after=60, max_attempts=3)
    for _ in range(2):  # the write, then its retry
        with database.session_scope() as session:
            if outcome == "succeeded":
                finish_succeeded(session=session, claim=claim, confusion=[[3, 1], [0, 4]], classes=("a", "b"),
                                 checkpoint_id=None)
            else:
                finish(session=session, claim=claim, status=JobStatus.failed, error="boom")
    status = env.cli_json("status", job_id)
    assert status["status"] == outcome and status["attempts"] == 1
    with database.session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Result).where(Result.job_id == job_id)) == \
            (1 if outcome == "succeeded" else 0)
    # Another attempt's token still gets no say over the ended job.
    stranger = claim.__class__(job_id, "0" * 32, claim.attempt)
    with pytest.raises(LeaseLost), database.session_scope() as session:
        finish(session=session, claim=stranger, status=JobStatus.failed, error="late")


def test_a_claim_taken_up_by_its_message_s_retry_gets_the_retry_s_token(env, database):
    # The retry of a message whose claim's reply was lost takes the job up as the same attempt,
    # under its own token: the same message delivered once more (its process died) carries the
    # same earlier tokens, and must not take the job up again uncounted (the reaper decides).
    from shared.models import Job
    from worker.records import claim_job

    job_id = env.submit_train("--epochs", "1")
    claim = dict(job_id=job_id, worker="w1", stale_after=60, max_attempts=3)
    with database.session_scope() as session:
        lost = claim_job(session=session, token="a" * 32, **claim)
    with database.session_scope() as session:
        retry = claim_job(session=session, token="b" * 32, earlier_tokens=["a" * 32], **claim)
    assert (retry.token, retry.attempt) == ("b" * 32, lost.attempt) == ("b" * 32, 1)
    with database.session_scope() as session:
        assert claim_job(session=session, token="c" * 32, earlier_tokens=["a" * 32], **claim) is None
        job = session.get(Job, job_id)
        assert (job.attempt_token, job.attempts) == ("b" * 32, 1)


def test_a_delivery_takes_over_a_running_job_whose_heartbeat_is_stale(env, database):
    # A message delivered again (Redis's visibility timeout, a reaper's re-send) for a job whose
    # worker went silent: the claim compares the stored heartbeat with the database's clock.
    # SQLite hands back naive datetimes; ORM "evaluate" syncing once raised a TypeError here.
    from datetime import timedelta

    from sqlalchemy import update

    from shared.clock import database_now
    from shared.models import Job
    from worker.records import claim_job

    job_id = env.submit_train("--epochs", "1")
    with database.session_scope() as session:
        first = claim_job(session=session, job_id=job_id, worker="w1", stale_after=60, max_attempts=3)
    with database.session_scope() as session:
        assert claim_job(session=session, job_id=job_id, worker="w2", stale_after=60, max_attempts=3) is None
        session.execute(update(Job).where(Job.id == job_id)
                        .values(heartbeat_at=database_now(session) - timedelta(minutes=10)))
    with database.session_scope() as session:
        second = claim_job(session=session, job_id=job_id, worker="w2", stale_after=60, max_attempts=3)
    assert first is not None and second is not None and second.attempt == 2 and second.token != first.token
    status = env.cli_json("status", job_id)
    assert status["worker"] == "w2" and status["attempts"] == 2 and status["progress"]["phase"] == "loading data"


def test_a_queued_cancel_is_final_with_its_finish_time(env):
    job_id = env.submit_train("--epochs", "1")
    status = env.cli_json("cancel", job_id)
    assert status["status"] == "cancelled" and status["finished_at"] is not None
    again = env.cli("cancel", job_id, check=False)
    assert again.returncode == 1 and again.stderr == f"error: job {job_id} has already ended (cancelled): nothing to cancel\n"


# PostgreSQL keeps a NaN; SQLite stores it as NULL, so there is nothing to replace there.
@pytest.mark.parametrize("env", ["postgres"], indirect=True)
def test_status_json_of_a_diverged_run_is_strict_json_with_null(env, database):
    from sqlalchemy import update

    from shared.models import Job

    job_id = env.submit_train("--epochs", "1")
    with database.session_scope() as session:  # what the heartbeat writes once the loss is NaN
        session.execute(update(Job).where(Job.id == job_id).values(loss=math.nan))
    result = env.cli("status", job_id, "--json")

    def refuse(constant):
        raise AssertionError(f"{constant} is not JSON")

    status = json.loads(result.stdout, parse_constant=refuse)
    assert status["progress"]["loss"] is None
    assert "NaN or infinite" in result.stderr and "printed as null" in result.stderr


def test_logs_page_through_a_long_log_and_tail_it(env, database):
    from shared.jobs import LOG_PAGE
    from worker.records import add_log_lines

    job_id = env.submit_train("--epochs", "1")
    total = 2 * LOG_PAGE + 7  # what --log-every 1 writes in a fraction of an epoch
    with database.session_scope() as session:
        add_log_lines(session=session, job_id=job_id, lines=[f"line {i}" for i in range(total)])
    printed = env.cli("logs", job_id).stdout.splitlines()
    assert printed == [f"line {i}" for i in range(total)]
    assert env.cli("logs", job_id, "--tail", "3").stdout.splitlines() == [f"line {i}" for i in range(total - 3, total)]
    assert env.cli("logs", job_id, "--tail", "0").stdout == ""

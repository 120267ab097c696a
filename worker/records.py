"""The worker's writes to the job's records. Each write is guarded by the attempt token, so an
attempt that lost its job (presumed dead, then back) can never overwrite the live one."""
from __future__ import annotations

import hashlib
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from datetime import timedelta
from typing import Optional

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from shared.clock import as_utc, database_now, utcnow
from shared.job_watch import announce_end
from shared.jobs import delete_checkpoints, prunable_checkpoints
from shared.metrics import accuracy, correct_and_total
from shared.models import Checkpoint, ClassResult, EpochMetric, Job, JobStatus, LogLine, Result


class LeaseLost(Exception):
    """Another attempt owns the job now; this one must stop without writing anything."""


@dataclass(frozen=True)
class Claim:
    job_id: str
    token: str
    attempt: int


def claim_job(*, session: Session, job_id: str, worker: str, stale_after: float, max_attempts: int,
              token: Optional[str] = None, earlier_tokens: Collection[str] = ()) -> Optional[Claim]:
    """Take the job for this delivery, or None when there is nothing to do.

    Nothing to do: the job is unknown, final, or running under a live heartbeat (a duplicate
    delivery). A job whose attempts are used up ends failed instead of looping.

    `earlier_tokens`: the tokens that earlier deliveries of this same message claimed with
    before they lost the database. A job running under one of them is this message's own claim
    whose commit went through but whose reply was lost: it is taken up again, as the same attempt,
    under this delivery's token. (The new token matters: the message, redelivered after this
    delivery's process died, carries the same earlier tokens; it must find the job under a token
    it does not know, so that the reaper, not a take-up, decides, and the attempt is counted.)
    """
    job = session.get(Job, job_id)
    if job is None or job.status.is_final:
        return None
    token = token or uuid.uuid4().hex
    now = database_now(session)
    if job.status == JobStatus.running and job.attempt_token in earlier_tokens:
        taken_up = session.execute(
            update(Job).where(Job.id == job_id, Job.status == JobStatus.running,
                              Job.attempt_token == job.attempt_token)
            .values(attempt_token=token, worker=worker, heartbeat_at=now)
            .execution_options(synchronize_session=False)).rowcount
        return Claim(job_id, token, job.attempts) if taken_up == 1 else None
    stale = now - timedelta(seconds=stale_after)
    if job.status == JobStatus.running and job.heartbeat_at and as_utc(job.heartbeat_at) > stale:
        return None
    if job.cancel_requested:
        _finish_unowned(session, job_id, JobStatus.cancelled, "cancelled before it started")
        return None
    if job.attempts >= max_attempts:
        _finish_unowned(session, job_id, JobStatus.failed,
                        f"gave up after {job.attempts} attempts: the worker died or stopped each time")
        return None
    claimed = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.attempts == job.attempts,
               or_(Job.status == JobStatus.queued,
                   and_(Job.status == JobStatus.running, or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < stale))))
        .values(status=JobStatus.running, attempts=Job.attempts + 1, attempt_token=token, worker=worker,
                heartbeat_at=now, started_at=job.started_at or now, error=None, resend_after=None,
                phase="loading data", packed_with=None)
        # The database decides; the ORM must not re-evaluate the WHERE in Python against the loaded
        # row (SQLite gives naive datetimes, `stale` is aware: a TypeError, the takeover lost).
        .execution_options(synchronize_session=False)
    ).rowcount
    return Claim(job_id, token, job.attempts + 1) if claimed == 1 else None


def _finish_unowned(session: Session, job_id: str, status: JobStatus, error: str) -> None:
    if session.execute(update(Job).where(Job.id == job_id, Job.status.in_([JobStatus.queued, JobStatus.running]))
                       .values(status=status, error=error, finished_at=utcnow())).rowcount:
        announce_end(session, job_id)


def _owned(session: Session, claim: Claim, **values) -> None:
    done = session.execute(update(Job).where(Job.id == claim.job_id, Job.attempt_token == claim.token,
                                             Job.status == JobStatus.running).values(**values)).rowcount
    if done != 1:
        raise LeaseLost(claim.job_id)
    if "status" in values and values["status"].is_final:
        announce_end(session, claim.job_id)


def heartbeat(*, session: Session, claim: Claim, **progress) -> bool:
    """Write progress and the heartbeat; returns whether a cancel was requested."""
    _owned(session, claim, heartbeat_at=database_now(session), **progress)
    return bool(session.scalar(select(Job.cancel_requested).where(Job.id == claim.job_id)))


def record_provenance(*, session: Session, claim: Claim, provenance: dict) -> None:
    """What this attempt runs with (shared/provenance.py). It replaces an earlier attempt's: a job
    resumed on another host shows that host's versions, device and data, not those of the host
    that trained its first epochs."""
    _owned(session, claim, provenance=provenance)


def add_log_lines(*, session: Session, job_id: str, lines: list[str]) -> Optional[int]:
    """Returns the id of the newest line written (None when there were none)."""
    rows = [LogLine(job_id=job_id, line=line) for line in lines]
    session.add_all(rows)
    session.flush()  # the ids, from the INSERT's own RETURNING: no query of their own
    return max((row.id for row in rows), default=None)


def newest_log_line_id(*, session: Session, job_id: str) -> int:
    return session.scalar(select(func.max(LogLine.id)).where(LogLine.job_id == job_id)) or 0


def count_log_lines_after(*, session: Session, job_id: str, line_id: int) -> int:
    return session.scalar(select(func.count()).select_from(LogLine)
                          .where(LogLine.job_id == job_id, LogLine.id > line_id))


def record_epoch(*, session: Session, claim: Claim, epoch: int, loss: float, seconds: float,
                 images_per_second: float, weights: bytes, train_state: bytes, config: dict,
                 keep_checkpoints: int = 0) -> None:
    """The epoch's metrics and checkpoint in one transaction; then, with `keep_checkpoints` > 0,
    the older checkpoints that the retention policy lets go (shared/jobs.py)."""
    _owned(session, claim, heartbeat_at=database_now(session), epoch=epoch, loss=loss)
    written = session.scalar(select(Checkpoint.sha256).where(Checkpoint.job_id == claim.job_id,
                                                             Checkpoint.epoch == epoch))
    if written is not None and written == sha256(weights):
        return  # a retry of this very write, whose commit went through but whose reply was lost
    session.add(EpochMetric(job_id=claim.job_id, epoch=epoch, loss=loss, seconds=seconds,
                            images_per_second=images_per_second))
    session.add(Checkpoint(job_id=claim.job_id, epoch=epoch, weights=weights, sha256=sha256(weights),
                           size=len(weights), train_state=train_state, train_state_sha256=sha256(train_state),
                           config=config))
    if keep_checkpoints:
        session.flush()
        delete_checkpoints(session=session, checkpoints=prunable_checkpoints(
            session=session, job_id=claim.job_id, keep_last=keep_checkpoints))


def finish_succeeded(*, session: Session, claim: Claim, confusion: list[list[int]], classes: tuple[str, ...],
                     checkpoint_id: Optional[int], samples: Optional[list[dict]] = None) -> None:
    """Results and the final state in one transaction: recorded exactly once."""
    if _ended_by(session, claim, JobStatus.succeeded):
        return  # a retry of this very write, whose commit went through but whose reply was lost
    correct, total = correct_and_total(confusion)
    overall = accuracy(correct, total)
    _owned(session, claim, status=JobStatus.succeeded, finished_at=utcnow(), test_accuracy=overall)
    session.add(Result(job_id=claim.job_id, accuracy=overall, correct=correct, total=total,
                       confusion_matrix=confusion, checkpoint_id=checkpoint_id, samples=samples,
                       classes=[ClassResult(job_id=claim.job_id, class_index=i, class_name=name,
                                            correct=confusion[i][i], total=sum(confusion[i]))
                                for i, name in enumerate(classes)]))
    # The epoch row of the last epoch gets the test accuracy too, for curves across epochs.
    last = session.scalars(select(EpochMetric).where(EpochMetric.job_id == claim.job_id)
                           .order_by(EpochMetric.epoch.desc()).limit(1)).first()
    if last is not None:
        last.test_accuracy = overall


def finish(*, session: Session, claim: Claim, status: JobStatus, error: Optional[str]) -> None:
    if not _ended_by(session, claim, status):  # else a retry of this write, its reply lost
        _owned(session, claim, status=status, error=error, finished_at=utcnow())


def _ended_by(session: Session, claim: Claim, status: JobStatus) -> bool:
    """Whether this attempt already wrote the job's end (the ending write keeps its token)."""
    return session.execute(select(Job.id).where(Job.id == claim.job_id, Job.status == status,
                                                Job.attempt_token == claim.token)).first() is not None


def hand_back(*, session: Session, claim: Claim, reason: str, resend_in: float = 0.0) -> None:
    """Give a running job back to the queue (the worker is stopping, or lacks the job's device);
    its attempt is not counted, and a reaper sends it again in `resend_in` seconds."""
    _owned(session, claim, status=JobStatus.queued, attempt_token=None, heartbeat_at=None,
           attempts=Job.attempts - 1, error=reason,
           resend_after=database_now(session) + timedelta(seconds=resend_in))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


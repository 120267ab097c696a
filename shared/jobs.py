"""Data functions on jobs and what they own: the job rows, their checkpoints, the sweeps that
group them, and their log lines.

What jobs measured is in shared/results.py; workers and queue depths in shared/monitoring.py.
Every function takes the caller's session (keyword-only) and leaves the transaction to it:
`with session_scope() as session: get_job(session=session, job_id=...)`.
"""
from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from typing import Any, Optional

from sqlalchemy import Select, delete, select, update
from sqlalchemy.orm import Session

from shared.clock import database_now
from shared.errors import CifarqError, shown
from shared.job_view import may_be_id_prefix
from shared.job_watch import announce_end
from shared.new_job import queued_job_values
from shared.models import Checkpoint, EpochMetric, Job, JobKind, JobStatus, LogLine, Result
from shared.settings import get_settings


# -- the message a queued job is owed
#
# A queued job whose message may be missing from the broker has `resend_after` set: a reaper
# sends it at or after that time. Whoever sends it first takes the debt for a lease (one
# conditional UPDATE moves `resend_after` to the lease's end, CIFARQ_SEND_LEASE_SECONDS away),
# sends, and only then clears it, again conditionally. A sender that dies or loses the broker in
# between leaves the debt standing; a reaper pays it when the lease runs out. So a job is never
# left queued with no message, and a duplicate message is harmless: a delivery of a running or
# final job does nothing.


def _lease_end(session: Session) -> datetime:
    return database_now(session) + timedelta(seconds=get_settings().send_lease_seconds)


def create_job(*, session: Session, kind: JobKind, params: dict[str, Any], queue: str,
               sweep_id: Optional[str] = None, pack_id: Optional[str] = None) -> Job:
    """A queued job that owes its first message, leased to the submitter who sends it."""
    job = Job(**queued_job_values(kind=kind, params=params, queue=queue, sweep_id=sweep_id, pack_id=pack_id,
                                  resend_after=_lease_end(session)))
    session.add(job)
    session.flush()
    return job


def owed_messages(*, session: Session, due_by: datetime) -> list[tuple[str, str, datetime]]:
    """(job id, queue, owed since) of the queued jobs whose message is due by `due_by`."""
    return [tuple(row) for row in session.execute(
        select(Job.id, Job.queue, Job.resend_after)
        .where(Job.status == JobStatus.queued, Job.resend_after <= due_by).order_by(Job.created_at))]


def take_message_debt(*, session: Session, job_id: str, owed_since: datetime) -> Optional[datetime]:
    """Lease the sending of a job's owed message; None if another sender or a claim came first."""
    lease = _lease_end(session)
    taken = session.execute(update(Job).where(Job.id == job_id, Job.status == JobStatus.queued,
                                              Job.resend_after == owed_since)
                            .values(resend_after=lease)).rowcount
    return lease if taken else None


def message_sent(*, session: Session, job_id: str, lease: datetime) -> None:
    """The broker took the message: the debt is paid, unless the job came to owe one anew."""
    session.execute(update(Job).where(Job.id == job_id, Job.resend_after == lease).values(resend_after=None))


def owe_message(*, session: Session, job_id: str, lease: datetime) -> None:
    """Sending failed: the job owes its message again now, not only when the lease runs out."""
    session.execute(update(Job).where(Job.id == job_id, Job.resend_after == lease)
                    .values(resend_after=database_now(session)))


def owe_messages_of_all_queued(*, session: Session) -> int:
    """The broker lost its messages: every queued job owes one."""
    return session.execute(update(Job).where(Job.status == JobStatus.queued, Job.cancel_requested.is_(False))
                           .values(resend_after=database_now(session))).rowcount


def delete_job(*, session: Session, job_id: str) -> None:
    session.execute(delete(Job).where(Job.id == job_id))


def get_job(*, session: Session, job_id: str) -> Job:
    """The job with this id, or with this unique id prefix (at least 4 characters)."""
    job = session.get(Job, job_id)
    if job is not None:
        return job
    return _one_by_prefix(session=session, query=select(Job).where(Job.id.startswith(job_id)),
                          prefix=job_id, noun="job")


def _one_by_prefix(*, session: Session, query: Select, prefix: str, noun: str) -> Any:
    """The one row `query` finds for an id prefix (shared.job_view.may_be_id_prefix says which
    prefixes are looked up at all)."""
    if may_be_id_prefix(prefix):
        matches = session.scalars(query.limit(2)).all()
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise CifarqError(f"{noun} id prefix {prefix!r} is ambiguous: give more characters")
    if len(prefix) < 4:
        raise CifarqError(f"{noun} id {shown(prefix)} is too short: give at least 4 characters of it")
    raise CifarqError(f"no {noun} with id {shown(prefix)}")


def list_jobs(
    *, session: Session, status: Optional[JobStatus] = None, kind: Optional[JobKind] = None, limit: int = 20
) -> list[Job]:
    query = select(Job).order_by(Job.created_at.desc(), Job.id).limit(limit)
    if status is not None:
        query = query.where(Job.status == status)
    if kind is not None:
        query = query.where(Job.kind == kind)
    return list(session.scalars(query))


def request_cancel(*, session: Session, job: Job) -> Job:
    """A queued job is cancelled at once; a running one stops at its next safe point.

    Conditional writes, not the loaded object's state: a worker may claim the job between our
    read and our write, and then only the flag may change (the worker stops on it and writes
    the final status itself)."""
    now = database_now(session)
    cancelled = session.execute(
        update(Job).where(Job.id == job.id, Job.status == JobStatus.queued)
        .values(status=JobStatus.cancelled, cancel_requested=True, error="cancelled before it started",
                finished_at=now, resend_after=None)).rowcount
    if cancelled:
        announce_end(session, job.id)
    flagged = cancelled or session.execute(
        update(Job).where(Job.id == job.id, Job.status == JobStatus.running).values(cancel_requested=True)).rowcount
    session.refresh(job)
    if not flagged:
        raise CifarqError(f"job {job.id} has already ended ({job.status.value}): nothing to cancel")
    return job


# -- log lines: what the job printed, in order

LOG_PAGE = 5000  # lines per query: `cifarq logs` of a --log-every 1 job never holds them all


def log_lines_after(*, session: Session, job_id: str, after_id: int = 0, limit: int = LOG_PAGE) -> list[LogLine]:
    query = select(LogLine).where(LogLine.job_id == job_id, LogLine.id > after_id).order_by(LogLine.id).limit(limit)
    return list(session.scalars(query))


def last_log_line_id(*, session: Session, job_id: str, count: int) -> int:
    """The id after which a job's last `count` lines begin (0: from the start)."""
    ids = session.scalars(select(LogLine.id).where(LogLine.job_id == job_id)
                          .order_by(LogLine.id.desc()).offset(count).limit(1)).all()
    return ids[0] if ids else 0


# -- checkpoints: one per finished epoch of a train job, or the state dict uploaded with an
# evaluate job (epoch 0). The weights column is deferred (shared/models.py): listing never reads it.

def latest_checkpoint(*, session: Session, job_id: str) -> Optional[Checkpoint]:
    """The checkpoint of the job's newest epoch, or None. `job_id` is the full id."""
    return session.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id)
                           .order_by(Checkpoint.epoch.desc()).limit(1)).first()


def find_checkpoint(*, session: Session, job_id: str, epoch: Optional[int] = None) -> Checkpoint:
    """The checkpoint of a job (id or unique prefix) after `epoch` epochs, or its latest; its
    weights checked against the stored hash. An error says which is missing or corrupt."""
    job = get_job(session=session, job_id=job_id)
    if epoch is None:
        checkpoint = latest_checkpoint(session=session, job_id=job.id)
    else:
        checkpoint = session.scalars(select(Checkpoint).where(Checkpoint.job_id == job.id,
                                                              Checkpoint.epoch == epoch)).first()
    if checkpoint is None:
        which = f"for epoch {epoch}" if epoch is not None else "at all"
        raise CifarqError(f"job {job.id} has no checkpoint {which}")
    if hashlib.sha256(checkpoint.weights).hexdigest() != checkpoint.sha256:
        raise CifarqError(f"checkpoint of job {job.id} after epoch {checkpoint.epoch} is corrupt: "
                          "its sha256 does not match the stored hash")
    return checkpoint


def list_checkpoints(*, session: Session, job_id: str) -> list[Checkpoint]:
    """The checkpoints of a job (id or unique prefix), oldest epoch first, weights not read."""
    job = get_job(session=session, job_id=job_id)
    return list(session.scalars(select(Checkpoint).where(Checkpoint.job_id == job.id).order_by(Checkpoint.epoch)))


def store_uploaded_weights(*, session: Session, job_id: str, weights: bytes) -> Checkpoint:
    """The state dict sent with an evaluate job (`submit evaluate --weights`), as its epoch-0
    checkpoint: the worker reads it back like any other checkpoint."""
    checkpoint = Checkpoint(job_id=job_id, epoch=0, weights=weights, size=len(weights),
                            sha256=hashlib.sha256(weights).hexdigest(), config={"source": "upload"})
    session.add(checkpoint)
    return checkpoint


def prunable_checkpoints(*, session: Session, job_id: str, keep_last: int) -> list[Checkpoint]:
    """A job's epoch checkpoints beyond its last `keep_last`, except its best (the epoch with the
    lowest training loss) and any that a result was computed from (weights not read)."""
    epochs = session.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id, Checkpoint.epoch > 0)
                             .order_by(Checkpoint.epoch.desc())).all()
    best = session.scalar(select(EpochMetric.epoch).where(EpochMetric.job_id == job_id, EpochMetric.loss.is_not(None))
                          .order_by(EpochMetric.loss, EpochMetric.epoch.desc()).limit(1))
    older = [c for c in epochs[keep_last:] if c.epoch != best]
    used = set(session.scalars(select(Result.checkpoint_id).where(Result.checkpoint_id.in_([c.id for c in older]))))
    return [c for c in older if c.id not in used]


def delete_checkpoints(*, session: Session, checkpoints: list[Checkpoint]) -> None:
    session.execute(delete(Checkpoint).where(Checkpoint.id.in_([c.id for c in checkpoints])))


def jobs_finished_before(*, session: Session, before: datetime) -> list[Job]:
    return list(session.scalars(select(Job).where(Job.status.in_([s for s in JobStatus if s.is_final]), Job.finished_at < before)
                                .order_by(Job.finished_at)))


def checkpoint_to_dict(checkpoint: Checkpoint) -> dict[str, Any]:
    """A row of `cifarq checkpoint list --json` (field names fixed; the weights are not in it)."""
    return {"id": checkpoint.id, "job_id": checkpoint.job_id, "epoch": checkpoint.epoch, "size": checkpoint.size,
            "sha256": checkpoint.sha256, "created_at": checkpoint.created_at.isoformat()}


# -- sweeps: train jobs queued together, sharing a sweep_id

def resolve_sweep(*, session: Session, sweep_id: str) -> str:
    """The sweep with this id, or with this unique prefix (4 characters or more)."""
    if session.scalars(select(Job.id).where(Job.sweep_id == sweep_id).limit(1)).first():
        return sweep_id
    by_prefix = select(Job.sweep_id).where(Job.sweep_id.startswith(sweep_id)).distinct()
    return _one_by_prefix(session=session, query=by_prefix, prefix=sweep_id, noun="sweep")


def sweep_jobs(*, session: Session, sweep_id: str) -> list[Job]:
    """The jobs of a sweep (id or unique prefix), best test accuracy first; jobs without one yet
    come last, oldest first."""
    sweep_id = resolve_sweep(session=session, sweep_id=sweep_id)
    jobs = list(session.scalars(select(Job).where(Job.sweep_id == sweep_id).order_by(Job.created_at, Job.id)))
    return sorted(jobs, key=lambda job: (job.test_accuracy is None, -(job.test_accuracy or 0.0)))

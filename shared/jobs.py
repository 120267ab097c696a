"""Data functions on jobs and what they own: the job rows, their checkpoints, the sweeps that
group them, and their log lines.

What jobs measured is in shared/results.py; workers and queue depths in shared/monitoring.py.
Every function takes the caller's session (keyword-only) and leaves the transaction to it:
`with session_scope() as session: get_job(session=session, job_id=...)`.
"""
from __future__ import annotations

import hashlib
from typing import Any, Optional

from sqlalchemy import Select, delete, select
from sqlalchemy.orm import Session

from shared.clock import iso
from shared.errors import CifarqError
from shared.models import Checkpoint, Job, JobKind, JobStatus, LogLine


def create_job(*, session: Session, kind: JobKind, params: dict[str, Any], queue: str,
               sweep_id: Optional[str] = None) -> Job:
    job = Job(kind=kind, status=JobStatus.queued, params=params, queue=queue, sweep_id=sweep_id)
    session.add(job)
    session.flush()
    return job


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
    """The one row `query` finds for an id prefix. Only letters and digits, 4 or more: a shorter
    prefix matches too much to be meant, and LIKE's wildcards never reach the query."""
    if len(prefix) >= 4 and prefix.isalnum():
        matches = session.scalars(query.limit(2)).all()
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise CifarqError(f"{noun} id prefix {prefix!r} is ambiguous: give more characters")
    raise CifarqError(f"no {noun} with id {prefix!r}")


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
    """A queued job is cancelled at once; a running one stops at its next safe point."""
    if job.status.is_final:
        raise CifarqError(f"job {job.id} is already {job.status.value}")
    job.cancel_requested = True
    if job.status == JobStatus.queued:
        job.status = JobStatus.cancelled
        job.error = "cancelled before it started"
    return job


def job_to_dict(job: Job) -> dict[str, Any]:
    """The status object that scripts rely on (field names fixed)."""
    return {
        "id": job.id,
        "kind": job.kind.value,
        "status": job.status.value,
        "params": job.params,
        "queue": job.queue,
        "device": job.device,
        "worker": job.worker,
        "attempts": job.attempts,
        "error": job.error,
        "progress": {
            "epoch": job.epoch,
            "epochs": job.params.get("epochs"),
            "step": job.step,
            "steps_per_epoch": job.steps_per_epoch,
            "loss": job.loss,
        },
        "metrics": {"test_accuracy": job.test_accuracy},
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
        "heartbeat_at": iso(job.heartbeat_at),
        "sweep_id": job.sweep_id,
    }


# -- log lines: what the job printed, in order

def log_lines_after(*, session: Session, job_id: str, after_id: int = 0) -> list[LogLine]:
    query = select(LogLine).where(LogLine.job_id == job_id, LogLine.id > after_id).order_by(LogLine.id)
    return list(session.scalars(query))


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

"""Data functions on jobs and their records, for the CLI (and the tests). Callers own sessions."""
from __future__ import annotations

import hashlib
from typing import Any, Optional

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from shared.clock import iso
from shared.errors import CifarqError
from shared.models import Checkpoint, Job, JobKind, JobStatus, LogLine, Result


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
    if len(job_id) >= 4 and job_id.isalnum():
        matches = session.scalars(select(Job).where(Job.id.startswith(job_id)).limit(2)).all()
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise CifarqError(f"job id prefix {job_id!r} is ambiguous: give more characters")
    raise CifarqError(f"no job with id {job_id!r}")


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


def find_checkpoint(*, session: Session, job_id: str, epoch: Optional[int] = None) -> Checkpoint:
    """The checkpoint of a job after `epoch` epochs, or its latest."""
    job = get_job(session=session, job_id=job_id)
    query = select(Checkpoint).where(Checkpoint.job_id == job.id)
    if epoch is not None:
        query = query.where(Checkpoint.epoch == epoch)
    checkpoint = session.scalars(query.order_by(Checkpoint.epoch.desc()).limit(1)).first()
    if checkpoint is None:
        which = f"for epoch {epoch}" if epoch is not None else "at all"
        raise CifarqError(f"job {job.id} has no checkpoint {which}")
    if hashlib.sha256(checkpoint.weights).hexdigest() != checkpoint.sha256:
        raise CifarqError(f"checkpoint of job {job.id} after epoch {checkpoint.epoch} is corrupt: "
                          "its sha256 does not match the stored hash")
    return checkpoint


def get_result(*, session: Session, job: Job) -> Result:
    result = session.get(Result, job.id)
    if result is None:
        raise CifarqError(f"job {job.id} has no results yet (status: {job.status.value})")
    return result


def log_lines_after(*, session: Session, job_id: str, after_id: int = 0) -> list[LogLine]:
    query = select(LogLine).where(LogLine.job_id == job_id, LogLine.id > after_id).order_by(LogLine.id)
    return list(session.scalars(query))


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


def result_to_dict(result: Result) -> dict[str, Any]:
    return {
        "job_id": result.job_id,
        "accuracy": result.accuracy,
        "correct": result.correct,
        "total": result.total,
        "per_class": [
            {
                "class": row.class_name,
                "correct": row.correct,
                "total": row.total,
                "accuracy": row.correct / row.total if row.total else 0.0,
            }
            for row in result.classes
        ],
        "confusion_matrix": result.confusion_matrix,
        "checkpoint_id": result.checkpoint_id,
        "samples": result.samples or [],
    }

"""Data functions on what jobs measured: the test-set result (overall, per class, confusion
matrix) and the metrics of each epoch. Callers own sessions."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Optional

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.errors import CifarqError
from shared.job_view import job_to_dict
from shared.jobs import get_job
from shared.metrics import accuracy
from shared.models import EpochMetric, Job, JobKind, JobStatus, LogLine, Result


def get_result(*, session: Session, job: Job) -> Result:
    result = session.get(Result, job.id)
    if result is None:
        raise CifarqError(f"job {job.id} has no results yet (status: {job.status.value})")
    return result


def result_to_dict(result: Result) -> dict[str, Any]:
    """The results object that scripts rely on (`cifarq results --json`; field names fixed)."""
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
                "accuracy": accuracy(row.correct, row.total),
            }
            for row in result.classes
        ],
        "confusion_matrix": result.confusion_matrix,
        "checkpoint_id": result.checkpoint_id,
        "samples": result.samples or [],
    }


def job_summary(*, session: Session, job: Job) -> dict[str, Any]:
    """A job as `cifarq compare` sets it beside others: params, what ran (provenance), and its
    accuracy overall and per class (None and {} while it has no result)."""
    result = session.get(Result, job.id)
    rows = result_to_dict(result)["per_class"] if result else []
    return {"id": job.id, "kind": job.kind.value, "status": job.status.value, "sweep_id": job.sweep_id,
            "params": job.params, "provenance": job.provenance, "accuracy": result.accuracy if result else None,
            "per_class": {row["class"]: row["accuracy"] for row in rows}}


def last_epoch_speed(*, session: Session, job_id: str) -> Optional[float]:
    """images/s of the job's last finished epoch, or None before its first one ends."""
    return session.scalars(select(EpochMetric.images_per_second).where(EpochMetric.job_id == job_id)
                           .order_by(EpochMetric.epoch.desc()).limit(1)).first()


@dataclass
class ReportData:
    """Everything `cifarq report` draws that comes from the database."""

    job: dict[str, Any]  # job_to_dict
    result: dict[str, Any]  # result_to_dict
    epochs: list[dict[str, Any]]  # epoch, loss, test_accuracy, seconds, images_per_second
    # Test accuracy after k epochs, from the job itself (its last epoch) and from evaluate jobs of
    # its checkpoints: {epoch: accuracy}
    accuracy_by_epoch: dict[int, float] = field(default_factory=dict)
    # The running loss the job logged every --log-every mini-batches: (epochs done, loss)
    logged_loss: list[tuple[float, float]] = field(default_factory=list)


def load_report_data(*, session: Session, job_id: str) -> ReportData:
    job = get_job(session=session, job_id=job_id)
    result = result_to_dict(get_result(session=session, job=job))
    metrics = session.scalars(select(EpochMetric).where(EpochMetric.job_id == job.id).order_by(EpochMetric.epoch))
    epochs = [{"epoch": m.epoch, "loss": m.loss, "test_accuracy": m.test_accuracy, "seconds": m.seconds,
               "images_per_second": m.images_per_second} for m in metrics]
    by_epoch = {m["epoch"]: m["test_accuracy"] for m in epochs if m["test_accuracy"] is not None}
    evaluations = session.execute(
        select(Job.params, Result.accuracy).join(Result, Result.job_id == Job.id)
        .where(Job.kind == JobKind.evaluate, Job.status == JobStatus.succeeded,
               Job.params["source_job"].as_string() == job.id)).all()
    for params, value in evaluations:
        if params.get("source_epoch") is not None:
            by_epoch.setdefault(int(params["source_epoch"]), value)
    return ReportData(job=job_to_dict(job), result=result, epochs=epochs,
                      accuracy_by_epoch=dict(sorted(by_epoch.items())),
                      logged_loss=logged_losses(session=session, job_id=job.id, steps_per_epoch=job.steps_per_epoch))


# The loop's log line (worker/loop.py report_step): the tutorial's `[1,  2000] loss: 2.200`.
LOSS_LINE = re.compile(r"\[(\d+), *(\d+)\] loss: (\S+)")


def logged_losses(*, session: Session, job_id: str, steps_per_epoch: Optional[int]) -> list[tuple[float, float]]:
    """(epochs done, running loss) of each loss line the job logged, in order. A step logged twice
    (a resumed attempt went over it again) counts once, with its last value."""
    if not steps_per_epoch:
        return []
    points: dict[float, float] = {}
    lines = session.scalars(select(LogLine.line).where(LogLine.job_id == job_id, LogLine.line.startswith("["))
                            .order_by(LogLine.id))
    for line in lines:
        match = LOSS_LINE.fullmatch(line)
        if match:
            epoch, step, loss = int(match[1]), int(match[2]), float(match[3])
            points[epoch - 1 + step / steps_per_epoch] = loss
    return sorted(points.items())


def recorded_epoch_seconds(*, session: Session, recipe: str, device: str) -> Optional[tuple[str, float]]:
    """(job id, median seconds per epoch) of the latest succeeded train job of `recipe` that ran
    on `device` ("cpu"), or None when there is none: what an estimate of a new job can go by."""
    recent = session.scalars(select(Job).where(Job.kind == JobKind.train, Job.status == JobStatus.succeeded,
                                               Job.device == device)
                             .order_by(Job.finished_at.desc()).limit(50))
    job = next((job for job in recent if job.params.get("recipe") == recipe), None)
    if job is None:
        return None
    seconds = sorted(session.scalars(select(EpochMetric.seconds).where(EpochMetric.job_id == job.id)))
    return (job.id, seconds[len(seconds) // 2]) if seconds else None

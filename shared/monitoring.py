"""Data functions for `cifarq workers` and `cifarq queue`: what runs where, and what waits.

Celery cannot list the messages waiting in a broker (celery#4535), but every queued job is a
row, so a queue's depth is a query. Workers are the rows their launchers keep fresh
(shared/registry.py, which also says when a worker counts as alive). Callers own sessions.
"""
from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.clock import as_utc, database_now, iso
from shared.models import Job, JobStatus
from shared.registry import all_workers, live_workers


def worker_overview(*, session: Session) -> list[dict[str, Any]]:
    """Every worker row, live or not, with the job it runs. `stale` is the opposite of
    shared.registry's live_workers, the test `cifarq run` uses to find a worker too."""
    now = database_now(session)
    live = {record.name for record in live_workers(session=session)}
    running = {job.worker: job for job in session.scalars(select(Job).where(Job.status == JobStatus.running))}
    rows = []
    for record in all_workers(session=session):
        job = running.get(record.name)
        rows.append({
            "name": record.name, "host": record.host, "queues": record.queues.split(","), "device": record.device,
            "gpu_index": record.gpu_index, "gpu_name": record.gpu_name, "pid": record.pid,
            "started_at": iso(record.started_at), "heartbeat_at": iso(record.heartbeat_at),
            "heartbeat_age_seconds": round((now - as_utc(record.heartbeat_at)).total_seconds(), 1),
            "stale": record.name not in live,
            "job": None if job is None else {"id": job.id, "epoch": job.epoch, "epochs": job.params.get("epochs"),
                                             "step": job.step, "steps_per_epoch": job.steps_per_epoch},
        })
    return rows


def queue_overview(*, session: Session) -> list[dict[str, Any]]:
    """Per queue, by name: jobs queued, the oldest of them, and jobs running."""
    now = database_now(session)
    counts = session.execute(select(Job.queue, Job.status, func.count()).where(
        Job.status.in_([JobStatus.queued, JobStatus.running])).group_by(Job.queue, Job.status)).all()
    rows: dict[str, dict[str, Any]] = {}
    for queue, status, count in counts:
        row = rows.setdefault(queue, {"queue": queue, "queued": 0, "running": 0, "oldest": None})
        row[status.value] = count
    for queue, row in rows.items():
        if row["queued"]:
            oldest = session.scalars(select(Job).where(Job.queue == queue, Job.status == JobStatus.queued)
                                     .order_by(Job.created_at, Job.id).limit(1)).first()
            row["oldest"] = {"id": oldest.id, "created_at": iso(oldest.created_at),
                             "waiting_seconds": round((now - as_utc(oldest.created_at)).total_seconds(), 1)}
    return [rows[name] for name in sorted(rows)]

"""`cifarq workers` and `cifarq queue`: what runs where, and what waits, from the database.

Celery cannot list the messages waiting in a broker (celery#4535), but every queued job is a
row, so the queue's depth is a query. Workers are the rows their launchers keep fresh.
"""
from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Optional

import typer

from api_cli.options import JsonOption
from api_cli.output import print_json, print_table, say
from shared.clock import as_utc, iso, utcnow


def _age(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s ago"
    if seconds < 7200:
        return f"{seconds // 60}m ago"
    return f"{seconds // 3600}h ago"


def worker_rows(*, session, stale_after: float, now: Optional[datetime] = None) -> list[dict[str, Any]]:
    """Every worker row, with its current job and whether its heartbeat is stale."""
    from sqlalchemy import select

    from shared.models import Job, JobStatus, WorkerRecord

    now = now or utcnow()
    running = {job.worker: job for job in session.scalars(select(Job).where(Job.status == JobStatus.running))}
    rows = []
    for record in session.scalars(select(WorkerRecord).order_by(WorkerRecord.host, WorkerRecord.name)):
        age = (now - as_utc(record.heartbeat_at)).total_seconds()
        job = running.get(record.name)
        rows.append({
            "name": record.name, "host": record.host, "queues": record.queues.split(","), "device": record.device,
            "gpu_index": record.gpu_index, "gpu_name": record.gpu_name, "pid": record.pid,
            "started_at": iso(record.started_at), "heartbeat_at": iso(record.heartbeat_at),
            "heartbeat_age_seconds": round(age, 1), "stale": age > stale_after,
            "job": None if job is None else {"id": job.id, "epoch": job.epoch, "epochs": job.params.get("epochs"),
                                             "step": job.step, "steps_per_epoch": job.steps_per_epoch},
        })
    return rows


def workers(
    all_: Annotated[bool, typer.Option("--all", help="Also show workers whose heartbeat is stale (likely dead).")] = False,
    json_output: JsonOption = False,
) -> None:
    """Live workers: host, device, GPU, the job each is running, and its last heartbeat.

    A worker whose heartbeat is older than CIFARQ_STALE_AFTER_SECONDS (60 s) is stale: hidden
    unless --all, and marked so.

    Example: cifarq workers --all --json
    """
    from shared.db import session_scope
    from shared.settings import get_settings

    with session_scope() as session:
        rows = worker_rows(session=session, stale_after=get_settings().stale_after_seconds)
    shown = rows if all_ else [row for row in rows if not row["stale"]]
    if json_output:
        print_json(shown)
    else:
        print_table(["name", "host", "device", "gpu", "job", "heartbeat"], [
            [row["name"], row["host"], row["device"],
             "-" if row["gpu_name"] is None else f"{row['gpu_index']}: {row['gpu_name']}",
             "-" if row["job"] is None else f"{row['job']['id']} (epoch {row['job']['epoch']}/{row['job']['epochs']})",
             _age(row["heartbeat_age_seconds"]) + (" STALE" if row["stale"] else "")] for row in shown])
    hidden = len(rows) - len(shown)
    if hidden:
        say(f"{hidden} stale worker(s) hidden; --all shows them")
    elif not rows and not json_output:
        say("no worker has reported: start one with `cifarq worker`")


def queue_rows(*, session, now: Optional[datetime] = None) -> list[dict[str, Any]]:
    """Per queue: jobs queued, the oldest of them, and jobs running."""
    from sqlalchemy import func, select

    from shared.models import Job, JobStatus

    now = now or utcnow()
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


def queue(json_output: JsonOption = False) -> None:
    """Jobs waiting per queue (counts and the oldest), and how many run, from the database.

    Example: cifarq queue --json
    """
    from shared.db import session_scope

    with session_scope() as session:
        rows = queue_rows(session=session)
    if json_output:
        print_json(rows)
        return
    print_table(["queue", "queued", "running", "oldest queued"], [
        [row["queue"], row["queued"], row["running"],
         "-" if row["oldest"] is None else f"{row['oldest']['id']} ({_age(row['oldest']['waiting_seconds'])})"]
        for row in rows])
    if not rows:
        say("nothing queued or running")


def register(app: typer.Typer) -> None:
    app.command()(workers)
    app.command()(queue)

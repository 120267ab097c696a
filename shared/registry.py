"""The `workers` table: each launcher's row, for `cifarq workers` and for `cifarq run`.

A launcher registers at start, refreshes heartbeat_at every few seconds and deletes its row
on a clean exit. A row whose heartbeat is old belongs to a worker killed hard: the reaper
re-queues its job as soon as the job's own heartbeat is that old too (shared/reaper.py), well
before the job's stale threshold. The launcher is a small process of its own, so a job whose
process pauses (a long compile holding the GIL, a debugger) keeps its worker's row fresh.
Callers own their sessions (shared.db.session_scope).
"""
from __future__ import annotations

from datetime import timedelta
from typing import Optional

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from shared.clock import database_now
from shared.models import WorkerRecord
from shared.states import ALIVE_SECONDS


def register_worker(*, session: Session, name: str, host: str, queues: list[str], device: str,
                    gpu_index: Optional[int], gpu_name: Optional[str], pid: int) -> WorkerRecord:
    now = database_now(session)
    record = WorkerRecord(name=name, host=host, queues=",".join(queues), device=device, gpu_index=gpu_index,
                          gpu_name=gpu_name, pid=pid, started_at=now, heartbeat_at=now)
    # merge: a row left by a worker killed hard under the same name is taken over.
    return session.merge(record)


def touch_worker(*, session: Session, name: str) -> bool:
    """Refresh the heartbeat; False when the row is gone (someone pruned it)."""
    return bool(session.execute(
        update(WorkerRecord).where(WorkerRecord.name == name).values(heartbeat_at=database_now(session))).rowcount)


def remove_worker(*, session: Session, name: str) -> None:
    session.execute(delete(WorkerRecord).where(WorkerRecord.name == name))


def all_workers(*, session: Session) -> list[WorkerRecord]:
    """Every row, live or not, by host and name (`cifarq workers --all`)."""
    return list(session.scalars(select(WorkerRecord).order_by(WorkerRecord.host, WorkerRecord.name)))


def live_workers(*, session: Session, queue: Optional[str] = None) -> list[WorkerRecord]:
    """Workers whose heartbeat is recent, optionally only those that consume `queue`."""
    since = database_now(session) - timedelta(seconds=ALIVE_SECONDS)
    rows = session.scalars(select(WorkerRecord).where(WorkerRecord.heartbeat_at >= since)
                           .order_by(WorkerRecord.name)).all()
    return [row for row in rows if queue is None or queue in row.queues.split(",")]

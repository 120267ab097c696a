"""Finds running jobs whose worker died and puts them back on the queue.

A running job whose heartbeat went stale is set back to queued (in one conditional UPDATE, so
that several reapers never re-send one job twice) and its message is sent again; the delivery
that claims it resumes from its last checkpoint, and claim_job counts attempts up to the limit.
"""
from __future__ import annotations

import logging
import time
from datetime import timedelta

from sqlalchemy import select, update

from shared.celery_app import send_job
from shared.db import session_scope
from shared.models import Job, JobStatus, utcnow
from shared.settings import get_settings

log = logging.getLogger("cifarq.reaper")


def requeue_stale_jobs() -> list[str]:
    settings = get_settings()
    stale = utcnow() - timedelta(seconds=settings.stale_after_seconds)
    requeued = []
    with session_scope() as session:
        candidates = session.execute(
            select(Job.id, Job.queue, Job.worker)
            .where(Job.status == JobStatus.running, Job.heartbeat_at < stale)
        ).all()
        for job_id, queue, worker in candidates:
            taken = session.execute(
                update(Job)
                .where(Job.id == job_id, Job.status == JobStatus.running, Job.heartbeat_at < stale)
                .values(status=JobStatus.queued, attempt_token=None,
                        error=f"worker {worker} stopped sending heartbeats; re-queued")
            ).rowcount
            if taken:
                requeued.append((job_id, queue))
    for job_id, queue in requeued:
        log.warning("job %s lost its worker: re-sent to queue %s", job_id, queue)
        send_job(job_id, queue)
    return [job_id for job_id, _ in requeued]


def run_forever(interval: float = 15.0) -> None:
    while True:
        try:
            requeue_stale_jobs()
        except Exception as exc:  # database or broker away: try again next round
            log.warning("reaper round failed: %s", exc)
        time.sleep(interval)

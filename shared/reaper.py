"""Puts back on the queue the jobs that lost their worker or their message.

- A running job whose heartbeat went stale lost its worker: it is set back to queued (one
  conditional UPDATE, so several reapers never re-send one job twice) and sent again; the
  delivery that claims it resumes from its last checkpoint, and claim_job counts attempts.
- A job that a stopping worker handed back is sent again from here, by another worker's
  launcher (or `cifarq beat`), never by the stopping worker itself.
- A broker that lost its data (Redis restarted without persistence, a wiped folder) lost the
  messages of queued jobs. The reaper keeps a marker in the broker; when the marker is gone,
  every queued job in the database is sent again. A duplicate message is harmless: a delivery
  of a job that is running or final does nothing.

Every worker's launcher runs this, and so does `cifarq beat`; running it twice is harmless.
"""
from __future__ import annotations

import logging
import threading
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select, update

from shared.celery_app import send_job
from shared.db import session_scope
from shared.liveness import mark_alive
from shared.models import Job, JobStatus, utcnow
from shared.settings import get_settings

log = logging.getLogger("cifarq.reaper")
MARKER = "cifarq:broker-marker"


def requeue_stale_jobs() -> list[str]:
    settings = get_settings()
    stale = utcnow() - timedelta(seconds=settings.stale_after_seconds)
    requeued = []
    with session_scope() as session:
        candidates = session.execute(
            select(Job.id, Job.queue, Job.worker).where(Job.status == JobStatus.running, Job.heartbeat_at < stale)
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


def resend_handed_back_jobs() -> list[str]:
    """Queued jobs that a stopping worker handed back: their message is sent from here."""
    now = utcnow()
    sent = []
    with session_scope() as session:
        due = session.execute(select(Job.id, Job.queue).where(Job.status == JobStatus.queued,
                                                              Job.resend_after <= now)).all()
        for job_id, queue in due:
            if session.execute(update(Job).where(Job.id == job_id, Job.status == JobStatus.queued,
                                                 Job.resend_after <= now).values(resend_after=None)).rowcount:
                sent.append((job_id, queue))
    for job_id, queue in sent:
        log.info("job %s was handed back: re-sent to queue %s", job_id, queue)
        send_job(job_id, queue)
    return [job_id for job_id, _ in sent]


def _broker_marker_present() -> bool | None:
    """Whether the broker still holds our marker (setting it if not); None if it can't tell."""
    settings = get_settings()
    if settings.broker_is_embedded:
        marker = settings.broker_dir / "marker"
        present = marker.exists()
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
        return present
    if settings.broker.startswith(("redis://", "rediss://", "unix://")):
        import redis

        client = redis.Redis.from_url(settings.broker, socket_timeout=5, socket_connect_timeout=5)
        try:
            return not client.set(MARKER, "1", nx=True)  # set only when missing
        finally:
            client.close()
    return None  # e.g. RabbitMQ with durable queues keeps its messages across restarts


def resend_if_broker_lost_messages() -> list[str]:
    if _broker_marker_present() is not False:
        return []
    with session_scope() as session:
        queued = session.execute(
            select(Job.id, Job.queue).where(Job.status == JobStatus.queued, Job.cancel_requested.is_(False))
            .order_by(Job.created_at)
        ).all()
    if queued:
        log.warning("the broker holds no marker (restarted without its data?): re-sending %d queued jobs", len(queued))
    for job_id, queue in queued:
        send_job(job_id, queue)
    return [job_id for job_id, _ in queued]


def reap_once() -> None:
    resend_if_broker_lost_messages()
    resend_handed_back_jobs()
    requeue_stale_jobs()


def run_forever(interval: float | None = None, stop: threading.Event | None = None,
                liveness_file: Path | None = None) -> None:
    """Reap every `interval` seconds (CIFARQ_REAP_INTERVAL_SECONDS by default) until `stop`;
    after each round that worked, mark `liveness_file` alive for three intervals."""
    interval = interval or get_settings().reap_interval_seconds
    stop = stop or threading.Event()
    while not stop.is_set():
        try:
            reap_once()
            mark_alive(liveness_file, valid_for=3 * interval)
        except Exception as exc:  # database or broker away: try again next round
            log.warning("reaper round failed: %s", exc)
        stop.wait(interval)

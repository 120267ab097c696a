"""Puts back on the queue the jobs that lost their worker or their message.

Every change of state is written to the database first, as a message the job is owed
(shared/jobs.py: `resend_after`); the message is sent after, and the debt cleared only once the
broker took it. A round cut short anywhere (the broker down during a send, the process killed,
the database away) leaves the debt standing for the next round, so no job is left queued without
a message. A duplicate message is harmless: a delivery of a job that is running or final does
nothing.

- A running job whose heartbeat went stale lost its worker: it is set back to queued, owing its
  message (one conditional UPDATE, so several reapers never requeue one job twice); the delivery
  that claims it resumes from its last checkpoint, and claim_job counts attempts.
- A job that a stopping worker handed back owes its message too, sent from here by another
  worker's launcher (or `cifarq beat`), never by the stopping worker itself.
- A broker that lost its data (Redis restarted without persistence, a wiped folder) lost the
  messages of queued jobs. The reaper keeps a marker in the broker; when the marker is gone,
  every queued job is marked as owing its message, and only then is the marker set again.

Every worker's launcher runs this, and so does `cifarq beat`; running it twice is harmless.
"""
from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta
from pathlib import Path

from sqlalchemy import and_, or_, select, update

from shared import registry
from shared.celery_app import send_job
from shared.clock import database_now
from shared.db import session_scope
from shared.jobs import message_sent, owe_message, owe_messages_of_all_queued, owed_messages, take_message_debt
from shared.liveness import mark_alive
from shared.models import Job, JobStatus, WorkerRecord
from shared.settings import get_settings

log = logging.getLogger("cifarq.reaper")
MARKER = "cifarq:broker-marker"


def requeue_stale_jobs() -> list[str]:
    settings = get_settings()
    requeued = []
    with session_scope() as session:
        now = database_now(session)
        # Lost: silent past the stale threshold, or silent past a worker's own liveness window
        # while that worker's launcher is gone too (killed hard: its row went stale or away).
        silent = now - timedelta(seconds=registry.ALIVE_SECONDS)
        live_workers = select(WorkerRecord.name).where(WorkerRecord.heartbeat_at >= silent)
        lost = or_(Job.heartbeat_at < now - timedelta(seconds=settings.stale_after_seconds),
                   and_(Job.heartbeat_at < silent, or_(Job.worker.is_(None), Job.worker.not_in(live_workers))))
        candidates = session.execute(select(Job.id, Job.worker).where(Job.status == JobStatus.running, lost)).all()
        for job_id, worker in candidates:
            if session.execute(
                update(Job)
                .where(Job.id == job_id, Job.status == JobStatus.running, lost)
                .values(status=JobStatus.queued, attempt_token=None, resend_after=now,
                        error=f"worker {worker} stopped sending heartbeats; re-queued")
            ).rowcount:
                requeued.append(job_id)
    for job_id in requeued:
        log.warning("job %s lost its worker: re-queued", job_id)
    return requeued


def send_owed_messages() -> list[str]:
    """Send the message of every queued job that owes one; raises if the broker is away."""
    with session_scope() as session:
        due = owed_messages(session=session, due_by=database_now(session))
    sent = []
    for job_id, queue, owed_since in due:
        with session_scope() as session:
            lease = take_message_debt(session=session, job_id=job_id, owed_since=owed_since)
        if lease is None:  # another reaper is sending it, or a worker claimed the job
            continue
        try:
            send_job(job_id, queue)
        except Exception:
            with session_scope() as session:  # owed again now: the next round tries at once
                owe_message(session=session, job_id=job_id, lease=lease)
            raise
        with session_scope() as session:
            message_sent(session=session, job_id=job_id, lease=lease)
        log.warning("job %s: message sent to queue %s", job_id, queue)
        sent.append(job_id)
    return sent


def _redis_client():
    import redis

    return redis.Redis.from_url(get_settings().broker, socket_timeout=5, socket_connect_timeout=5)


def _broker_marker_present() -> bool | None:
    """Whether the broker still holds our marker; None if it cannot tell."""
    settings = get_settings()
    if settings.broker_is_embedded:
        return (settings.broker_dir / "marker").exists()
    if settings.broker.startswith(("redis://", "rediss://", "unix://")):
        client = _redis_client()
        try:
            return bool(client.exists(MARKER))
        finally:
            client.close()
    return None  # e.g. RabbitMQ with durable queues keeps its messages across restarts


def _set_broker_marker() -> None:
    settings = get_settings()
    if settings.broker_is_embedded:
        marker = settings.broker_dir / "marker"
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
    else:
        client = _redis_client()
        try:
            client.set(MARKER, "1")
        finally:
            client.close()


def owe_messages_if_broker_lost_them() -> int:
    """Marks every queued job as owing its message when the broker's marker is gone; the marker
    is set again only after that is committed, so a round cut short repeats it."""
    if _broker_marker_present() is not False:
        return 0
    with session_scope() as session:
        owed = owe_messages_of_all_queued(session=session)
    if owed:
        log.warning("the broker holds no marker (restarted without its data?): re-sending %d queued jobs", owed)
    _set_broker_marker()
    return owed


def reap_once(*, judge_heartbeats: bool = True) -> None:
    owe_messages_if_broker_lost_them()
    if judge_heartbeats:
        requeue_stale_jobs()
    send_owed_messages()


def run_forever(interval: float | None = None, stop: threading.Event | None = None,
                liveness_file: Path | None = None) -> None:
    """Reap every `interval` seconds (CIFARQ_REAP_INTERVAL_SECONDS by default) until `stop`;
    after each round that worked, mark `liveness_file` alive for three intervals."""
    settings = get_settings()
    interval = interval or settings.reap_interval_seconds
    stop = stop or threading.Event()
    judge_from = 0.0
    while not stop.is_set():
        try:
            reap_once(judge_heartbeats=time.monotonic() >= judge_from)
            mark_alive(liveness_file, valid_for=3 * interval)
        except Exception as exc:  # database or broker away: try again next round
            log.warning("reaper round failed: %s", exc)
            # While we could not reach the database, neither could the workers: every heartbeat
            # looks old when it comes back. Give each worker one full stale interval to write
            # again before judging anyone.
            judge_from = time.monotonic() + settings.stale_after_seconds
        stop.wait(interval)

"""The Celery app both sides share. The CLI sends tasks by name; it never imports worker code.

Celery is only the transport: the database holds every job's state, so there is no result
backend (docs/design.md).
"""
from __future__ import annotations

import functools

from celery import Celery
from kombu import Queue

from shared.settings import get_settings
from shared.states import CPU_QUEUE, DEFAULT_QUEUE, GPU_QUEUE, RUN_JOB_TASK, RUN_PACK_TASK


def make_app() -> Celery:
    settings = get_settings()
    app = Celery("cifarq", broker=settings.broker, set_as_current=True)
    transport_options: dict = {"visibility_timeout": settings.visibility_timeout_seconds}
    if settings.broker_is_embedded:
        # The serverless broker: messages are files under CIFARQ_HOME/broker.
        folders = {
            "data_folder_in": settings.broker_dir / "messages",
            "data_folder_out": settings.broker_dir / "messages",
            "control_folder": settings.broker_dir / "control",
            "processed_folder": settings.broker_dir / "processed",
        }
        for folder in folders.values():
            folder.mkdir(parents=True, exist_ok=True)
        transport_options.update({key: str(value) for key, value in folders.items()})
        transport_options["polling_interval"] = 0.2
    transport_options.update(settings.broker_transport_options)
    app.conf.update(
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=5,
        task_default_queue=DEFAULT_QUEUE,
        task_queues=[Queue(DEFAULT_QUEUE), Queue(GPU_QUEUE), Queue(CPU_QUEUE)],
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        # At-least-once delivery; every task is idempotent (docs/design.md, "A job's life").
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # A fresh child per job gets a fresh CUDA context and gives all memory back. `cifarq
        # worker` passes its own value on the command line (100 on a CPU worker, launcher.py);
        # this one holds for a `celery worker` started by hand.
        worker_max_tasks_per_child=1,
        worker_concurrency=1,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        # No beat_schedule: the reaper is not a Celery task (it would wait in the queue behind
        # training jobs, exactly when it is needed). `cifarq beat` and every worker's launcher
        # run it in-process (shared/reaper.py).
    )
    return app


@functools.cache
def get_app() -> Celery:
    return make_app()


_SEND_RETRY = {"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 1}


def send_job(job_id: str, queue: str) -> None:
    """Publish one job message. Fails fast (no endless retry) when the broker is down. (`cifarq
    submit train` first tries shared/broker_push.py, which needs no Celery import.)"""
    get_app().send_task(RUN_JOB_TASK, args=[job_id], queue=queue, retry=True, retry_policy=_SEND_RETRY)


def send_pack(job_ids: list[str], queue: str) -> None:
    """Publish one message for the points of a pack: one worker takes them all. Each point is a
    job of its own all the same; a reaper re-sends an owed point on its own (run_job)."""
    get_app().send_task(RUN_PACK_TASK, args=[job_ids], queue=queue, retry=True, retry_policy=_SEND_RETRY)


def __getattr__(name: str):
    # `celery -A shared.celery_app:app worker|beat|flower` finds the app without an import-time side effect.
    if name == "app":
        return get_app()
    raise AttributeError(name)

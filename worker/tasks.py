"""Celery tasks: thin wrappers that hand a job id to plain functions (worker/run.py).

Pool: prefork, one child at a time, a fresh child per job (worker_max_tasks_per_child=1).
The parent never touches CUDA (pytorch#40403: CUDA cannot be re-initialised in a forked
child), stays free to answer heartbeats, remote control and time limits, and each job gets a
fresh CUDA context whose memory goes back to the driver when the child exits.
"""
from __future__ import annotations

# Imported once in the parent so that each fresh child starts in milliseconds. Importing torch
# does not initialise CUDA; only a CUDA call does, and those happen in the child only.
import torch  # noqa: F401
from celery.signals import worker_process_init

from shared.celery_app import RUN_JOB_TASK, get_app
from shared.db import reset_after_fork

app = get_app()


@worker_process_init.connect
def _fresh_child(**_kwargs) -> None:
    # Pooled database connections must not cross a fork.
    reset_after_fork()


@app.task(name=RUN_JOB_TASK, bind=True)
def run_job(self, job_id: str) -> None:
    from worker.run import execute_job

    execute_job(job_id, worker_name=self.request.hostname)

"""Celery tasks: thin wrappers that hand a job id to plain functions (worker/run.py).

Pool: prefork, one child at a time; on a GPU worker a fresh child per job (the launcher's
--max-tasks-per-child, worker/launcher.py), so each job gets a fresh CUDA context whose memory
goes back to the driver when the child exits. The parent never touches CUDA (pytorch#40403:
CUDA cannot be re-initialised in a forked child) and stays free to answer heartbeats, remote
control and time limits.
"""
from __future__ import annotations

import importlib
import logging
import os
import signal
from collections.abc import Sequence

import psutil
# Imported once in the parent so that each fresh child starts in milliseconds. Importing torch
# does not initialise CUDA; only a CUDA call does, and those happen in the child only.
import torch  # noqa: F401
from celery.signals import worker_process_init, worker_shutting_down

from shared.celery_app import RUN_JOB_TASK, RUN_PACK_TASK, get_app
from shared.db import reset_after_fork
from shared.errors import first_line
from shared.settings import get_settings
from worker import run, run_pack

app = get_app()


def _warm_up() -> None:
    """One tiny CPU step in the parent, so that every forked child inherits what the first step
    imports lazily (torch.optim pulls in torch._dynamo: about 2 s, for every job otherwise).
    One thread only: no OpenMP team may exist in the parent when it forks.

    CPU workers only. The first backward() starts autograd's per-device threads, and counting
    the CUDA devices initialises the CUDA driver: every forked child then fails its first CUDA
    call with "CUDA error: initialization error" (seen on an H200). A GPU worker's jobs pay the
    2 s instead; each runs in a fresh process anyway."""
    from worker.model import Net

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = Net()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
        torch.nn.functional.cross_entropy(model(torch.zeros(2, 3, 32, 32)), torch.zeros(2, dtype=torch.long)).backward()
        optimizer.step()
    finally:
        torch.set_num_threads(threads)
    try:  # about a second, once per worker rather than once per job
        importlib.import_module("torch.utils.tensorboard")
    except ImportError:
        pass


def _read_data_ahead() -> None:
    """The data set read into memory in the parent, once: every child it forks starts with it
    (worker/data.py), where each job read it again before (~0.5 s with its digest). A data set
    that is not in place yet, or does not read, is left to the first job, which says why."""
    from worker.data import read_ahead

    data_dir = get_settings().data
    try:
        read_ahead(data_dir)
    except Exception as exc:  # noqa: BLE001 - a job reading it fails with the same error, on its record
        logging.getLogger("cifarq.data").warning("the data set was not read ahead: %s", first_line(exc, 300))


if os.environ.get("CIFARQ_WORKER_DEVICE") == "cpu":  # set by `cifarq worker` (worker/launcher.py)
    _warm_up()
if os.environ.get("CIFARQ_WORKER_DEVICE"):  # a worker's parent; not a process that merely imports this
    _read_data_ahead()

# The launcher sends this to the job's process when the worker is asked to stop (SIGTERM,
# `docker compose stop`): the job checkpoints at its next safe point and goes back to the queue.
HAND_BACK_SIGNAL = signal.SIGUSR2


@worker_process_init.connect
def _fresh_child(**_kwargs) -> None:
    reset_after_fork()  # pooled database connections must not cross a fork


@worker_shutting_down.connect
def _hand_back_running_job(**_kwargs) -> None:
    # Runs in the parent on SIGTERM (warm shutdown), which alone would wait for the job to end.
    for child in psutil.Process().children():
        try:
            child.send_signal(HAND_BACK_SIGNAL)
        except psutil.NoSuchProcess:  # it ended in between
            pass


# NotClaimed: the database was unreachable before the job was claimed. The message is sent
# again after 1, 2, 4 ... 60 s, for as long as it takes, rather than acked with the job left
# queued and no message; the retry carries the claim tokens tried so far, so that a claim whose
# commit went through but whose reply was lost is taken up again (run.NotClaimed). (Losing the
# database after the claim needs nothing here: the heartbeat goes stale and the reaper re-queues
# the job, which resumes from its checkpoint.)
def _retry_unclaimed(task, exc: run.NotClaimed, jobs) -> None:
    """`jobs`: the task's own argument (a job id, or a pack's ids), passed again as it came."""
    raise task.retry(exc=exc, args=[jobs], kwargs={"earlier_claims": list(exc.tokens)},
                     countdown=min(2 ** task.request.retries, 60))


# max_retries=None here: for as long as it takes (retry(max_retries=None) means the default, 3).
@app.task(name=RUN_JOB_TASK, bind=True, max_retries=None)
def run_job(self, job_id: str, earlier_claims: Sequence[str] = ()) -> None:
    # Set here, not in worker_process_init: billiard resets the child's signal handlers after
    # that hook runs, and its own handler for this signal would end the process mid-job.
    signal.signal(HAND_BACK_SIGNAL, lambda _signum, _frame: run.SHUTDOWN.set())
    try:
        run.execute_job(job_id, worker_name=self.request.hostname, earlier_claims=earlier_claims)
    except run.NotClaimed as exc:
        _retry_unclaimed(self, exc, job_id)


@app.task(name=RUN_PACK_TASK, bind=True, max_retries=None)
def run_pack_of_jobs(self, job_ids: list[str], earlier_claims: Sequence[str] = ()) -> None:
    """The points of a packed sweep, trained together (worker/run_pack.py). A retry after
    NotClaimed takes up the points that its earlier deliveries claimed, and claims the rest."""
    signal.signal(HAND_BACK_SIGNAL, lambda _signum, _frame: run.SHUTDOWN.set())
    try:
        run_pack.execute_pack(job_ids, worker_name=self.request.hostname, earlier_claims=earlier_claims)
    except run.NotClaimed as exc:
        _retry_unclaimed(self, exc, job_ids)

"""`cifarq worker`: starts one Celery worker process for this machine's device and watches it.

No torch here: the launcher only decides queues and the GPU (a lease, worker/gpu_lease.py),
starts `celery worker` as a child with that one GPU visible, forwards stop signals to it,
keeps the worker's row in the `workers` table fresh, and re-queues jobs of dead workers.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from typing import Optional

from shared.states import CPU_QUEUE, DEFAULT_QUEUE, GPU_QUEUE, HEARTBEAT_SECONDS
from shared.db import session_scope
from shared.errors import CifarqError
from shared.liveness import mark_alive
from shared.settings import get_settings
from shared import registry
from worker.gpu_lease import Gpu, Lease, list_gpus, take_lease
from worker.compile_cache import can_compile

log = logging.getLogger("cifarq.launcher")


def _die_with_parent() -> None:
    """In the Celery child: get SIGTERM if the launcher dies, so no worker outlives it (Linux)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


# A GPU job gets a fresh process, so a fresh CUDA context whose memory all goes back to the
# driver. On the CPU that buys nothing and costs about a second per job (billiard waits 1 s
# before a finished child exits), so CPU workers recycle their process every 100 jobs only.
# The container's healthcheck file stays valid this long after the last registry write: a
# database away for a moment does not make Docker restart the worker (docs/deployment.md).
LIVENESS_SECONDS = 30.0
TASKS_PER_CHILD = {"cuda": 1, "cpu": 100}


def celery_command(*, queues: list[str], name: str, loglevel: str, device: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "worker.tasks:app", "worker",
            "--pool", "prefork", "--concurrency", "1", "--max-tasks-per-child", str(TASKS_PER_CHILD[device]),
            "--queues", ",".join(queues), "--hostname", name, "--loglevel", loglevel,
            "--without-gossip", "--without-mingle"]


def _lease_gpu(gpu: str, holder: str) -> Optional[Lease]:
    """auto: a free GPU of this host, or None on a host without GPUs; N: GPU N, leased too,
    so that `auto` workers beside it leave it alone."""
    gpus = list_gpus()
    if gpu != "auto":
        gpus = [g for g in gpus if g.index == int(gpu)]
        if not gpus:
            raise CifarqError(f"--gpu {gpu}: this host has no GPU with index {gpu} (nvidia-smi -L lists them)")
    if not gpus:
        return None
    settings = get_settings()
    return take_lease(gpus, broker_url=settings.broker_url, home=settings.home, holder=holder)


def _heartbeat(stop: threading.Event, record: dict) -> None:
    while not stop.wait(HEARTBEAT_SECONDS):
        try:
            with session_scope() as session:
                if not registry.touch_worker(session=session, name=record["name"]):
                    registry.register_worker(session=session, **record)
            mark_alive(get_settings().liveness_file, valid_for=LIVENESS_SECONDS)
        except Exception as exc:  # database away for a moment: try again next beat
            log.warning("worker heartbeat failed: %s", exc)


def _start_warm_up(env: dict) -> Optional[subprocess.Popen]:
    """Compile the default CPU step ahead of time while the worker waits for work and time it
    (worker/warm_up.py): jobs then load the compiled step where that pays."""
    settings = get_settings()
    if settings.cpu_warm_up == "never" or settings.cpu_compile == "never" or not can_compile():
        return None
    return subprocess.Popen([sys.executable, "-m", "worker.warm_up"], env=env, preexec_fn=_die_with_parent)


def run_worker(*, queues: Optional[list[str]], gpu: str, loglevel: str = "INFO",
               reap_every: Optional[float] = None) -> int:
    host, pid = socket.gethostname(), os.getpid()
    child: Optional[subprocess.Popen] = None

    def forward(signum, _frame):
        if child is None:  # still setting up: unwind, so that the lease and the row go away
            raise SystemExit(128 + signum)
        stop.set()  # a stopping worker re-sends nothing: its own consumer could take it back
        child.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        signal.signal(signum, forward)

    env = dict(os.environ)
    lease: Optional[Lease] = None
    stop = threading.Event()
    record: Optional[dict] = None
    warming: Optional[subprocess.Popen] = None
    try:
        if gpu == "none":
            env["CUDA_VISIBLE_DEVICES"] = ""  # hides every GPU from the jobs
        else:
            lease = _lease_gpu(gpu, holder=f"cifarq worker pid {pid} on {host}")
        leased: Optional[Gpu] = lease.gpu if lease else None
        if leased:
            # By UUID: CUDA's own device order may differ from nvidia-smi's indices.
            env["CUDA_VISIBLE_DEVICES"] = leased.uuid
            sys.stderr.write(f"leased GPU {leased.index} ({leased.name}, {leased.uuid})\n")
        queues = queues or [DEFAULT_QUEUE, GPU_QUEUE if leased else CPU_QUEUE]
        name = f"cifarq-gpu{leased.index}-{pid}@{host}" if leased else f"cifarq-cpu-{pid}@{host}"
        record = dict(name=name, host=host, queues=queues, device="cuda" if leased else "cpu",
                      gpu_index=leased.index if leased else None, gpu_name=leased.name if leased else None, pid=pid)
        with session_scope() as session:
            registry.register_worker(session=session, **record)
        mark_alive(get_settings().liveness_file, valid_for=LIVENESS_SECONDS)
        # The child first: preexec_fn is only safe while this process has no other thread.
        env["CIFARQ_WORKER_DEVICE"] = record["device"]  # worker/tasks.py: no CUDA-touching warm-up on a GPU worker
        # inductor's cache, and the compiled steps' packages in it, beside the worker's other state
        # (CPU jobs compile their step, worker/aot_step.py): later jobs, and the next start where
        # CIFARQ_HOME is a volume, skip the first compile.
        env.setdefault("TORCHINDUCTOR_CACHE_DIR", str(get_settings().home / "cache" / "inductor"))
        if leased:  # torch.cuda.is_available() through NVML in the parent: no CUDA driver state to fork
            env["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"
        child = subprocess.Popen(celery_command(queues=queues, name=name, loglevel=loglevel,
                                                device=record["device"]), env=env,
                                 preexec_fn=_die_with_parent)
        warming = _start_warm_up(env) if record["device"] == "cpu" else None
        threading.Thread(target=_heartbeat, args=(stop, record), daemon=True, name="heartbeat").start()
        if reap_every != 0:  # None: CIFARQ_REAP_INTERVAL_SECONDS
            from shared.reaper import run_forever

            threading.Thread(target=run_forever, args=(reap_every, stop), daemon=True, name="reaper").start()
        while True:
            try:
                return child.wait()
            except InterruptedError:
                continue
    finally:
        stop.set()
        if warming is not None and warming.poll() is None:
            warming.terminate()  # a compile cut short leaves no mark: the next start compiles again
        if record is not None:
            try:
                with session_scope() as session:
                    registry.remove_worker(session=session, name=record["name"])
            except Exception as exc:  # the row goes stale instead; `cifarq workers` shows its age
                log.warning("could not remove worker %s from the registry: %s", record["name"], exc)
        if lease is not None:
            lease.release()

"""`cifarq worker`: starts one Celery worker process for this machine's device and watches it.

No torch here: the launcher only decides queues and the GPU, starts `celery worker` as a child,
forwards stop signals to it, and re-queues jobs of dead workers while it waits.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from typing import Optional

from shared.celery_app import CPU_QUEUE, DEFAULT_QUEUE, GPU_QUEUE


def count_cuda_devices() -> int:
    """Asked in a throwaway process: the launcher and Celery's parent must never init CUDA."""
    probe = "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)"
    try:
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
        return int(out.stdout.strip() or 0)
    except (subprocess.SubprocessError, ValueError):
        return 0


def _die_with_parent() -> None:
    """In the Celery child: get SIGTERM if the launcher dies, so no worker outlives it (Linux)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def celery_command(*, queues: list[str], name: str, loglevel: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "worker.tasks:app", "worker",
            "--pool", "prefork", "--concurrency", "1", "--max-tasks-per-child", "1",
            "--queues", ",".join(queues), "--hostname", name, "--loglevel", loglevel,
            "--without-gossip", "--without-mingle"]


def run_worker(*, queues: Optional[list[str]], gpu: Optional[str], loglevel: str = "INFO",
               reap_every: float = 15.0) -> int:
    env = dict(os.environ)
    if gpu not in (None, "auto"):
        # "none" hides every GPU; an index pins this worker to that GPU.
        env["CUDA_VISIBLE_DEVICES"] = "" if gpu == "none" else gpu
    has_cuda = gpu != "none" and count_cuda_devices() > 0
    if not queues:
        queues = [DEFAULT_QUEUE, GPU_QUEUE if has_cuda else CPU_QUEUE]
    name = f"cifarq-{'gpu' if has_cuda else 'cpu'}-{os.getpid()}@{socket.gethostname()}"
    child = subprocess.Popen(celery_command(queues=queues, name=name, loglevel=loglevel), env=env,
                             preexec_fn=_die_with_parent)

    def forward(signum, _frame):
        child.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        signal.signal(signum, forward)
    if reap_every > 0:
        from worker.reaper import run_forever

        threading.Thread(target=run_forever, args=(reap_every,), daemon=True, name="reaper").start()
    while True:
        try:
            return child.wait()
        except InterruptedError:
            continue

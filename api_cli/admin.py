"""Running cifarq itself: migrations, workers, the reaper."""
from __future__ import annotations

import importlib.util
from typing import Annotated, Optional

import typer

from api_cli.output import say
from shared.errors import CifarqError


def upgrade() -> None:
    """Apply Alembic migrations up to the newest (safe to run again).

    Example: cifarq db upgrade
    """
    from shared.db import upgrade as run_upgrade
    from shared.settings import get_settings, redact_url

    revision = run_upgrade()
    say(f"database {redact_url(get_settings().database)} is at revision {revision}")


def _need_worker_extra() -> None:
    if importlib.util.find_spec("torch") is None:
        raise CifarqError("this is a client install without torch: pip install 'cifarq[worker]' to run a worker")


def worker(
    queues: Annotated[Optional[str], typer.Option(
        help="Comma-separated queues. Default: default plus gpu (with CUDA) or cpu (without).")] = None,
    gpu: Annotated[str, typer.Option(help=(
        "auto (lease one free GPU of this host; the CPU where there is none), none (CPU only), "
        "or a GPU index (pinned, leased too). The environment variable CIFARQ_GPU overrides it."))] = "auto",
    loglevel: Annotated[str, typer.Option(help="Celery log level.")] = "INFO",
) -> None:
    """Run a Celery worker for this machine's device: one GPU, one job at a time (on a GPU, a fresh process per job).

    With several GPUs, run one worker per GPU: each leases a free one (docs/deployment.md).

    Example: cifarq worker --gpu 0
    """
    import os

    _need_worker_extra()
    # The environment wins over the flag: compose's command says --gpu auto, and one host's
    # .env can still pin its workers.
    gpu = os.environ.get("CIFARQ_GPU") or gpu
    if gpu not in ("auto", "none") and not gpu.isdigit():
        raise CifarqError(f"invalid --gpu {gpu!r}: must be auto, none or a GPU index")
    from worker.launcher import run_worker

    raise typer.Exit(run_worker(queues=[q for q in (queues or "").split(",") if q] or None, gpu=gpu, loglevel=loglevel))


def beat(
    interval: Annotated[Optional[float], typer.Option(
        help="Seconds between rounds. Default: CIFARQ_REAP_INTERVAL_SECONDS (5).", min=1)] = None,
) -> None:
    """Periodic work: re-queue jobs whose worker stopped sending heartbeats.

    Example: cifarq beat
    """
    import logging

    from shared.reaper import run_forever
    from shared.settings import get_settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    run_forever(interval, liveness_file=get_settings().liveness_file)

"""One delivery of a pack: the points of a sweep that share a shape, claimed one by one and
trained as one batched model (worker/recipes/packed.py), each still its own job.

Each point has its own claim, attempt token, heartbeat, log, checkpoints and results, written by
the same functions as a lone job's (worker/run.py): a point cancelled, diverged or whose lease
is lost ends alone (`conclude`), and the others go on. A point this delivery cannot claim (done,
cancelled, running elsewhere) is left out. If the worker dies, each point is re-sent alone by a
reaper and resumes from its own last checkpoint; a point's checkpoint is the one its standalone
job would have written, so it can go on packed or alone.
"""
from __future__ import annotations

import logging
import socket
from collections.abc import Sequence
from contextlib import ExitStack
from typing import Optional

from shared.cifar_files import ALL_FILES
from shared.jobspec import TrainConfig, pack_shape
from shared.db import session_scope
from shared.models import Job, JobKind, JobStatus
from shared.settings import get_settings
from worker.loop import cpu_threads
from worker.recipes.packed import PackPoint, train_packed
from worker.run import (SHUTDOWN, Claimed, JobRun, provenance_of, record_evaluation, resume_of, safe_path_part,
                        start_on_device, write_provenance, claim, conclude, run_claimed)
from worker.tensorboard import TensorBoardLog

log = logging.getLogger("cifarq.worker")


def execute_pack(job_ids: list[str], *, worker_name: Optional[str] = None,
                 earlier_claims: Sequence[str] = ()) -> dict[str, Optional[JobStatus]]:
    """Run one delivery of a pack. Returns each point's final status as written (None: nothing
    written by this delivery: not claimed, handed back, or owned by another attempt).
    `earlier_claims`: NotClaimed.tokens of this message's earlier deliveries: the points those
    claimed before the database went away are taken up again, not left to go stale."""
    worker_name = worker_name or socket.gethostname()
    SHUTDOWN.clear()
    claimed: list[Claimed] = []
    tokens = list(earlier_claims)
    for job_id in job_ids:
        taken = claim(job_id, worker_name, tokens)
        if taken is not None:
            claimed.append(taken)
    outcome: dict[str, Optional[JobStatus]] = {job_id: None for job_id in job_ids}
    shapes = {pack_shape(TrainConfig(**c.params)) if c.kind == JobKind.train else None for c in claimed}
    if len(claimed) < 2 or len(shapes) != 1 or None in shapes:
        # Nothing to pack (one point left to run, or points a submitter should not have packed):
        # each runs as a lone job, one after the other, in this delivery.
        for taken in claimed:
            outcome[taken.claim.job_id] = run_claimed(taken)
        return outcome
    outcome.update(_run_pack(claimed))
    return outcome


def _run_pack(claimed: list[Claimed]) -> dict[str, Optional[JobStatus]]:
    settings = get_settings()
    runs = [JobRun(c.claim, settings.heartbeat_seconds) for c in claimed]
    by_run = dict(zip(runs, claimed))
    ended: dict[str, Optional[JobStatus]] = {}
    pack_id = _pack_id_of(claimed[0])

    def leave(run: JobRun, exc: Optional[BaseException]) -> None:
        if run.claim.job_id not in ended:
            ended[run.claim.job_id] = conclude(run, by_run[run], exc)

    with ExitStack() as stack:
        for run in runs:
            stack.enter_context(run)
        points: list[PackPoint] = []
        device = None
        provenance = None
        for run, taken in zip(runs, claimed):
            config = TrainConfig(**taken.params)
            try:
                device = start_on_device(run, config.device, packed_with=len(claimed))
                if provenance is None:  # one digest of the data files for the whole pack
                    provenance = provenance_of(run, device, settings.data, ALL_FILES)
                write_provenance(run, provenance)
                run.config = config.model_dump()
                run.log(f"training packed with {len(claimed)} points (pack {pack_id})")
                run.tensorboard = stack.enter_context(TensorBoardLog(safe_path_part(run.claim.job_id),
                                                                     settings.artifacts))
                points.append(PackPoint(config, run, resume_of(run)))
            except Exception as exc:  # noqa: BLE001 - this point's end (conclude writes it); the others go on
                run.stop_heartbeat()
                leave(run, exc)
        if not points:
            return ended

        def on_leave(point: PackPoint, exc: BaseException) -> None:
            point.hooks.stop_heartbeat()
            leave(point.hooks, exc)

        try:
            # One thread at small batches, as a lone job (worker/train.py): two threads gained at
            # most 1.3x on a quiet 2-core host, and on a busy one each op waited for the descheduled
            # thread: 2,000 steps of an 8-point pack took 139 s instead of 14 (docs/benchmarks.md).
            batch_size = points[0].config.batch_size
            with cpu_threads(1 if device.type == "cpu" and batch_size <= 64 else None):
                finished = train_packed(points, data_dir=settings.data, device=device, on_leave=on_leave,
                                        cpu_compile=settings.cpu_compile)
        except Exception as exc:  # noqa: BLE001 - the pack as a whole failed (data, device): every point says so
            for point in points:
                on_leave(point, exc)
            return ended
        for point in finished:
            run = point.hooks
            try:
                accuracy = record_evaluation(run, point.model, device, settings.data)
                run.tensorboard.accuracy(point.config.epochs, accuracy)
            except Exception as exc:  # noqa: BLE001
                on_leave(point, exc)
                continue
            run.stop_heartbeat()
            leave(run, None)
    return ended


def _pack_id_of(taken: Claimed) -> str:
    with session_scope() as session:
        return session.get(Job, taken.claim.job_id).pack_id or "unnamed"

"""One delivery of one job, as a plain function: claim it, run it, record how it ended.

Celery calls `execute_job` (worker/tasks.py); tests may call it directly. Every outcome of a
claimed job is written here, in one place: succeeded, failed with a message, cancelled.
"""
from __future__ import annotations

import logging
import re
import socket
import threading
import traceback
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, TypeVar

import torch
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session

from shared.cifar_files import ALL_FILES, META_FILE, TEST_FILES
from shared.db import retry_while_unreachable, session_scope
from shared.errors import CifarqError, DatabaseUnreachable, first_line
from shared.jobs import latest_checkpoint
from shared.jobspec import EvaluateConfig, TrainConfig
from shared.metrics import accuracy
from shared.models import Job, JobKind, JobStatus
from shared.provenance import collect
from shared.settings import get_settings
from worker import records
from worker.checkpoints import load_resume, load_weights_for_evaluation
from worker.data import ensure_cifar10, load_split
from worker.devices import DeviceUnavailable, describe, resolve_device
from worker.evaluate import evaluate
from worker.tensorboard import TensorBoardLog
from worker.loop import Resume, StopRequested
from worker.train import train

log = logging.getLogger("cifarq.worker")
T = TypeVar("T")

# Set when this worker is asked to stop (worker/tasks.py): the running job hands itself back.
SHUTDOWN = threading.Event()


class NotClaimed(Exception):
    """The database could not be reached to claim a job; the message must be retried.

    `tokens`: every claim token this message's deliveries have tried so far. A claim whose commit
    went through but whose reply was lost left one of them on its job; the retry, given them,
    takes that job up again (records.claim_job) instead of finding it "running elsewhere" and
    leaving it to go stale. A pack's earlier points, claimed before the database went, likewise.
    """

    def __init__(self, job_id: str, tokens: tuple[str, ...]):
        super().__init__(job_id, tokens)  # both in args: the exception pickles (Celery's retry)
        self.job_id, self.tokens = job_id, tokens


class JobRun:
    """The hooks the training loop reports to, plus a heartbeat thread that writes them.

    The loop only sets attributes (cheap, in the hot path); the thread writes progress and the
    heartbeat every few seconds and reads the cancel flag, so the loop never waits on the database.
    """

    def __init__(self, claim: records.Claim, heartbeat_seconds: float):
        self.claim = claim
        self._interval = heartbeat_seconds
        self._progress: dict = {}
        self._lines: list[str] = []  # logged, not yet known to be in the database
        # Log lines are written exactly once although a commit's reply can be lost with its
        # connection (written, yet reported failed): see write_with_lines.
        self._write_lock = threading.Lock()  # one writer at a time: the heartbeat's, the loop's at a checkpoint
        self._newest_line_id: Optional[int] = None  # the job's newest log line when this attempt last knew
        self._maybe_written = False  # a write failed: its commit may have gone through all the same
        self._lock = threading.Lock()
        self._stop = threading.Event()  # cancel requested, or the lease is lost
        self.lease_lost = False
        self._done = threading.Event()
        self._wake = threading.Event()  # a heartbeat now rather than at the next interval
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{claim.job_id}", daemon=True)
        self.config: dict = {}  # the job's config, saved with every checkpoint
        self.device_name = "the device"
        self.tensorboard: Optional[TensorBoardLog] = None  # train jobs only

    def __enter__(self) -> "JobRun":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_heartbeat()

    def stop_heartbeat(self) -> None:
        """Before the job's last write: a heartbeat landing after it would find the job finished
        and take that for a lost lease (the job recorded succeeded, this attempt saying otherwise)."""
        self._done.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join()

    # -- hooks called by the loop --
    def progress(self, *, epoch: int, step: int, steps_per_epoch: int, loss: Optional[float] = None) -> None:
        self._progress.update(epoch=epoch, step=step, steps_per_epoch=steps_per_epoch)
        if loss is not None:
            self._progress["loss"] = loss

    def phase(self, name: str) -> None:
        self._progress["phase"] = name
        self._wake.set()  # a phase can last minutes: shown now, not at the next heartbeat

    def compiled(self, seconds: float) -> None:
        self._progress["compile_seconds"] = seconds

    def log(self, line: str) -> None:
        log.info("[%s] %s", self.claim.job_id, line)
        with self._lock:
            self._lines.append(line)

    def should_stop(self) -> bool:
        return self._stop.is_set() or SHUTDOWN.is_set()

    def epoch_done(self, *, epoch: int, loss: float, seconds: float, images_per_second: float, lr: float,
                   weights: bytes, train_state: bytes) -> None:
        def write() -> None:
            self.flush()
            with session_scope() as session:
                records.record_epoch(session=session, claim=self.claim, epoch=epoch, loss=loss, seconds=seconds,
                                     images_per_second=images_per_second, weights=weights,
                                     train_state=train_state, config=self.config,
                                     keep_checkpoints=get_settings().keep_checkpoints)

        # The safe point: training waits here (with backoff) while the database is away.
        retry_while_unreachable(write, what=f"checkpoint of job {self.claim.job_id}")
        if self.tensorboard is not None:
            self.tensorboard.epoch(epoch, loss=loss, lr=lr, images_per_second=images_per_second)

    # -- the heartbeat --
    def write_with_lines(self, write: Callable[[Session], T]) -> T:
        """One transaction: `write` (a heartbeat, the job's end), then the lines logged so far.

        A line leaves memory only once its commit is known to have gone through. When a write
        fails, it may have failed after its commit (the reply lost with the connection), so the
        next write first counts this job's lines newer than the newest it knew of: those are the
        head of the lines it holds (this attempt is their only writer: a lost lease writes
        nothing), and they are not written twice.
        """
        with self._write_lock:
            with self._lock:
                lines = list(self._lines)
            try:
                with session_scope() as session:
                    result = write(session)  # first: a lost lease rolls the whole transaction back
                    if self._newest_line_id is None:  # read before this attempt writes a line
                        self._newest_line_id = records.newest_log_line_id(session=session, job_id=self.claim.job_id)
                    already = 0
                    if self._maybe_written:
                        already = records.count_log_lines_after(session=session, job_id=self.claim.job_id,
                                                                line_id=self._newest_line_id)
                    if lines:
                        newest = records.add_log_lines(session=session, job_id=self.claim.job_id,
                                                       lines=lines[already:]) \
                            or records.newest_log_line_id(session=session, job_id=self.claim.job_id)  # all in already
            except BaseException:
                self._maybe_written = True
                raise
            with self._lock:
                del self._lines[:len(lines)]
            if lines:
                self._newest_line_id = newest
            self._maybe_written = False
            return result

    def flush(self) -> None:
        # The step count is read once the connection is open, next to the heartbeat's time stamp
        # (the database's clock): a count read before a slow connect would lag its stamp.
        cancel = self.write_with_lines(
            lambda session: records.heartbeat(session=session, claim=self.claim, **dict(self._progress)))
        if cancel:
            self._stop.set()

    def _beat(self) -> None:
        while not self._done.is_set():
            self._wake.wait(self._interval)
            self._wake.clear()
            if self._done.is_set():
                return
            try:
                self.flush()
            except records.LeaseLost:
                self.lease_lost = True
                self._stop.set()
                return
            except Exception as exc:  # the database may be away for a while: keep training, retry
                log.warning("heartbeat of job %s failed, will retry: %s", self.claim.job_id, exc)

# A job handed back for want of its device is sent again after this long (shared/reaper.py).
WRONG_DEVICE_RESEND_SECONDS = 30.0


@dataclass(frozen=True)
class Claimed:
    """A delivery's claim on a job, with what the job is."""

    claim: records.Claim
    kind: JobKind
    params: dict
    queue: str


def claim(job_id: str, worker_name: str, tokens: list[str]) -> Optional[Claimed]:
    """Take the job for this delivery; None when there is nothing to do (records.claim_job).
    `tokens`: the claim tokens of this message so far, earlier deliveries' first; this claim's
    own is added. Raises NotClaimed when the database cannot be reached: the message must be
    retried, with the tokens."""
    settings = get_settings()
    token = uuid.uuid4().hex
    earlier = tuple(tokens)
    tokens.append(token)  # before the commit: its reply may be lost, the claim made all the same
    try:
        with session_scope() as session:
            taken = records.claim_job(session=session, job_id=job_id, worker=worker_name, token=token,
                                      earlier_tokens=earlier, stale_after=settings.stale_after_seconds,
                                      max_attempts=settings.max_attempts)
            job = session.get(Job, job_id) if taken else None
            claimed = Claimed(taken, job.kind, job.params, job.queue) if job else None
    except (OperationalError, InterfaceError, DatabaseUnreachable) as exc:  # the last: a new process's first connect
        raise NotClaimed(job_id, tuple(tokens)) from exc
    if claimed is None:
        log.info("job %s: nothing to do for this delivery", job_id)
    return claimed


def execute_job(job_id: str, *, worker_name: Optional[str] = None,
                earlier_claims: Sequence[str] = ()) -> Optional[JobStatus]:
    """Run one delivery of a job. Returns the final status it wrote, or None if it did nothing.
    `earlier_claims`: NotClaimed.tokens of this message's earlier deliveries."""
    SHUTDOWN.clear()  # a CPU worker's process runs many jobs; a stop request is for the job at hand
    claimed = claim(job_id, worker_name or socket.gethostname(), list(earlier_claims))
    return run_claimed(claimed) if claimed is not None else None


def run_claimed(claimed: Claimed) -> Optional[JobStatus]:
    """Run a job this delivery claimed, and write how it ended."""
    settings = get_settings()
    run = JobRun(claimed.claim, settings.heartbeat_seconds)
    try:
        with run:
            if claimed.kind == JobKind.train:
                _run_train(run, TrainConfig(**claimed.params), settings.data)
            else:
                _run_evaluate(run, EvaluateConfig(**claimed.params), settings.data)
    except Exception as exc:  # noqa: BLE001 - every way a job ends is written by conclude()
        return conclude(run, claimed, exc)
    return conclude(run, claimed, None)


def conclude(run: JobRun, claimed: Claimed, exc: Optional[BaseException]) -> Optional[JobStatus]:
    """Write how the attempt ended, given the exception that ended it (None: it succeeded, its
    results already written). Returns the final status written, or None when the job was handed
    back or another attempt owns it."""
    job_id = run.claim.job_id
    status, error = JobStatus.failed, None
    if exc is None:
        status = JobStatus.succeeded
    elif isinstance(exc, StopRequested):
        status, error = JobStatus.cancelled, f"cancelled: {exc}"
    elif isinstance(exc, DeviceUnavailable):
        # Sent to a queue that a worker without the device consumes too: not the job's fault.
        # Back to the queue, re-sent after a pause (a worker that has the device takes it then),
        # so that two such workers do not pass it back and forth in a tight loop.
        _hand_back(run, f"{exc}; handed back to queue {claimed.queue}", resend_in=WRONG_DEVICE_RESEND_SECONDS)
        return None
    elif isinstance(exc, records.LeaseLost):
        run.lease_lost = True
    elif isinstance(exc, CifarqError):
        error = str(exc)
    elif _is_out_of_memory(exc):
        error = (f"out of memory on {run.device_name} at batch size {claimed.params.get('batch_size')}: "
                 f"{first_line(exc)}")
    else:
        error = f"{type(exc).__name__}: {exc}"
        run.log("".join(traceback.format_exception(exc)))
    if run.lease_lost:
        log.warning("job %s: another attempt owns it now; this one stops without writing", job_id)
        return None
    if status == JobStatus.cancelled and not retry_while_unreachable(lambda: _cancel_requested(job_id), what="read"):
        _hand_back(run, "the worker stopped; handed back to the queue")
        return None
    if status != JobStatus.succeeded:
        if error:
            run.log(f"error: {error}")
        try:
            retry_while_unreachable(lambda: run.write_with_lines(
                lambda session: records.finish(session=session, claim=run.claim, status=status, error=error)),
                what=f"end of job {job_id}")
        except records.LeaseLost:
            log.warning("job %s: another attempt owns it now; its end is not recorded here", job_id)
            return None
    return status


def _hand_back(run: JobRun, reason: str, resend_in: float = 0.0) -> None:
    """The worker is stopping: the job goes back to queued (its last checkpoint kept) and a
    reaper elsewhere sends it again (not this worker: its consumer may still take messages),
    so another worker resumes it. This attempt does not count against the limit."""
    run.log(reason)
    try:
        retry_while_unreachable(lambda: run.write_with_lines(
            lambda session: records.hand_back(session=session, claim=run.claim, reason=reason, resend_in=resend_in)),
            what=f"hand-back of job {run.claim.job_id}")
        log.info("job %s handed back to the queue", run.claim.job_id)
    except records.LeaseLost:
        pass


def _is_out_of_memory(exc: BaseException) -> bool:
    # CUDA raises torch.OutOfMemoryError; the CPU allocator raises a RuntimeError that says so.
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and ("can't allocate memory" in str(exc) or "out of memory" in str(exc)))


def _cancel_requested(job_id: str) -> bool:
    with session_scope() as session:
        return bool(session.get(Job, job_id).cancel_requested)


def start_on_device(run: JobRun, requested: str, **progress) -> torch.device:
    device = resolve_device(requested)
    run.device_name = describe(device)
    with session_scope() as session:
        records.heartbeat(session=session, claim=run.claim, device=run.device_name, **progress)
    run.log(f"running on {run.device_name}")
    return device


def _record_provenance(run: JobRun, device: torch.device, data_dir: Path, data_files: list[str]) -> None:
    write_provenance(run, provenance_of(run, device, data_dir, data_files))


def provenance_of(run: JobRun, device: torch.device, data_dir: Path, data_files: list[str]) -> dict:
    """Versions, device and a digest of the data files the job is about to read, on every
    attempt (records.record_provenance: a resumed job shows the host that finished it)."""
    where = str(device)
    if device.type == "cuda":  # "cuda:0 (NVIDIA H200)": the index among the GPUs this worker sees
        where = f"cuda:{device.index if device.index is not None else torch.cuda.current_device()} ({run.device_name})"
    return collect(torch_version=torch.__version__, cuda=torch.version.cuda, device=where,
                   data_folder=ensure_cifar10(data_dir), data_files=data_files)


def write_provenance(run: JobRun, provenance: dict) -> None:
    def write() -> None:
        with session_scope() as session:
            records.record_provenance(session=session, claim=run.claim, provenance=provenance)

    # As the epochs' writes: a database restarting now delays the job, it does not fail it.
    retry_while_unreachable(write, what=f"provenance of job {run.claim.job_id}")


def resume_of(run: JobRun) -> Optional[Resume]:
    with session_scope() as session:
        checkpoint = latest_checkpoint(session=session, job_id=run.claim.job_id)
        return load_resume(checkpoint) if checkpoint is not None else None


def _run_train(run: JobRun, config: TrainConfig, data_dir: Path) -> None:
    device = start_on_device(run, config.device)
    _record_provenance(run, device, data_dir, ALL_FILES)
    run.config = config.model_dump()
    resume = resume_of(run)
    settings = get_settings()
    with TensorBoardLog(safe_path_part(run.claim.job_id), settings.artifacts) as run.tensorboard:
        model = train(config, data_dir=data_dir, device=device, hooks=run, resume=resume,
                      cpu_compile=settings.cpu_compile)
        accuracy = record_evaluation(run, model, device, data_dir)
        run.tensorboard.accuracy(config.epochs, accuracy)


def safe_path_part(job_id: str) -> str:
    # Ids come from the database; only a plain id may become a folder under the artifacts directory.
    if not re.fullmatch(r"[0-9a-f]{8,32}", job_id):
        raise CifarqError(f"job id {job_id!r} is not a plain id; refusing to use it in a path")
    return job_id


def _run_evaluate(run: JobRun, config: EvaluateConfig, data_dir: Path) -> None:
    device = start_on_device(run, config.device)
    with session_scope() as session:
        model, checkpoint_id, description = load_weights_for_evaluation(session=session, job_id=run.claim.job_id,
                                                                        config=config)
    run.log(f"evaluating {description}")
    _record_provenance(run, device, data_dir, [*TEST_FILES, META_FILE])
    record_evaluation(run, model.to(device), device, data_dir, checkpoint_id=checkpoint_id,
                       batch_size=config.batch_size)


def record_evaluation(run: JobRun, model, device: torch.device, data_dir: Path,
                       checkpoint_id: Optional[int] = None, batch_size: int = 1000) -> float:
    run.phase("evaluating")
    test_set = load_split(data_dir, train=False)
    result = evaluate(model, test_set, device=device, batch_size=batch_size)
    run.log(f"Accuracy of the network on the {result.total} test images: {100 * result.accuracy:.1f} %")
    for i, name in enumerate(result.classes):
        row = result.confusion[i]
        run.log(f"Accuracy for class: {name:5s} is {100 * accuracy(row[i], sum(row)):.1f} %")
    run.stop_heartbeat()

    def finish(session: Session) -> None:
        latest = latest_checkpoint(session=session, job_id=run.claim.job_id)
        records.finish_succeeded(session=session, claim=run.claim, confusion=result.confusion,
                                 classes=result.classes, samples=result.samples,
                                 checkpoint_id=checkpoint_id or (latest.id if latest else None))

    # The results and the last log lines in one transaction, with no heartbeat before them: a
    # retry after a lost reply finds the job succeeded under its own token (records._ended_by),
    # where a heartbeat would have taken it for a lost lease.
    retry_while_unreachable(lambda: run.write_with_lines(finish), what=f"results of job {run.claim.job_id}")
    return result.accuracy

"""The records of cifarq (SQLAlchemy 2.0). The schema itself comes from Alembic migrations."""
from __future__ import annotations

import enum
from datetime import datetime
from typing import Any, Optional

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from shared.clock import utcnow
from shared.new_job import new_job_id
from shared.states import JobKind, JobStatus


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, datetime: DateTime(timezone=True)}


def _enum(cls: type[enum.Enum]) -> Enum:
    # Stored as plain strings (no native ENUM type) so that new states need no DDL dance.
    return Enum(cls, native_enum=False, length=16, validate_strings=True)


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_job_id)
    kind: Mapped[JobKind] = mapped_column(_enum(JobKind))
    status: Mapped[JobStatus] = mapped_column(_enum(JobStatus), index=True)
    params: Mapped[dict[str, Any]]
    queue: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    started_at: Mapped[Optional[datetime]]
    finished_at: Mapped[Optional[datetime]]
    heartbeat_at: Mapped[Optional[datetime]]
    worker: Mapped[Optional[str]] = mapped_column(String(255))
    device: Mapped[Optional[str]] = mapped_column(String(255))
    attempts: Mapped[int] = mapped_column(default=0)
    # Every delivery that claims the job gets a fresh token; writes from an attempt whose
    # token is no longer the job's (a worker presumed dead that comes back) are refused. A job's
    # end keeps the token of the attempt that wrote it, so that a retry of that write knows it.
    attempt_token: Mapped[Optional[str]] = mapped_column(String(32))
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[Optional[str]] = mapped_column(Text)
    # Live progress, overwritten by the worker's heartbeat.
    epoch: Mapped[int] = mapped_column(default=0)
    step: Mapped[int] = mapped_column(default=0)
    steps_per_epoch: Mapped[Optional[int]]
    loss: Mapped[Optional[float]] = mapped_column(Float)
    test_accuracy: Mapped[Optional[float]] = mapped_column(Float)
    sweep_id: Mapped[Optional[str]] = mapped_column(String(32), index=True)  # jobs queued together by a sweep
    # A queued job whose message may be missing from the broker: a reaper sends it from this time
    # on, and it is cleared only once the broker took the message (shared/jobs.py, "the message
    # a queued job is owed"). Set at submit, at a hand-back, a requeue, and when the broker lost
    # its data.
    resend_after: Mapped[Optional[datetime]]
    # What ran: versions, device and a digest of the data files read, written by each attempt
    # (shared/provenance.py). None until a worker starts the job, and for jobs run before 0004.
    provenance: Mapped[Optional[dict[str, Any]]]
    # What a running job is doing (worker/loop.py PHASES), and the seconds its step took to compile
    # (or its first step to warm up), which its epochs' images/s leave out.
    phase: Mapped[Optional[str]] = mapped_column(String(32))
    compile_seconds: Mapped[Optional[float]] = mapped_column(Float)
    # Packed sweeps (worker/run_pack.py): the pack the job was queued in (its points reach a
    # worker as one delivery and train as one batched model), and how many points the current
    # or last attempt trained together, itself included; None when it ran alone.
    pack_id: Mapped[Optional[str]] = mapped_column(String(32), index=True)
    packed_with: Mapped[Optional[int]]

    epochs: Mapped[list["EpochMetric"]] = relationship(
        back_populates="job", order_by="EpochMetric.epoch", cascade="all, delete-orphan"
    )


class EpochMetric(Base):
    __tablename__ = "epoch_metrics"
    __table_args__ = (UniqueConstraint("job_id", "epoch"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    epoch: Mapped[int]
    loss: Mapped[float] = mapped_column(Float)
    test_accuracy: Mapped[Optional[float]] = mapped_column(Float)
    seconds: Mapped[float] = mapped_column(Float)
    images_per_second: Mapped[float] = mapped_column(Float)

    job: Mapped[Job] = relationship(back_populates="epochs")


class Checkpoint(Base):
    """Model weights (a plain state dict, as the tutorial saves it) plus the training state.

    Two blobs, so that `checkpoint export` hands out the tutorial's format without torch on
    the client, and an uploaded state dict is a checkpoint with no training state.
    Both are deferred: listing checkpoints never pulls megabytes.
    """

    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("job_id", "epoch"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    epoch: Mapped[int]  # completed epochs; 0 for an uploaded state dict
    weights: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int]
    train_state: Mapped[Optional[bytes]] = mapped_column(LargeBinary, deferred=True)
    train_state_sha256: Mapped[Optional[str]] = mapped_column(String(64))
    config: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Result(Base):
    """The test-set evaluation of a job: one row, written once, with its per-class rows."""

    __tablename__ = "results"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    accuracy: Mapped[float] = mapped_column(Float)
    correct: Mapped[int]
    total: Mapped[int]
    confusion_matrix: Mapped[list[list[int]]] = mapped_column(JSON)  # rows: true class
    checkpoint_id: Mapped[Optional[int]] = mapped_column(ForeignKey("checkpoints.id", ondelete="SET NULL"))
    # The first test images with their predictions, for the report's image grid:
    # [{"index": i, "label": true class index, "predicted": class index}, ...]
    samples: Mapped[Optional[list[dict[str, int]]]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    classes: Mapped[list["ClassResult"]] = relationship(
        order_by="ClassResult.class_index", cascade="all, delete-orphan"
    )


class ClassResult(Base):
    __tablename__ = "class_results"
    __table_args__ = (UniqueConstraint("job_id", "class_index"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("results.job_id", ondelete="CASCADE"), index=True)
    class_index: Mapped[int]
    class_name: Mapped[str] = mapped_column(String(64))
    correct: Mapped[int]
    total: Mapped[int]


class LogLine(Base):
    __tablename__ = "log_lines"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    line: Mapped[str] = mapped_column(Text)


class WorkerRecord(Base):
    """A live worker, as its launcher last reported it (`cifarq workers`)."""

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)  # Celery node name
    host: Mapped[str] = mapped_column(String(255))
    queues: Mapped[str] = mapped_column(String(255))
    device: Mapped[str] = mapped_column(String(255))  # "cpu" or "cuda"
    gpu_index: Mapped[Optional[int]]
    gpu_name: Mapped[Optional[str]] = mapped_column(String(255))
    pid: Mapped[int]
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(default=utcnow)

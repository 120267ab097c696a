"""Job kinds, states and the standard queues: importable without SQLAlchemy or Celery (the CLI's
--help and `status` stay fast)."""
import enum


class JobKind(str, enum.Enum):
    train = "train"
    evaluate = "evaluate"


class JobStatus(str, enum.Enum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled)


DEFAULT_QUEUE = "default"  # device "auto": every worker consumes it
GPU_QUEUE = "gpu"  # device "cuda[:N]": only workers that have CUDA
CPU_QUEUE = "cpu"  # device "cpu": only workers without CUDA


def queue_for_device(device: str) -> str:
    if device == "auto":
        return DEFAULT_QUEUE
    return CPU_QUEUE if device == "cpu" else GPU_QUEUE

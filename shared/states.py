"""Job kinds and states: plain enums, importable without SQLAlchemy (the CLI's --help stays fast)."""
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

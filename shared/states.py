"""Job kinds, states, the standard queues and when a worker counts as alive: importable without
SQLAlchemy or Celery (the CLI's --help and `status` stay fast)."""
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


# The two Celery tasks (worker/tasks.py), sent by name: the CLI never imports worker code.
RUN_JOB_TASK = "cifarq.run_job"  # one job
RUN_PACK_TASK = "cifarq.run_pack"  # the points of a packed sweep, trained together

DEFAULT_QUEUE = "default"  # device "auto": every worker consumes it
GPU_QUEUE = "gpu"  # device "cuda[:N]": only workers that have CUDA
CPU_QUEUE = "cpu"  # device "cpu": only workers without CUDA


def queue_for_device(device: str) -> str:
    if device == "auto":
        return DEFAULT_QUEUE
    return CPU_QUEUE if device == "cpu" else GPU_QUEUE


# A launcher refreshes its row in the workers table this often (shared/registry.py); a worker
# counts as alive while its heartbeat is younger than ALIVE_SECONDS (four missed beats).
HEARTBEAT_SECONDS = 2.0
ALIVE_SECONDS = 4 * HEARTBEAT_SECONDS


def how_to_serve(queue: str) -> str:
    """What to start so that a live worker consumes `queue`, for the messages that say none does."""
    if queue == GPU_QUEUE:
        return "start `cifarq worker` on a host with an NVIDIA GPU"
    if queue == CPU_QUEUE:
        return "start `cifarq local start` on a host without a GPU, or `cifarq worker --gpu none`"
    if queue == DEFAULT_QUEUE:
        return "start `cifarq local start` or `cifarq worker`"
    return f"start `cifarq worker --queues {queue}`"


def nobody_serves(queue: str) -> str:
    return f"no live worker consumes queue {queue!r}: {how_to_serve(queue)}"

"""TrainHooks for tests that call the training loop directly, without Celery or a database."""
from __future__ import annotations


class Recorder:
    """Keeps every log line and every epoch's report (with its checkpoint bytes); can ask the
    loop to stop after a number of steps, as a cancel would."""

    def __init__(self, stop_after_steps: int | None = None):
        self.epochs: list[dict] = []
        self.lines: list[str] = []
        self.phases: list[str] = []
        self.compile_seconds: float | None = None
        self.steps = 0
        self.stop_after_steps = stop_after_steps

    def progress(self, **_):
        self.steps += 1

    def log(self, line):
        self.lines.append(line)

    def phase(self, name):
        self.phases.append(name)

    def compiled(self, seconds):
        self.compile_seconds = seconds

    def should_stop(self):
        return self.stop_after_steps is not None and self.steps >= self.stop_after_steps

    def epoch_done(self, **report):
        self.epochs.append(report)

    def checkpoint(self, epoch: int) -> tuple[bytes, bytes]:
        """(weights, train_state) written after `epoch` epochs."""
        (report,) = [r for r in self.epochs if r["epoch"] == epoch]
        return report["weights"], report["train_state"]

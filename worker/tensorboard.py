"""TensorBoard event files for a job, under <artifacts>/<job id>/tensorboard.

    log = TensorBoardLog(job_id, settings.artifacts)
    log.epoch(1, loss=1.73, lr=0.001, images_per_second=2116.0)
    log.epoch(2, loss=1.38, lr=0.001, images_per_second=2140.0)
    log.accuracy(2, 0.52)           # after the test-set evaluation
    log.close()

`tensorboard --logdir $CIFARQ_ARTIFACTS_DIR` then shows every job as one run. Without the
`tensorboard` package (torch's SummaryWriter needs it), the log does nothing, after one warning
per process: the database keeps every number anyway, TensorBoard is a view of them.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

log = logging.getLogger(__name__)
_warned = False


class TensorBoardLog:
    def __init__(self, job_id: str, artifacts_dir: Path):
        self.logdir = Path(artifacts_dir) / job_id / "tensorboard"
        self._writer = None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:  # torch raises this when the tensorboard package is missing
            _warn_once(exc)
            return
        self.logdir.mkdir(parents=True, exist_ok=True)
        self._writer = SummaryWriter(log_dir=str(self.logdir))

    @property
    def enabled(self) -> bool:
        return self._writer is not None

    def epoch(self, epoch: int, loss: float, lr: float, images_per_second: float,
              test_accuracy: Optional[float] = None) -> None:
        """One point per scalar at step = epoch (epochs finished), flushed at once: a job may die next."""
        if self._writer is None:
            return
        self._writer.add_scalar("train/loss", loss, epoch)
        self._writer.add_scalar("train/lr", lr, epoch)
        self._writer.add_scalar("train/images_per_second", images_per_second, epoch)
        if test_accuracy is not None:
            self._writer.add_scalar("test/accuracy", test_accuracy, epoch)
        self._writer.flush()

    def accuracy(self, epoch: int, test_accuracy: float) -> None:
        """The test accuracy after `epoch` epochs, when it is known only after the epoch was logged."""
        if self._writer is None:
            return
        self._writer.add_scalar("test/accuracy", test_accuracy, epoch)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> "TensorBoardLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _warn_once(exc: Exception) -> None:
    global _warned
    if not _warned:
        _warned = True
        log.warning("TensorBoard logging is off (%s): pip install tensorboard to turn it on", exc)

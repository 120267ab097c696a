"""Live progress of a job on stderr, for `cifarq wait` and `cifarq status --follow`.

The worker's heartbeat writes (finished epochs, step, steps per epoch, running loss, heartbeat
time) on the job row every few seconds; this draws them. On a terminal it is one bar per epoch,
redrawn in place; anywhere else (a log file, CI, a pipe) it prints a plain line each time the
recorded progress changes, so that logs stay readable. Speed and ETA come from the heartbeats
(steps done over the last few seconds of them, times the batch size), or from the last finished
epoch's images/s.

The bar is drawn by hand, not with rich.progress (which typer brings): tried, it took as many
lines, since its own speed and ETA, sampled on this side, cannot replace the heartbeat-based
ones; it wrote 2.5 times the bytes (colours, a hidden cursor to restore on Ctrl-C) and cost
another 50 ms of imports.
"""
from __future__ import annotations

import shutil
import sys
import time
from collections import deque
from datetime import datetime, timezone
from typing import Optional, TextIO

BAR_WIDTH = 24
RATE_WINDOW_SECONDS = 5.0


def progress_line(job: dict) -> str:
    """`running, epoch 1/2, step 10087/12500, loss 1.553`: the plain summary of a job dict."""
    p = job["progress"]
    phase = p.get("phase")
    parts = [f"{job['status']}: {phase}" if phase and phase != "training" else job["status"]]
    if job["kind"] == "train" and p["epochs"]:
        parts.append(f"epoch {current_epoch(job)}/{p['epochs']}")
        if p["steps_per_epoch"]:
            parts.append(f"step {p['step']}/{p['steps_per_epoch']}")
    if p["loss"] is not None:
        parts.append(f"loss {p['loss']:.3f}")
    if job["metrics"]["test_accuracy"] is not None:
        parts.append(f"test accuracy {100 * job['metrics']['test_accuracy']:.1f}%")
    return ", ".join(parts)


def current_epoch(job: dict) -> int:
    """progress.epoch counts finished epochs; while one is under way, this is the one running."""
    p = job["progress"]
    # Before its first heartbeat with steps (loading data, compiling), a running job is in its first epoch.
    in_epoch = job["status"] == "running" and (not p["steps_per_epoch"] or p["step"] < p["steps_per_epoch"])
    return p["epoch"] + (1 if in_epoch else 0)


def format_duration(seconds: float) -> str:
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def _parse_time(value: Optional[str]) -> Optional[float]:
    if not value:
        return None
    moment = datetime.fromisoformat(value)
    return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()


class Speed:
    """Images per second and the time left, from the heartbeats of one job.

    The rate spans RATE_WINDOW_SECONDS of heartbeats where it can, not one interval: a heartbeat
    is stamped when its write reaches the database, and on a busy host that write can lag its
    step count by a good part of a second. Over one 0.5 s interval that swung the rate by 2x
    (seen in the suite under load); over a few seconds the lag is a small share.
    """

    def __init__(self, epoch_images_per_second: Optional[float] = None):
        self._beats: deque[tuple[float, int]] = deque()  # (heartbeat time, steps done in the whole job), training only
        self._seen_at: Optional[float] = None  # when the newest heartbeat was first seen here (monotonic)
        self.steps_per_second: Optional[float] = None
        self.epoch_images_per_second = epoch_images_per_second
        self._beat_interval = 0.0  # seconds between the last two heartbeats that moved

    def update(self, job: dict) -> None:
        p = job["progress"]
        beat = _parse_time(job.get("heartbeat_at"))
        if beat is None or not p["steps_per_epoch"] or job["status"] != "running":
            return
        if p.get("phase") not in (None, "training"):
            # Loading data, compiling, evaluating: no steps move, and a rate from a heartbeat of
            # such a phase to one of training would count the phase's seconds as training's.
            self._beats.clear()
            return
        done = (current_epoch(job) - 1) * p["steps_per_epoch"] + p["step"]
        beats = self._beats
        if beats and beat <= beats[-1][0]:
            return  # no newer heartbeat
        if beats and done > beats[-1][1]:
            self._beat_interval = beat - beats[-1][0]
            # From the newest heartbeat that is at least the window older than this one.
            while len(beats) > 1 and beat - beats[1][0] >= RATE_WINDOW_SECONDS:
                beats.popleft()
            self.steps_per_second = (done - beats[0][1]) / (beat - beats[0][0])
        beats.append((beat, done))
        self._seen_at = time.monotonic()

    def images_per_second(self, batch_size: int) -> Optional[float]:
        if self.steps_per_second is not None:
            return self.steps_per_second * batch_size
        return self.epoch_images_per_second

    def eta_seconds(self, job: dict, now: Optional[float] = None) -> Optional[float]:
        """Seconds left at the current speed, counted down from the last heartbeat as time passes
        here (the client's clock: the worker's may differ), for one heartbeat interval at most:
        when the next heartbeat is late (an epoch's checkpoint being written), the ETA holds
        instead of running down to 0:00 and jumping back up when it comes."""
        p = job["progress"]
        batch_size = job["params"].get("batch_size") or 1
        rate = self.images_per_second(batch_size)
        if not rate or not p["steps_per_epoch"] or not p["epochs"] or job["status"] != "running":
            return None
        left = (p["epochs"] - current_epoch(job)) * p["steps_per_epoch"] + p["steps_per_epoch"] - p["step"]
        since = 0.0 if self._seen_at is None else (now if now is not None else time.monotonic()) - self._seen_at
        return max(max(left, 0) * batch_size / rate - min(since, self._beat_interval), 0.0)


class ProgressView:
    """Draws a job's progress on `stream`: a bar redrawn in place on a TTY, plain lines otherwise."""

    def __init__(self, stream: Optional[TextIO] = None, *, tty: Optional[bool] = None,
                 epoch_images_per_second: Optional[float] = None):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.speed = Speed(epoch_images_per_second)
        self._last_plain: Optional[str] = None
        self._bar_epoch: Optional[int] = None  # the epoch whose bar is on the current line
        self._drawn = False
        self._last_bar: Optional[str] = None

    def update(self, job: dict) -> None:
        self.speed.update(job)
        if self.tty and self._has_bar(job):
            self._draw_bar(job)
        else:
            self._plain(job)

    def finish(self, job: dict) -> None:
        """The final line: ends any bar, then the job's last state once."""
        self._end_bar()
        line = f"{job['id']}: {progress_line(job)}"
        if line != self._last_plain:
            self._write(line + "\n")
            self._last_plain = line

    def note(self, text: str) -> None:
        """A line of its own (a warning while the job waits), below any bar."""
        self._end_bar()
        self._write(text + "\n")

    def _has_bar(self, job: dict) -> bool:
        """A bar while steps are being counted; a line of its own for a phase without steps
        (loading data, compiling, evaluating), so that no bar sits frozen for minutes."""
        p = job["progress"]
        return (job["kind"] == "train" and job["status"] == "running" and bool(p["steps_per_epoch"])
                and p.get("phase") in (None, "training"))

    def _rate_and_eta(self, job: dict) -> list[str]:
        parts = []
        rate = self.speed.images_per_second(job["params"].get("batch_size") or 1)
        if rate:
            parts.append(f"{rate:,.0f} images/s")
        eta = self.speed.eta_seconds(job)
        if eta is not None:
            parts.append(f"ETA {format_duration(eta)}")
        return parts

    def _plain(self, job: dict) -> None:
        self._end_bar()
        base = f"{job['id']}: {progress_line(job)}"
        if base == self._last_plain:
            return  # nothing new recorded: no line (the rate alone changing is no news)
        self._last_plain = base
        counting = job["progress"].get("phase") in (None, "training")  # no rate or ETA while compiling or evaluating
        self._write(", ".join([base, *(self._rate_and_eta(job) if counting else [])]) + "\n")

    def _draw_bar(self, job: dict) -> None:
        p = job["progress"]
        epoch = current_epoch(job)
        if self._bar_epoch is not None and epoch != self._bar_epoch:
            self._end_bar()  # the previous epoch's bar stays on screen, complete
        self._bar_epoch = epoch
        done = min(p["step"] / p["steps_per_epoch"], 1.0)
        filled = int(done * BAR_WIDTH)
        bar = "#" * filled + "-" * (BAR_WIDTH - filled)
        parts = [f"epoch {epoch}/{p['epochs']} [{bar}] {p['step']}/{p['steps_per_epoch']}"]
        if p["loss"] is not None:
            parts.append(f"loss {p['loss']:.3f}")
        parts += self._rate_and_eta(job)
        text = "  ".join(parts)
        width = shutil.get_terminal_size((100, 24)).columns
        text = text[: max(width - 1, 20)]
        if text != self._last_bar or not self._drawn:
            self._write("\r\x1b[2K" + text)
            self._last_bar = text
        self._drawn = True

    def _end_bar(self) -> None:
        if self._drawn:
            self._write("\n")
            self._drawn = False
            self._bar_epoch = None

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()


"""Liveness files: what the containers' healthchecks read (docker-compose.yml, shared/liveness.py)."""
from __future__ import annotations

import os
import subprocess
import sys
import time

from shared.liveness import check, mark_alive
from tests.conftest import REPO


def healthcheck(path) -> subprocess.CompletedProcess:
    """The command compose runs, as it runs it."""
    return subprocess.run([sys.executable, "-m", "shared.liveness", str(path)], capture_output=True, text=True,
                          cwd=REPO, timeout=30)


def test_alive_until_the_deadline_then_not(tmp_path):
    path = tmp_path / "alive"
    result = healthcheck(path)
    assert result.returncode == 1 and "does not exist yet" in result.stderr
    mark_alive(path, valid_for=60)
    assert healthcheck(path).returncode == 0
    mark_alive(path, valid_for=-5)  # a deadline already past: the last round is overdue
    result = healthcheck(path)
    assert result.returncode == 1 and "was due 5 s ago" in result.stderr
    path.write_text("garbage")
    assert "unreadable" in check(path)
    mark_alive(None, valid_for=60)  # no file configured: nothing to do


def _wait_until_alive(path, proc, timeout=60.0) -> float:
    deadline = time.monotonic() + timeout
    while check(path) is not None:
        assert proc.poll() is None, "the process ended"
        assert time.monotonic() < deadline, f"never alive: {check(path)}"
        time.sleep(0.2)
    return _validity(path)[0]


def _validity(path) -> tuple[float, float]:
    """(seconds the mark was valid for when written, when it was written): from the file's own
    mtime, not this test's clock, which a busy machine may have stalled since the write."""
    with open(path) as mark:  # one inode: the deadline and its mtime from the same round
        written = os.fstat(mark.fileno()).st_mtime
        return float(mark.read()) - written, written


def test_beat_marks_itself_alive_each_round_at_the_configured_interval(sqlite_env, tmp_path):
    path = tmp_path / "beat-alive"
    # CIFARQ_REAP_INTERVAL_SECONDS, not the 15 s that `cifarq beat` once passed regardless.
    env = {**sqlite_env.vars, "CIFARQ_LIVENESS_FILE": str(path), "CIFARQ_REAP_INTERVAL_SECONDS": "1"}
    beat = subprocess.Popen([sys.executable, "-m", "api_cli.main", "beat"], env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        left = _wait_until_alive(path, beat)
        assert 2.5 < left <= 3.1, f"valid for three rounds of 1 s, not {left:.1f} s"
        _, first_written = _validity(path)
        deadline = time.monotonic() + 30
        while _validity(path)[1] == first_written:
            assert time.monotonic() < deadline, "no later round marked it again"
            time.sleep(0.1)
        # A round of 1 s, late by whatever a busy machine adds; the old fixed 15 s would fail this.
        assert _validity(path)[1] - first_written < 10, "a later round marked it again, a round later"
    finally:
        beat.terminate()
        beat.wait(timeout=30)


def test_a_worker_marks_itself_alive_once_registered(sqlite_env, tmp_path):
    path = tmp_path / "worker-alive"
    sqlite_env.vars["CIFARQ_LIVENESS_FILE"] = str(path)
    worker = sqlite_env.start_worker()
    left = _wait_until_alive(path, worker)
    assert 29 < left <= 30.1, "alive for three missed heartbeats of 10 s"

"""Liveness files: what the containers' healthchecks read (docker-compose.yml, shared/liveness.py)."""
from __future__ import annotations

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
    return float(path.read_text()) - time.time()


def test_beat_marks_itself_alive_each_round_at_the_configured_interval(sqlite_env, tmp_path):
    path = tmp_path / "beat-alive"
    # CIFARQ_REAP_INTERVAL_SECONDS, not the 15 s that `cifarq beat` once passed regardless.
    env = {**sqlite_env.vars, "CIFARQ_LIVENESS_FILE": str(path), "CIFARQ_REAP_INTERVAL_SECONDS": "1"}
    beat = subprocess.Popen([sys.executable, "-m", "api_cli.main", "beat"], env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        left = _wait_until_alive(path, beat)
        assert 1.5 < left <= 3.0, f"valid for three rounds of 1 s, not {left:.1f} s"
        first = path.read_text()
        time.sleep(2.5)
        assert path.read_text() != first, "a later round marked it again"
    finally:
        beat.terminate()
        beat.wait(timeout=30)


def test_a_worker_marks_itself_alive_once_registered(sqlite_env, tmp_path):
    path = tmp_path / "worker-alive"
    sqlite_env.vars["CIFARQ_LIVENESS_FILE"] = str(path)
    worker = sqlite_env.start_worker()
    left = _wait_until_alive(path, worker)
    assert 20 < left <= 30, "alive for three missed heartbeats of 10 s"

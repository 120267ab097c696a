"""A CPU worker compiles the default step into inductor's cache when it starts and measures it
(worker/warm_up.py); its jobs of that shape load that compiled step where those figures say it pays,
and run eagerly where they say it does not."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from worker.compile_cache import compile_lock

EPOCHS = "2"  # medium_cifar: 2,000 training images, 1,000 steps at batch 4


def _job(env) -> dict:
    job = env.submit_train("--epochs", EPOCHS)
    status = env.cli_json("wait", job, "--timeout", "300")
    assert status["status"] == "succeeded", status
    status["log"] = env.cli("logs", job).stdout
    return status


def _warm_up_process(**env) -> subprocess.CompletedProcess:
    """`python -m worker.warm_up`, as the worker and the worker image's build run it."""
    return subprocess.run([sys.executable, "-m", "worker.warm_up"], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **env})


@pytest.mark.slow  # a cold compile of the step: ~25 s on 2 cores
def test_a_worker_warms_the_cache_and_its_jobs_follow_the_figures(sqlite_env, medium_cifar, tmp_path):
    cache = tmp_path / "inductor"  # empty: the warm-up really compiles
    sqlite_env.vars.update(CIFARQ_DATA_DIR=str(medium_cifar), TORCHINDUCTOR_CACHE_DIR=str(cache),
                           CIFARQ_CPU_WARM_UP="auto")
    worker = sqlite_env.start_worker()
    deadline = time.monotonic() + 600
    while "cifarq warm-up:" not in worker.log_path.read_text():
        assert worker.poll() is None and time.monotonic() < deadline, worker.log_path.read_text()
        time.sleep(0.5)
    assert "the default step compiled into the cache in" in worker.log_path.read_text()
    (figures_file,) = [p for p in (cache / "cifarq-warm").iterdir() if not p.name.startswith(".")]
    figures = json.loads(figures_file.read_text())
    assert set(figures) == {"first_compile_seconds", "cached_compile_seconds", "eager_seconds_per_step",
                            "compiled_seconds_per_step"}
    assert all(value > 0 for value in figures.values()), figures
    # Run again (as the worker image's build and every later start do), it finds them and exits 0.
    again = _warm_up_process(TORCHINDUCTOR_CACHE_DIR=str(cache))
    assert again.returncode == 0 and "the default step is in the compile cache already" in again.stderr, again.stderr

    # The job reads the figures of its shape at its start: where they say a compile pays, it
    # loads the step the warm-up compiled ...
    figures_file.write_text(json.dumps({**figures, "cached_compile_seconds": 0.01,
                                        "eager_seconds_per_step": 0.001, "compiled_seconds_per_step": 0.0001}))
    compiled = _job(sqlite_env)
    assert compiled["progress"]["compile_seconds"] is not None and "step compiled ahead of time, loaded in" in compiled["log"]
    # ... and where they say it does not, the same job runs eagerly.
    figures_file.write_text(json.dumps({**figures, "eager_seconds_per_step": 0.0001,
                                        "compiled_seconds_per_step": 0.001}))
    eager = _job(sqlite_env)
    assert eager["progress"]["compile_seconds"] is None and "step compiled" not in eager["log"]
    assert "the step runs eagerly: compiled, its 1000 steps would save 0.0 s, less than 1.5x the" in eager["log"]
    # Same seed, same batches: the compiled step trains the model the eager one does.
    assert abs(compiled["metrics"]["test_accuracy"] - eager["metrics"]["test_accuracy"]) <= 0.02


def test_a_warm_up_that_cannot_compile_exits_non_zero(tmp_path):
    """The worker image's build runs the warm-up and must fail rather than ship without the step."""
    failed = _warm_up_process(TORCHINDUCTOR_CACHE_DIR=str(tmp_path), CXX="no-such-compiler")
    assert failed.returncode == 1
    assert "cifarq warm-up: no C++ compiler (no-such-compiler): nothing to warm up" in failed.stderr, failed.stderr


def test_a_compile_waits_for_a_warm_up_in_progress(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    events = []

    def job_compiles():
        with compile_lock(exclusive=False):
            events.append("job compiles")

    with compile_lock(exclusive=True):
        job = threading.Thread(target=job_compiles)
        job.start()
        job.join(timeout=1.0)
        assert job.is_alive() and events == []  # still waiting for the warm-up
        events.append("warm-up done")
    job.join(timeout=10)
    assert events == ["warm-up done", "job compiles"]
    # Jobs do not wait for each other.
    with compile_lock(exclusive=False), compile_lock(exclusive=False):
        pass

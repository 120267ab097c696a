"""Live progress of `cifarq wait` and `cifarq status --follow`: a bar per epoch on a terminal,
plain lines elsewhere, stdout clean under --json; against a real worker."""
from __future__ import annotations

import io
import json
import os
import pty
import subprocess
import sys
import threading

import pytest

from api_cli.progress import ProgressView, format_duration
from tests.conftest import REPO, env_with_worker
from tests.fakedata import write_cifar10

# 1,500 training images at batch 2: 750 steps per epoch, a second or more each, so that wait sees
# several heartbeats (0.5 s in the tests) per epoch.
SLOW = ["--epochs", "3", "--lr", "0.005", "--batch-size", "2", "--log-every", "250", "--seed", "1"]


def job_dict(status="running", epoch=0, step=0, loss=None, beat="2026-01-01T00:00:00+00:00", epochs=2,
             steps=100, batch_size=4, accuracy=None):
    return {"id": "abcd1234", "kind": "train", "status": status, "params": {"epochs": epochs, "batch_size": batch_size},
            "progress": {"epoch": epoch, "epochs": epochs, "step": step, "steps_per_epoch": steps, "loss": loss},
            "metrics": {"test_accuracy": accuracy}, "heartbeat_at": beat, "error": None}


def test_speed_and_eta_come_from_two_heartbeats():
    out = io.StringIO()
    view = ProgressView(out, tty=False)
    view.update(job_dict(step=10, loss=2.0, beat="2026-01-01T00:00:00+00:00"))
    view.update(job_dict(step=30, loss=1.9, beat="2026-01-01T00:00:02+00:00"))  # 20 steps in 2 s, batch 4
    lines = out.getvalue().splitlines()
    assert lines[0] == "abcd1234: running, epoch 1/2, step 10/100, loss 2.000"
    # 40 images/s; left: 70 steps of epoch 1 + 100 of epoch 2 = 170 steps = 680 images = 17 s
    assert lines[1] == "abcd1234: running, epoch 1/2, step 30/100, loss 1.900, 40 images/s, ETA 0:17"
    job = job_dict(step=30, loss=1.9, beat="2026-01-01T00:00:02+00:00")
    view.update(job)
    assert len(out.getvalue().splitlines()) == 2, "nothing new recorded: no new line"
    # Between heartbeats the ETA counts down on the client's clock.
    assert view.speed.eta_seconds(job, now=view.speed._seen_at + 5) == pytest.approx(12)
    assert view.speed.eta_seconds(job, now=view.speed._seen_at + 60) == 0
    view.finish(job_dict(status="succeeded", epoch=2, step=100, loss=1.5, accuracy=0.52))
    assert out.getvalue().splitlines()[-1] == \
        "abcd1234: succeeded, epoch 2/2, step 100/100, loss 1.500, test accuracy 52.0%"
    assert format_duration(3725) == "1:02:05" and format_duration(59) == "0:59"


def test_a_terminal_gets_one_bar_per_epoch_redrawn_in_place():
    out = io.StringIO()
    view = ProgressView(out, tty=True, epoch_images_per_second=80.0)
    view.update(job_dict(step=50, loss=2.0))
    view.update(job_dict(step=100, epoch=1, loss=1.8))  # epoch 1 complete
    view.update(job_dict(step=20, epoch=1, loss=1.7))  # epoch 2 under way: a new bar below
    view.finish(job_dict(status="succeeded", epoch=2, step=100, loss=1.5))
    text = out.getvalue()
    assert text.count("\r\x1b[2K") == 3
    bars = text.split("\n")
    assert "epoch 1/2 [############------------] 50/100" in bars[0] and "80 images/s" in bars[0]
    assert bars[0].rstrip().endswith("epoch 1/2 [########################] 100/100  loss 1.800  80 images/s  ETA 0:05")
    assert "epoch 2/2 [####--------------------] 20/100  loss 1.700" in bars[1]
    assert bars[2] == "abcd1234: succeeded, epoch 2/2, step 100/100, loss 1.500"


@pytest.fixture(scope="module")
def worker_env(tmp_path_factory):
    data = write_cifar10(tmp_path_factory.mktemp("cifar-1500"), train_per_batch=300, test=100)
    with env_with_worker("sqlite", tmp_path_factory.mktemp("progress"), data) as env:
        yield env


def run_on_a_terminal(env, *args) -> tuple[int, str, str]:
    """The CLI with stderr on a pseudo-terminal (as in a shell), stdout on a pipe."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "api_cli.main", *args], stdout=subprocess.PIPE, stderr=slave,
                            env={**env.vars, "COLUMNS": "160"}, cwd=REPO, text=True)
    os.close(slave)
    chunks: list[bytes] = []

    def drain():
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain)
    reader.start()
    stdout = proc.stdout.read()
    proc.wait(timeout=180)
    reader.join(timeout=10)
    os.close(master)
    return proc.returncode, stdout, b"".join(chunks).decode()


def test_wait_draws_bars_on_a_terminal_and_keeps_json_clean(worker_env):
    job_id = worker_env.submit_train(*SLOW)
    code, stdout, stderr = run_on_a_terminal(worker_env, "wait", job_id, "--timeout", "180", "--json")
    assert code == 0, stderr
    assert json.loads(stdout)["status"] == "succeeded", "stdout holds the JSON only"
    assert "\r\x1b[2K" in stderr, "redrawn in place"
    assert "epoch 1/3 [" in stderr and "/750" in stderr and "images/s" in stderr and "ETA" in stderr
    assert stderr.rstrip().splitlines()[-1].startswith(f"{job_id}: succeeded, epoch 3/3, step 750/750")


def test_wait_and_follow_print_plain_lines_when_not_a_terminal(worker_env):
    job_id = worker_env.submit_train(*SLOW)
    waited = worker_env.cli("wait", job_id, "--timeout", "180")
    assert waited.returncode == 0 and waited.stdout == ""
    lines = waited.stderr.splitlines()
    assert "\r" not in waited.stderr and "\x1b" not in waited.stderr
    running = [line for line in lines if ": running, epoch" in line]
    assert running, waited.stderr
    assert any("images/s, ETA" in line for line in running), waited.stderr
    assert len(set(lines)) == len(lines), "a line only when the recorded progress changed"
    assert lines[-1].startswith(f"{job_id}: succeeded, epoch 3/3, step 750/750, loss ")

    followed = worker_env.cli("status", job_id, "--follow", "--json")
    assert json.loads(followed.stdout)["status"] == "succeeded"
    assert followed.stderr.startswith(f"{job_id}: succeeded")

    # A job that never starts: --follow on the plain status, wait keeps exit 2 on timeout.
    queued = worker_env.submit_train("--epochs", "1", "--device", "cuda")
    timed_out = worker_env.cli("wait", queued, "--timeout", "1", check=False)
    assert timed_out.returncode == 2 and "timed out after 1 s; the job is still queued" in timed_out.stderr
    worker_env.cli("cancel", queued)
    follow_cancelled = worker_env.cli("status", queued, "--follow")
    assert "status    cancelled" in follow_cancelled.stdout
    assert worker_env.cli("wait", queued, check=False).returncode == 1

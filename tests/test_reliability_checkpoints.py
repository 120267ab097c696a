"""Corrupt or foreign checkpoints are refused with a clear error, before anything is queued
where the client can tell, and by the worker (weights-only, hash first) where it cannot."""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn as nn
from sqlalchemy import create_engine, text

from tests.conftest import make_env
from tests.test_cli_input import assert_one_line_error
from worker.model import Net


def database(env):
    return create_engine(env.vars.get("CIFARQ_DATABASE_URL") or f"sqlite:///{env.home / 'cifarq.db'}")


def corrupt_latest_checkpoint(env, job_id):
    engine = database(env)
    with engine.begin() as conn:
        checkpoint_id, weights = conn.execute(text(
            "SELECT id, weights FROM checkpoints WHERE job_id = :j ORDER BY epoch DESC LIMIT 1"), {"j": job_id}).one()
        damaged = bytearray(weights)
        damaged[len(damaged) // 2] ^= 0xFF
        conn.execute(text("UPDATE checkpoints SET weights = :w WHERE id = :i"), {"w": bytes(damaged), "i": checkpoint_id})
    engine.dispose()


def count_jobs(env):
    return len(env.cli_json("list", "--limit", "1000"))


@pytest.fixture
def trained(tmp_path, small_cifar):
    env, _ = make_env("sqlite", tmp_path / "home", small_cifar)
    env.start_worker()
    job_id = env.submit_train("--epochs", "2", "--lr", "0.01")
    assert env.cli("wait", job_id, "--timeout", "120").returncode == 0
    yield env, job_id
    env.stop_workers()


def test_changed_bytes_in_storage_are_refused_everywhere(trained, tmp_path):
    env, job_id = trained
    # An evaluation queued before the damage: the worker checks the hash and fails the job.
    queued_before = env.submit_train("--epochs", "1", "--device", "cuda")  # held: no GPU worker here
    evaluation = env.cli_json("submit", "evaluate", "--checkpoint", f"{job_id}:2", "--queue", "gpu")["id"]
    corrupt_latest_checkpoint(env, job_id)
    jobs = count_jobs(env)
    refused = env.cli("submit", "evaluate", "--checkpoint", job_id, check=False)
    assert_one_line_error(refused, f"checkpoint of job {job_id} after epoch 2 is corrupt", 1)
    assert count_jobs(env) == jobs, "nothing queued"
    export = env.cli("checkpoint", "export", job_id, str(tmp_path / "x.pt"), check=False)
    assert_one_line_error(export, "is corrupt", 1)
    assert not (tmp_path / "x.pt").exists()
    # The earlier epoch is intact and still usable.
    assert env.cli_json("submit", "evaluate", "--checkpoint", f"{job_id}:1")["status"] == "queued"

    env.start_worker("--queues", "gpu")  # a CPU worker that consumes the gpu queue, for this test
    assert env.cli("wait", evaluation, "--timeout", "120", check=False).returncode == 1
    status = env.cli_json("status", evaluation)
    assert status["status"] == "failed"
    assert status["error"] == f"checkpoint of job {job_id} after epoch 2 is corrupt: its sha256 does not match the stored hash"
    env.cli("cancel", queued_before, check=False)


def test_foreign_weights_files_are_refused_before_queueing(tmp_path, small_cifar):
    env, _ = make_env("sqlite", tmp_path / "home", small_cifar)
    marker = tmp_path / "code-ran"

    class RunsCode:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    files = {
        "evil.pth": ({"conv1.weight": RunsCode()}, "is refused: it would load posix.system"),
        "module.pth": (Net(), "is refused: it would load worker.model.Net"),
        "linear.pth": (nn.Linear(3, 4).state_dict(), "does not fit the tutorial's Net: missing keys conv1.weight"),
    }
    wide = Net().state_dict()
    wide["fc1.weight"] = torch.zeros(120, 500)
    files["shape.pth"] = (wide, "fc1.weight is [120, 500], expected [120, 400]")
    for name, (obj, expected) in files.items():
        torch.save(obj, tmp_path / name)
        assert_one_line_error(env.cli("submit", "evaluate", "--weights", str(tmp_path / name), check=False), expected, 1)
    assert not marker.exists(), "the pickle's code must never run"
    assert count_jobs(env) == 0

    # A state dict of the tutorial's Net (any width) is accepted.
    torch.save(Net(width=32).state_dict(), tmp_path / "good.pth")
    assert env.cli_json("submit", "evaluate", "--weights", str(tmp_path / "good.pth"))["status"] == "queued"

"""A job resumed from its checkpoint trains exactly as one that never stopped (CPU, no Celery)."""
from __future__ import annotations

import io

import pytest
import torch

from shared.jobspec import TrainConfig
from tests.fakedata import write_cifar10
from tests.recording_hooks import Recorder
from worker.checkpoints import CheckpointError, load_bytes
from worker.loop import Resume, StopRequested
from worker.train import train


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_cifar10(tmp_path_factory.mktemp("resume"), train_per_batch=20, test=20)


def test_resume_is_bit_identical(data_dir):
    config = TrainConfig(epochs=3, lr=0.01, seed=7)
    cpu = torch.device("cpu")
    straight = train(config, data_dir=data_dir, device=cpu, hooks=Recorder())

    # Stop in the middle of epoch 2, then resume from the checkpoint written after epoch 1.
    interrupted = Recorder(stop_after_steps=25 + 10)
    with pytest.raises(StopRequested):
        train(config, data_dir=data_dir, device=cpu, hooks=interrupted)
    assert [r["epoch"] for r in interrupted.epochs] == [1]
    weights, train_state = interrupted.checkpoint(1)
    state = load_bytes(train_state, expected_sha256=None, what="state")
    resume = Resume(model_state=load_bytes(weights, expected_sha256=None, what="weights"),
                    optimizer_state=state["optimizer"], epochs_done=state["epochs_done"])
    resumed = train(config, data_dir=data_dir, device=cpu, hooks=Recorder(), resume=resume)

    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), f"{name} differs after resume"
    # ...and a different seed really gives different weights, so the comparison can fail.
    other = train(TrainConfig(epochs=3, lr=0.01, seed=8), data_dir=data_dir, device=cpu, hooks=Recorder())
    assert not torch.equal(other.state_dict()["fc3.weight"], straight.state_dict()["fc3.weight"])


def test_checkpoint_with_a_changed_byte_is_refused(data_dir):
    hooks = Recorder()
    train(TrainConfig(epochs=1), data_dir=data_dir, device=torch.device("cpu"), hooks=hooks)
    weights, _ = hooks.checkpoint(1)
    import hashlib

    digest = hashlib.sha256(weights).hexdigest()
    damaged = bytearray(weights)
    damaged[len(damaged) // 2] ^= 0xFF
    with pytest.raises(CheckpointError, match="sha256 does not match"):
        load_bytes(bytes(damaged), expected_sha256=digest, what="checkpoint")


def test_pickle_that_would_run_code_is_refused():
    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    buffer = io.BytesIO()
    torch.save({"conv1.weight": Evil()}, buffer)
    with pytest.raises(CheckpointError, match="cannot be loaded weights-only"):
        load_bytes(buffer.getvalue(), expected_sha256=None, what="file")

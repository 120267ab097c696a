"""`--recipe fast` (worker/recipes/fast.py): its flags, resume, and a job through the queue on the
CPU on the small generated data set. Its accuracy goal (94% on a GPU) is not checked here."""
from __future__ import annotations

import io

import pytest
import torch

from shared.errors import CifarqError
from shared.jobspec import TrainConfig, parse_config
from shared.recipes import FAST_HYP
from tests.conftest import env_with_worker
from tests.fakedata import write_cifar10
from tests.recording_hooks import Recorder
from worker.loop import Resume
from worker.model import FastNet, Net, model_from_state_dict
from worker.recipes.fast import make_optimizer, triangle
from worker.train import train

TINY = ["--recipe", "fast", "--epochs", "2", "--batch-size", "50", "--width", "8", "--log-every", "2", "--seed", "3"]




def test_recipe_defaults_and_flags():
    fast = TrainConfig(recipe="fast")
    assert (fast.epochs, fast.batch_size, fast.lr, fast.momentum, fast.width) == (10, 1024, 11.5, 0.85, 64)
    assert (fast.label_smoothing, fast.tta_level) == (0.2, 2)
    assert TrainConfig(recipe="fast", epochs=3, tta_level=0).epochs == 3
    tutorial = TrainConfig()
    assert (tutorial.epochs, tutorial.batch_size, tutorial.lr, tutorial.width) == (2, 4, 0.001, 6)
    assert tutorial.tta_level is None and TrainConfig(**tutorial.model_dump()) == tutorial
    with pytest.raises(CifarqError, match=r"^invalid --tta-level 1: only --recipe fast has it$"):
        parse_config(TrainConfig, {"tta_level": 1})
    with pytest.raises(CifarqError, match=r"^invalid --label-smoothing 1\.5: "):
        parse_config(TrainConfig, {"recipe": "fast", "label_smoothing": 1.5})
    with pytest.raises(CifarqError, match=r"^invalid --recipe 'slow': "):
        parse_config(TrainConfig, {"recipe": "slow"})


def test_schedule_and_whitening():
    assert triangle(0.0) == pytest.approx(0.2) and triangle(0.23) == pytest.approx(1.0)
    assert triangle(1.0) == pytest.approx(0.07)
    torch.manual_seed(0)
    images = torch.randint(0, 256, (300, 3, 32, 32), dtype=torch.uint8)
    model = FastNet(width=8)
    model.init_whitening(images)
    # Whitened patches have (near) unit second moment along each direction, and none across.
    out = torch.nn.functional.conv2d(model.normalize(images), model.whiten.weight[:12]).transpose(0, 1).reshape(12, -1)
    moments = out @ out.T / out.shape[1]
    assert torch.allclose(moments, torch.eye(12), atol=0.02)


def test_resume_is_bit_identical(tmp_path):
    data_dir = write_cifar10(tmp_path, train_per_batch=20)  # 100 images
    config = TrainConfig(recipe="fast", epochs=2, batch_size=32, width=4, seed=1, log_every=100)  # 3 steps/epoch
    straight = Recorder()
    train(config, data_dir=data_dir, device=torch.device("cpu"), hooks=straight)
    assert [e["epoch"] for e in straight.epochs] == [1, 2]
    # The rate each epoch ended with, as the schedule had it (TensorBoard's train/lr), not --lr.
    assert [e["lr"] for e in straight.epochs] == pytest.approx([config.lr * triangle(0.5), config.lr * triangle(1.0)])
    assert any(line.startswith("timing: data loading") for line in straight.lines)
    state = torch.load(io.BytesIO(straight.epochs[0]["train_state"]), weights_only=True)
    assert state["epochs_done"] == 1 and state["config"]["recipe"] == "fast"
    resume = Resume(model_state=torch.load(io.BytesIO(straight.epochs[0]["weights"]), weights_only=True),
                    optimizer_state=state["optimizer"], epochs_done=1)
    resumed = Recorder()
    train(config, data_dir=data_dir, device=torch.device("cpu"), hooks=resumed, resume=resume)
    assert resumed.epochs[0]["weights"] == straight.epochs[1]["weights"]
    # A checkpoint rebuilds the fast network for evaluate jobs.
    model = model_from_state_dict(torch.load(io.BytesIO(resumed.epochs[0]["weights"]), weights_only=True), recipe="fast")
    assert isinstance(model, FastNet) and model.block1.conv1.out_channels == 4


@pytest.fixture(scope="module")
def sqlite_worker_env(tmp_path_factory, small_cifar):
    """The embedded default with one real worker. The recipe's code does not touch the backend;
    both backends carry the tutorial recipe in tests/test_end_to_end.py."""
    with env_with_worker("sqlite", tmp_path_factory.mktemp("fast"), small_cifar) as env:
        yield env


def test_fast_job_through_the_queue(sqlite_worker_env):
    env = sqlite_worker_env
    # Every live worker is a CPU worker: the submitter hears what that costs (no estimate yet).
    submitted = env.cli("submit", "train", *TINY)
    job_id = submitted.stdout.strip()
    assert "warning: --recipe fast is built for a GPU; on a CPU it takes minutes per epoch" in submitted.stderr
    waited = env.cli("wait", job_id, "--timeout", "240", check=False)
    assert waited.returncode == 0, waited.stderr + env.cli("logs", job_id, check=False).stdout
    status = env.cli_json("status", job_id)
    assert status["status"] == "succeeded" and status["params"]["recipe"] == "fast"
    assert status["params"]["tta_level"] == 2 and status["params"]["label_smoothing"] == 0.2
    assert status["progress"]["steps_per_epoch"] == 4 and status["progress"]["epoch"] == 2
    results = env.cli_json("results", job_id)
    assert sum(map(sum, results["confusion_matrix"])) == 100
    logs = env.cli("logs", job_id).stdout
    assert "timing: data loading" in logs and "first step" in logs and "Accuracy of the network" in logs

    # Now a fast job on a CPU is on record: the next one gets an estimate from it. (Parked on a
    # queue nobody consumes, then cancelled: only the warning is wanted.)
    parked = env.cli("submit", "train", *TINY, "--epochs", "30", "--device", "cpu", "--queue", "parked")
    assert f"s each, as job {job_id} took on a CPU here). For a quick CPU run, leave out --recipe fast" \
        in parked.stderr
    assert "it takes about " in parked.stderr and " for 30 epochs (" in parked.stderr
    env.cli("cancel", parked.stdout.strip())
    tutorial = env.cli("submit", "train", "--epochs", "1", "--queue", "parked")
    assert "recipe fast" not in tutorial.stderr
    env.cli("cancel", tutorial.stdout.strip())

    # An evaluate job rebuilds the fast network from the checkpoint: the same predictions.
    evaluate_id = env.cli_json("submit", "evaluate", "--checkpoint", job_id)["id"]
    assert env.cli("wait", evaluate_id, "--timeout", "120", check=False).returncode == 0
    assert env.cli_json("results", evaluate_id)["confusion_matrix"] == results["confusion_matrix"]


def test_a_checkpoint_is_evaluated_with_its_own_jobs_test_time_augmentation(sqlite_worker_env):
    env = sqlite_worker_env
    job_id = env.submit_train(*TINY, "--tta-level", "0")
    assert env.cli("wait", job_id, "--timeout", "240", check=False).returncode == 0
    evaluate_id = env.cli_json("submit", "evaluate", "--checkpoint", job_id)["id"]
    assert env.cli("wait", evaluate_id, "--timeout", "120", check=False).returncode == 0
    # TTA level 2 (the recipe's default) would give other predictions than the job's level 0.
    assert env.cli_json("results", evaluate_id)["confusion_matrix"] == env.cli_json("results", job_id)["confusion_matrix"]

    # Weights of the tutorial's Net in a fast job's checkpoint: the error names the network expected.
    import hashlib

    from sqlalchemy import create_engine, text

    buffer = io.BytesIO()
    torch.save(Net().state_dict(), buffer)
    weights = buffer.getvalue()
    engine = create_engine(f"sqlite:///{env.home / 'cifarq.db'}")
    with engine.begin() as conn:
        conn.execute(text("UPDATE checkpoints SET weights = :w, sha256 = :h WHERE job_id = :j"),
                     {"w": weights, "h": hashlib.sha256(weights).hexdigest(), "j": job_id})
    engine.dispose()
    foreign = env.cli_json("submit", "evaluate", "--checkpoint", job_id)["id"]
    assert env.cli("wait", foreign, "--timeout", "120", check=False).returncode == 1
    error = env.cli_json("status", foreign)["error"]
    assert error.startswith(f"checkpoint of job {job_id} after epoch 2 does not fit the fast recipe's network: ")


def test_fast_only_flag_refused_by_the_cli(sqlite_worker_env):
    result = sqlite_worker_env.cli("submit", "train", "--tta-level", "1", check=False)
    assert result.returncode != 0 and "invalid --tta-level 1: only --recipe fast has it" in result.stderr


def test_weight_decay_per_step_is_airbenchs_in_every_group():
    # airbench94: each weight shrinks by 0.0153 * batch / (1024 * (1 + 1/(1 - momentum))) per step,
    # times the schedule, for the 64x-rate BatchNorm biases too. torch's SGD multiplies
    # weight_decay by the group's rate, so that product is what must come out.
    config = TrainConfig(recipe="fast")
    model = FastNet(width=8)
    optimizer = make_optimizer(model, config, batch_size=1024)
    expected = FAST_HYP["weight_decay"] * 1024 / (1024 * (1 + 1 / (1 - config.momentum)))
    biases, others = optimizer.param_groups
    assert biases["lr"] == pytest.approx(64 * others["lr"])
    for group in optimizer.param_groups:
        assert group["lr"] * group["weight_decay"] == pytest.approx(expected)
        assert group["initial_lr"] == group["lr"] and group["nesterov"]
    # And it is what one step does: a zero gradient leaves only the decay, which the first
    # Nesterov step applies (1 + momentum) times (its buffer starts at the gradient).
    weight = model.head.weight
    before = weight.detach().clone()
    for p in model.parameters():
        p.grad = torch.zeros_like(p) if p.requires_grad else None
    optimizer.step()
    assert torch.allclose(weight, before * (1 - (1 + config.momentum) * expected), atol=1e-7)
    assert model.whiten.bias.abs().max() == 0, "airbench's whitening bias starts at zero"

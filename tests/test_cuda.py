"""The CUDA paths on a real GPU: the graph-captured tutorial step, the fast recipe in bfloat16,
checkpoints written on a GPU, and a job through the queue that records the GPU's name.

These need a CUDA device, so CI (CPU only) skips them with that reason; they ran on an NVIDIA GPU
through bench/gpu_session.sh (docs/benchmarks.md says when and on which). The CPU-side halves of
the same code (the step's math, the eager fallback when capture fails, the fast recipe end to
end) are tested everywhere in tests/test_training.py and tests/test_fast_recipe.py.
"""
from __future__ import annotations

import io

import pytest
import torch

from shared.jobspec import TrainConfig
from tests.conftest import env_with_worker
from tests.fakedata import write_cifar10
from tests.recording_hooks import Recorder
from tests.test_training import max_difference, reference_loop
from worker.data import load_split
from worker.evaluate import evaluate
from worker.model import model_from_state_dict
from worker.train import train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")
CUDA = torch.device("cuda")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_cifar10(tmp_path_factory.mktemp("cifar"))  # 200 training images, 100 test


def test_graph_replayed_steps_match_the_tutorial_loop(data_dir):
    # Batch 3 over 200 images: 66 replays of the captured step and one short eager step per epoch.
    config = TrainConfig(epochs=2, batch_size=3, lr=0.01, seed=5, log_every=20)
    hooks = Recorder()
    model = train(config, data_dir=data_dir, device=CUDA, hooks=hooks)
    assert not any("capture failed" in line for line in hooks.lines), hooks.lines
    assert next(model.parameters()).is_cuda
    reference = reference_loop(config, load_split(data_dir, train=True), epochs=2)  # autograd, on the CPU
    assert max_difference(model.cpu(), reference) < 1e-4
    assert [line for line in hooks.lines if line.startswith("[1,    20] loss: ")]


def test_checkpoints_written_on_a_gpu_load_anywhere(data_dir):
    hooks = Recorder()
    train(TrainConfig(epochs=1, seed=1, log_every=1000), data_dir=data_dir, device=CUDA, hooks=hooks)
    weights, train_state = hooks.checkpoint(1)
    # No map_location: the bytes hold CPU tensors, as `cifarq checkpoint export` hands them out.
    state = torch.load(io.BytesIO(weights), weights_only=True)
    assert all(t.device.type == "cpu" for t in state.values())
    optimizer = torch.load(io.BytesIO(train_state), weights_only=True)["optimizer"]
    assert all(t.device.type == "cpu" for s in optimizer["state"].values() for t in s.values())


def test_fast_recipe_trains_in_bfloat16_and_evaluates_with_tta(tmp_path):
    data_dir = write_cifar10(tmp_path, train_per_batch=400)  # 2,000 images
    config = TrainConfig(recipe="fast", epochs=4, batch_size=250, width=16, seed=0, log_every=4)
    hooks = Recorder()
    model = train(config, data_dir=data_dir, device=CUDA, hooks=hooks)
    assert any(line.startswith("timing: data loading") for line in hooks.lines)
    result = evaluate(model, load_split(data_dir, train=False), device=CUDA)
    assert result.accuracy > 0.5, f"fast recipe on the GPU: {result.accuracy:.2%} on an easy set"
    # A checkpoint written on the GPU rebuilds the fast network (for evaluate jobs anywhere).
    weights, _ = hooks.checkpoint(2)
    restored = model_from_state_dict(torch.load(io.BytesIO(weights), weights_only=True), recipe="fast")
    assert restored.block1.conv1.out_channels == 16


def test_a_job_through_the_queue_runs_on_the_gpu(tmp_path, small_cifar):
    with env_with_worker("sqlite", tmp_path / "home", small_cifar) as env:
        job_id = env.submit_train("--epochs", "2", "--seed", "1")  # --device auto
        assert env.cli("wait", job_id, "--timeout", "300", check=False).returncode == 0
        status = env.cli_json("status", job_id)
        assert status["status"] == "succeeded"
        assert status["device"] == torch.cuda.get_device_name(0) and "NVIDIA" in status["device"]
        assert status["provenance"]["device"] == f"cuda:0 ({status['device']})"
        assert torch.version.cuda is not None and status["provenance"]["cuda"] == torch.version.cuda
        results = env.cli_json("results", job_id)
        evaluated = env.cli_json("submit", "evaluate", "--checkpoint", job_id)["id"]
        assert env.cli("wait", evaluated, "--timeout", "300", check=False).returncode == 0
        assert env.cli_json("results", evaluated)["confusion_matrix"] == results["confusion_matrix"]


def test_a_pack_replays_its_captured_step_and_matches_each_points_cpu_job(data_dir):
    # Batch 3 over 200 images: the pack's captured step, then its short last batch eagerly.
    from worker.recipes.packed import PackPoint, train_packed

    configs = [TrainConfig(epochs=2, batch_size=3, lr=lr, seed=seed, log_every=20, device="cuda")
               for lr, seed in ((0.01, 5), (0.002, 6), (0.005, 7))]
    points = [PackPoint(config, Recorder()) for config in configs]
    left = []
    finished = train_packed(points, data_dir=data_dir, device=CUDA, on_leave=lambda p, exc: left.append(exc))
    assert left == [] and finished == points
    for config, point in zip(configs, points):
        assert not any("capture failed" in line for line in point.hooks.lines), point.hooks.lines
        reference = reference_loop(config, load_split(data_dir, train=True), epochs=2)  # autograd, on the CPU
        assert max_difference(point.model.cpu(), reference) < 1e-4

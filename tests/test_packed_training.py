"""The pack's loop (worker/recipes/packed.py) against each point's standalone job: same initial
weights, same batches, so the same weights up to float rounding; the same checkpoint; a point
that leaves (cancelled, diverged) leaves the others' training untouched; a point resumed from a
later epoch joins the pack there."""
from __future__ import annotations

import io

import pytest
import torch

from shared.jobspec import TrainConfig
from tests.fakedata import write_cifar10
from tests.recording_hooks import Recorder
from worker.data import load_split
from worker.evaluate import evaluate
from worker.loop import Diverged, Resume, StopRequested
from worker.model import Net
from worker.recipes.packed import PackPoint, train_packed
from worker.train import train

CPU = torch.device("cpu")
# Different seeds (so different initial weights and batches), learning rates and momentums.
POINTS = [dict(seed=0, lr=0.001, momentum=0.9), dict(seed=1, lr=0.01, momentum=0.9),
          dict(seed=2, lr=0.005, momentum=0.0)]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_cifar10(tmp_path_factory.mktemp("cifar"), train_per_batch=80)  # 400 images: 100 steps at batch 4


def config(epochs: int = 1, **values) -> TrainConfig:
    return TrainConfig(epochs=epochs, log_every=25, device="cpu", **values)


def standalone(cfg: TrainConfig, data_dir, resume=None) -> Recorder:
    hooks = Recorder()
    train(cfg, data_dir=data_dir, device=CPU, hooks=hooks, resume=resume, cpu_compile="never")
    return hooks


def packed(configs: list[TrainConfig], data_dir, hooks=None, resumes=None):
    hooks = hooks or [Recorder() for _ in configs]
    points = [PackPoint(cfg, h, r) for cfg, h, r in zip(configs, hooks, resumes or [None] * len(configs))]
    left = {}
    finished = train_packed(points, data_dir=data_dir, device=CPU, on_leave=lambda p, exc: left.update({id(p): exc}))
    return points, finished, {points.index(p): left[id(p)] for p in points if id(p) in left}


def load(data: bytes):
    return torch.load(io.BytesIO(data), weights_only=False)


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_each_point_matches_its_standalone_job_after_100_steps(data_dir):
    configs = [config(**p) for p in POINTS]
    points, finished, left = packed(configs, data_dir)
    assert left == {} and finished == points
    for cfg, point in zip(configs, points):
        alone = standalone(cfg, data_dir)
        weights, state = point.hooks.checkpoint(1)
        alone_weights, alone_state = alone.checkpoint(1)
        assert max_difference(load(weights), load(alone_weights)) < 1e-4, cfg
        # The checkpoint is the standalone job's: same keys, config, optimizer state and layout.
        state, alone_state = load(state), load(alone_state)
        assert state["config"] == alone_state["config"] == cfg.model_dump()
        assert state["epochs_done"] == alone_state["epochs_done"] == 1
        assert state["optimizer"]["param_groups"] == alone_state["optimizer"]["param_groups"]
        assert state["optimizer"]["state"].keys() == alone_state["optimizer"]["state"].keys()
        for key, value in alone_state["optimizer"]["state"].items():
            if value.get("momentum_buffer") is not None:
                assert (value["momentum_buffer"] - state["optimizer"]["state"][key]["momentum_buffer"]).abs().max() < 1e-4
        # The same log lines, up to the loss's last digit and the timing.
        assert [line.split(" loss")[0] for line in point.hooks.lines] == [line.split(" loss")[0] for line in alone.lines]
        # The exported weights load into the tutorial's own Net.
        Net().load_state_dict(load(weights))


def test_final_accuracy_matches_the_standalone_jobs(data_dir):
    configs = [config(epochs=3, **p) for p in POINTS]
    points, finished, _ = packed(configs, data_dir)
    test_set = load_split(data_dir, train=False)
    for cfg, point in zip(configs, points):
        alone = Net()
        alone.load_state_dict(load(standalone(cfg, data_dir).checkpoint(3)[0]))
        packed_accuracy = evaluate(point.model, test_set, device=CPU).accuracy
        alone_accuracy = evaluate(alone, test_set, device=CPU).accuracy
        assert abs(packed_accuracy - alone_accuracy) <= 0.015, (cfg, packed_accuracy, alone_accuracy)
    # Not a vacuous match: the learning rates led to different models.
    assert max_difference(points[0].model.state_dict(), points[1].model.state_dict()) > 1e-2


def test_a_cancelled_point_leaves_alone_and_the_others_are_untouched(data_dir):
    configs = [config(**p) for p in POINTS]
    # Its third safe point: a pack reports every 10 steps (packed.REPORT_EVERY), and at log lines.
    hooks = [Recorder(), Recorder(stop_after_steps=3), Recorder()]
    points, finished, left = packed(configs, data_dir, hooks=hooks)
    assert list(left) == [1] and isinstance(left[1], StopRequested)
    assert "at step 25" in str(left[1]) and hooks[1].epochs == []
    assert finished == [points[0], points[2]]
    for i in (0, 2):
        alone = standalone(configs[i], data_dir)
        assert max_difference(load(hooks[i].checkpoint(1)[0]), load(alone.checkpoint(1)[0])) < 1e-4


def test_a_diverging_point_fails_alone(data_dir):
    configs = [config(**POINTS[0]), config(seed=1, lr=100.0, momentum=0.9)]
    points, finished, left = packed(configs, data_dir)
    assert list(left) == [1] and isinstance(left[1], Diverged)
    assert str(left[1]).startswith("diverged: the loss is nan") and "lr 100" in str(left[1])
    assert finished == [points[0]]
    alone = standalone(configs[0], data_dir)
    assert max_difference(load(points[0].hooks.checkpoint(1)[0]), load(alone.checkpoint(1)[0])) < 1e-4
    # Its standalone job fails the same way, at the same log line.
    with pytest.raises(Diverged, match=str(left[1]).split(" (")[0].replace("diverged: ", "")):
        standalone(configs[1], data_dir)


def test_a_point_resumed_after_epoch_1_joins_the_pack_at_epoch_2(data_dir):
    first, second = config(epochs=2, **POINTS[0]), config(epochs=2, **POINTS[1])
    uninterrupted = standalone(first, data_dir)
    weights, state = uninterrupted.checkpoint(1)
    state = load(state)
    resume = Resume(model_state=load(weights), optimizer_state=state["optimizer"], epochs_done=1)
    points, finished, left = packed([first, second], data_dir, resumes=[resume, None])
    assert left == {} and len(finished) == 2
    assert [e["epoch"] for e in points[0].hooks.epochs] == [2]  # epoch 1 is not trained again
    assert [e["epoch"] for e in points[1].hooks.epochs] == [1, 2]
    assert "resuming after epoch 1 from its checkpoint" in points[0].hooks.lines
    assert max_difference(load(points[0].hooks.checkpoint(2)[0]), load(uninterrupted.checkpoint(2)[0])) < 1e-4


def test_points_of_different_widths_are_not_one_pack(data_dir):
    with pytest.raises(ValueError, match="one width, batch size, epochs and device"):
        packed([config(width=6), config(width=8)], data_dir)


def test_a_compiled_pack_matches_the_standalone_jobs(data_dir):
    # CIFARQ_CPU_COMPILE=always: the pack's full-batch step through torch.compile, as a long
    # job's would be (the tests share one inductor cache: tests/conftest.py).
    configs = [config(**p) for p in POINTS[:2]]
    hooks = [Recorder(), Recorder()]
    points = [PackPoint(cfg, h) for cfg, h in zip(configs, hooks)]
    finished = train_packed(points, data_dir=data_dir, device=CPU, on_leave=lambda p, exc: None, cpu_compile="always")
    assert finished == points
    assert hooks[0].phases[:2] == ["compiling", "training"] and hooks[0].compile_seconds > 0
    assert not any("failed" in line for line in hooks[0].lines), hooks[0].lines
    for cfg, h in zip(configs, hooks):
        alone = standalone(cfg, data_dir)
        assert max_difference(load(h.checkpoint(1)[0]), load(alone.checkpoint(1)[0])) < 1e-4, cfg

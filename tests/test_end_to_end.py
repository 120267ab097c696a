"""Submit through the CLI -> a real worker process -> records in the database, on each backend."""
from __future__ import annotations

import hashlib

import pytest
import torch

from tests.tutorial_net import TutorialNet

# A quick recipe for the 200-image set: the tutorial's defaults would need many epochs to leave chance.
FAST = ["--epochs", "8", "--lr", "0.01", "--batch-size", "4", "--log-every", "10", "--seed", "1"]


def stored_checkpoints(env, job_id):
    """Read straight from the database, not through cifarq's own code."""
    from sqlalchemy import create_engine, text

    url = env.vars.get("CIFARQ_DATABASE_URL") or f"sqlite:///{env.home / 'cifarq.db'}"
    engine = create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT epoch, weights, sha256, size FROM checkpoints WHERE job_id = :j ORDER BY epoch"),
                            {"j": job_id}).all()
    engine.dispose()
    return rows


def test_train_then_evaluate_its_checkpoint(backend_env, tmp_path):
    env = backend_env
    submitted = env.cli_json("submit", "train", *FAST)
    assert submitted["status"] == "queued" and submitted["id"]
    job_id = submitted["id"]

    waited = env.cli("wait", job_id, "--timeout", "180")
    assert waited.returncode == 0, waited.stderr

    status = env.cli_json("status", job_id)
    assert status["id"] == job_id and status["kind"] == "train" and status["status"] == "succeeded"
    assert status["device"] == "cpu" and status["attempts"] == 1 and status["error"] is None
    assert status["params"]["epochs"] == 8 and status["params"]["lr"] == 0.01
    assert status["progress"]["epoch"] == 8 and status["progress"]["epochs"] == 8
    assert status["progress"]["steps_per_epoch"] == 50 and status["progress"]["step"] == 50
    assert status["progress"]["loss"] > 0

    results = env.cli_json("results", job_id)
    assert results["job_id"] == job_id
    assert [row["class"] for row in results["per_class"]][:2] == ["airplane", "automobile"]
    assert len(results["per_class"]) == 10 and sum(r["total"] for r in results["per_class"]) == 100
    matrix = results["confusion_matrix"]
    assert len(matrix) == 10 and all(len(row) == 10 for row in matrix) and sum(map(sum, matrix)) == 100
    for i, row in enumerate(results["per_class"]):
        assert row["correct"] == matrix[i][i] and row["total"] == sum(matrix[i])
    assert results["accuracy"] == pytest.approx(sum(matrix[i][i] for i in range(10)) / 100)
    assert results["accuracy"] > 0.3, "the fake classes are easy: far above chance (0.1) after 8 epochs"
    assert status["metrics"]["test_accuracy"] == pytest.approx(results["accuracy"])

    # One checkpoint per epoch, each matching its stored hash and size.
    checkpoints = stored_checkpoints(env, job_id)
    assert [c.epoch for c in checkpoints] == list(range(1, 9))
    for c in checkpoints:
        assert hashlib.sha256(c.weights).hexdigest() == c.sha256 and len(c.weights) == c.size

    # TensorBoard event files under the artifacts directory, with the loss of every epoch.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(env.home / "artifacts" / job_id / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, 9))
    assert events.Scalars("test/accuracy")[-1].value == pytest.approx(results["accuracy"])

    log = env.cli("logs", job_id).stdout
    assert "[1,    10] loss:" in log and "Finished Training" in log
    assert "Accuracy of the network on the 100 test images" in log

    # Evaluating the stored checkpoint gives the very same per-class counts.
    evaluation = env.cli_json("submit", "evaluate", "--checkpoint", job_id)["id"]
    assert env.cli("wait", evaluation, "--timeout", "120").returncode == 0
    assert env.cli_json("status", evaluation)["kind"] == "evaluate"
    again = env.cli_json("results", evaluation)
    assert again["confusion_matrix"] == matrix and again["per_class"] == results["per_class"]

    # An older epoch is a different model: its counts are its own.
    first_epoch = env.cli_json("submit", "evaluate", "--checkpoint", f"{job_id}:1")["id"]
    assert env.cli("wait", first_epoch, "--timeout", "120").returncode == 0
    assert env.cli_json("results", first_epoch)["total"] == 100

    # Export loads into the tutorial's own Net with plain PyTorch, and evaluates the same via --weights.
    exported = tmp_path / "cifar_net.pth"
    env.cli("checkpoint", "export", f"{job_id}:8", str(exported))
    # Onto a directory, even with --force: one line, and nothing left behind in it.
    folder = tmp_path / "a-folder"
    folder.mkdir()
    refused = env.cli("checkpoint", "export", f"{job_id}:8", str(folder), "--force", check=False)
    assert refused.returncode == 1 and refused.stderr == f"error: {folder} is a directory; give the path of the .pt file to write\n"
    assert list(folder.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    net = TutorialNet()
    net.load_state_dict(torch.load(exported, weights_only=True))
    from_file = env.cli_json("submit", "evaluate", "--weights", str(exported))["id"]
    assert env.cli("wait", from_file, "--timeout", "120").returncode == 0
    assert env.cli_json("results", from_file)["confusion_matrix"] == matrix

    listed = env.cli_json("list", "--limit", "100")
    ids = [job["id"] for job in listed]
    assert ids.index(from_file) < ids.index(job_id), "newest first"
    assert {job["id"] for job in env.cli_json("list", "--kind", "train")} >= {job_id}
    assert all(job["kind"] == "evaluate" for job in env.cli_json("list", "--kind", "evaluate"))


def test_cuda_job_waits_for_a_gpu_worker_and_can_be_cancelled(backend_env):
    env = backend_env
    job_id = env.submit_train("--epochs", "1", "--device", "cuda")
    # "cuda" goes to the gpu queue, which a CPU-only worker does not consume: it stays queued.
    status = env.cli_json("status", job_id)
    assert status["status"] == "queued" and status["params"]["device"] == "cuda"
    assert env.cli("wait", job_id, "--timeout", "1", check=False).returncode == 2
    assert env.cli("cancel", job_id).returncode == 0
    status = env.cli_json("status", job_id)
    assert status["status"] == "cancelled" and status["attempts"] == 0
    assert env.cli("wait", job_id, "--timeout", "5", check=False).returncode == 1
    again = env.cli("cancel", job_id, check=False)
    assert again.returncode == 1 and again.stderr == f"error: job {job_id} has already ended (cancelled): nothing to cancel\n"


def test_a_cuda_job_that_reaches_a_cpu_worker_is_handed_back_not_failed(tmp_path, small_cifar):
    # A worker told to consume the gpu queue on a host without CUDA (a --queues typo, a GPU
    # that went away): the job is not its fault and must not end failed.
    from tests.conftest import make_env

    env, cleanup = make_env("sqlite", tmp_path / "home", small_cifar)
    try:
        worker = env.start_worker("--queues", "default,cpu,gpu")
        job_id = env.submit_train("--epochs", "1", "--device", "cuda")
        status = env.wait_for(job_id, lambda s: "handed back" in (s["error"] or ""), timeout=60, what="handed back")
        assert status["status"] == "queued" and status["attempts"] == 0
        assert status["error"] == "device cuda asked for, but this worker has no CUDA device; handed back to queue gpu"
        assert "handed back to the queue" in worker.log_path.read_text()
        env.cli("cancel", job_id)
        assert env.cli_json("status", job_id)["status"] == "cancelled"
    finally:
        env.stop_workers()
        cleanup()

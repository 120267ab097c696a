"""The data set kept in memory between jobs and read ahead by the worker's parent (worker/data.py):
read again when a file changes on disk, never downloaded or extracted ahead of a job."""
from __future__ import annotations

import re
import shutil

import torch

from tests.conftest import make_env
from tests.fakedata import write_cifar10
from worker.data import load_split, read_ahead


def test_a_split_is_kept_until_one_of_its_files_changes(tmp_path):
    root = write_cifar10(tmp_path / "data", train_per_batch=8, test=10)
    first = load_split(root, train=True)
    assert load_split(root, train=True) is first
    assert load_split(root, train=False) is not first  # train and test are kept apart

    other = write_cifar10(tmp_path / "other", train_per_batch=12, test=10, seed=1)
    shutil.copy(other / "cifar-10-batches-py" / "data_batch_2", root / "cifar-10-batches-py" / "data_batch_2")
    changed = load_split(root, train=True)
    assert len(changed) == 8 * 4 + 12
    assert torch.equal(changed.images[:8], first.images[:8])  # batch 1 as before, batch 2 anew
    assert not torch.equal(changed.images[8:16], first.images[8:16])
    assert load_split(other, train=True) is not changed  # another folder is another data set


def test_read_ahead_leaves_a_data_set_not_in_place_to_the_first_job(tmp_path):
    archive_only = tmp_path / "archive-only"
    archive_only.mkdir()
    (archive_only / "cifar-10-python.tar.gz").write_bytes(b"not read ahead")
    assert read_ahead(tmp_path / "nothing") is False
    assert read_ahead(archive_only) is False
    assert not (tmp_path / "nothing").exists()  # no folder made, nothing downloaded
    assert sorted(p.name for p in archive_only.iterdir()) == ["cifar-10-python.tar.gz"]  # nothing extracted
    root = write_cifar10(tmp_path / "data", train_per_batch=8, test=10)
    assert read_ahead(root) is True
    assert len(load_split(root, train=True)) == 40 and len(load_split(root, train=False)) == 10


def test_a_worker_trains_on_the_data_as_it_is_when_the_job_starts(tmp_path):
    """The worker's parent read the data set at its start; a batch file replaced afterwards is
    what the next job trains on (its steps per epoch say how many images it saw)."""
    data = write_cifar10(tmp_path / "data", train_per_batch=8, test=20)
    env, cleanup = make_env("sqlite", tmp_path / "home", data)
    try:
        worker = env.start_worker()
        first = env.submit_train("--epochs", "1")
        assert env.cli("wait", first, "--timeout", "120", check=False).returncode == 0
        assert env.cli_json("status", first)["progress"]["steps_per_epoch"] == 40 // 4

        bigger = write_cifar10(tmp_path / "bigger", train_per_batch=24, test=20, seed=1)
        shutil.copy(bigger / "cifar-10-batches-py" / "data_batch_5", data / "cifar-10-batches-py" / "data_batch_5")
        second = env.submit_train("--epochs", "1")
        assert env.cli("wait", second, "--timeout", "120", check=False).returncode == 0
        assert env.cli_json("status", second)["progress"]["steps_per_epoch"] == (32 + 24) // 4
        assert "not read ahead" not in worker.log_path.read_text()
    finally:
        env.stop_workers()
        cleanup()


def test_a_data_set_that_does_not_read_stops_neither_the_worker_nor_the_record(tmp_path):
    data = write_cifar10(tmp_path / "data", train_per_batch=8, test=10)
    batch = data / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:100])
    env, cleanup = make_env("sqlite", tmp_path / "home", data)
    try:
        worker = env.start_worker()
        assert re.search(r"the data set was not read ahead: \S+/data_batch_3 is not a CIFAR-10 batch file",
                         worker.log_path.read_text())
        job = env.submit_train("--epochs", "1")
        assert env.cli("wait", job, "--timeout", "120", check=False).returncode == 1
        assert "data_batch_3 is not a CIFAR-10 batch file" in env.cli_json("status", job)["error"]
    finally:
        env.stop_workers()
        cleanup()

"""Missing or malformed data: a clear message, and a failed job that carries it (real worker)."""
from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest

from tests.conftest import make_env
from tests.fakedata import write_cifar10
from worker.data import DataError, load_split


@pytest.fixture
def broken_data(tmp_path):
    root = write_cifar10(tmp_path / "data", train_per_batch=8, test=10)
    return root / "cifar-10-batches-py"


def test_truncated_batch_is_named(broken_data):
    data = (broken_data / "data_batch_3").read_bytes()
    (broken_data / "data_batch_3").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"data_batch_3 is not a CIFAR-10 batch file"):
        load_split(broken_data.parent, train=True)


class Planted:
    """What an attacker who can write the data volume would plant: a pickle that runs a command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_would_run_code_is_refused_by_the_worker_and_the_report(broken_data, tmp_path):
    from shared.cifar_files import read_test_batch

    marker = tmp_path / "the-code-ran"
    for name in ("data_batch_2", "test_batch"):
        with open(broken_data / name, "wb") as f:
            pickle.dump({"data": Planted(marker), "labels": [0]}, f)
    with pytest.raises(DataError, match=r"data_batch_2 is not a CIFAR-10 batch file: .* names posix.system"):
        load_split(broken_data.parent, train=True)
    with pytest.raises(DataError, match=r"test_batch is not a CIFAR-10 batch file: .* names posix.system"):
        read_test_batch(broken_data.parent)  # what `cifarq report` reads
    assert not marker.exists(), "the planted code ran"


def test_the_official_format_still_loads(tmp_path):
    """Python 2-style pickles of numpy arrays (the official files), as numpy 1.x and 2.x write them."""
    import numpy as np

    from shared.cifar_files import read_batch

    data = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072)
    for protocol in (2, 4, 5):
        path = tmp_path / f"batch_{protocol}"
        with open(path, "wb") as f:
            pickle.dump({b"data": data, b"labels": [3, 7], b"batch_label": b"x", b"filenames": [b"a", b"b"]}, f,
                        protocol=protocol)
        images, labels = read_batch(path, str(path), num_classes=10)
        assert images.shape == (2, 3, 32, 32) and labels.tolist() == [3, 7]


def test_wrong_shape_is_named(broken_data):
    with open(broken_data / "test_batch", "wb") as f:
        pickle.dump({"data": b"\x00" * 100, "labels": [1]}, f)
    with pytest.raises(DataError, match=r"test_batch: data must be uint8 of shape \(N, 3072\)"):
        load_split(broken_data.parent, train=False)


def test_labels_out_of_range(broken_data):
    import numpy as np

    with open(broken_data / "test_batch", "wb") as f:
        pickle.dump({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 10]}, f)
    with pytest.raises(DataError, match=r"labels outside 0..9"):
        load_split(broken_data.parent, train=False)


def test_archive_is_extracted_when_the_folder_is_absent(tmp_path, broken_data, caplog):
    import tarfile

    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(broken_data, arcname="cifar-10-batches-py")
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    shutil.copy(tmp_path / "cifar-10-python.tar.gz", fresh)
    split = load_split(fresh, train=True)
    assert split.images.shape == (40, 3, 32, 32) and split.images.dtype.is_floating_point is False
    assert split.classes[0] == "airplane"
    # Not the official archive (a 40-image stand-in): used, and the log says so.
    assert "not the official archive's c58f30108f718f92721af3b95e74349a" in caplog.text


def test_an_archive_writes_nothing_outside_its_folder(tmp_path, broken_data):
    """Members that are links, that climb out with `..`, or that sit elsewhere are skipped; the
    batches themselves are extracted (on any Python 3.11, filters or not)."""
    import io
    import tarfile

    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(broken_data, arcname="cifar-10-batches-py")
        for name in ("../escaped", "cifar-10-batches-py/../../escaped", "/tmp/absolute-escape", "elsewhere"):
            info = tarfile.TarInfo(name)
            info.size = 4
            tar.addfile(info, io.BytesIO(b"evil"))
        link = tarfile.TarInfo("cifar-10-batches-py/link")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    fresh = tmp_path / "a" / "fresh"
    fresh.mkdir(parents=True)
    shutil.copy(archive, fresh)
    assert load_split(fresh, train=True).images.shape == (40, 3, 32, 32)
    extracted = sorted(p.name for p in (fresh / "cifar-10-batches-py").iterdir())
    assert extracted == sorted(["batches.meta", "data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4",
                                "data_batch_5", "test_batch"])
    assert not (tmp_path / "a" / "escaped").exists() and not (fresh / "elsewhere").exists()
    assert not Path("/tmp/absolute-escape").exists()


def test_job_without_data_fails_with_the_reason(tmp_path):
    # This machine is offline: with no data set, the download fails and the job says why.
    env, _ = make_env("sqlite", tmp_path / "home", tmp_path / "empty-data")
    env.start_worker()
    job_id = env.submit_train("--epochs", "1")
    assert env.cli("wait", job_id, "--timeout", "120", check=False).returncode == 1
    status = env.cli_json("status", job_id)
    assert status["status"] == "failed"
    assert status["error"].startswith("CIFAR-10 not found in ") and "download failed" in status["error"]
    assert "error: CIFAR-10 not found" in env.cli("logs", job_id).stdout
    env.stop_workers()

"""What ran: each attempt records cifarq's and torch's versions, the device and a digest of the data
files it read; `status`, `compare` (differences starred) and the report show them. Real workers,
on each backend; the digests are computed here, as sha256sum would, over the fake data sets."""
from __future__ import annotations

import hashlib
import platform
import re
import shutil
import subprocess
from importlib.metadata import version
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO
from tests.fakedata import write_cifar10

QUICK = ["--epochs", "1", "--batch-size", "4", "--seed", "1"]
TRAIN_FILES = ["batches.meta", "data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
               "test_batch"]
EVALUATE_FILES = ["batches.meta", "test_batch"]


def digest(data_dir: Path, names: list[str]) -> str:
    """`sha256sum NAMES | sha256sum` in cifar-10-batches-py/, as the docs tell a user to check it."""
    folder = data_dir / "cifar-10-batches-py"
    listing = "".join(f"{hashlib.sha256((folder / name).read_bytes()).hexdigest()}  {name}\n" for name in names)
    return hashlib.sha256(listing.encode()).hexdigest()


def expected_git_commit() -> str | None:
    """The checkout's short commit (tests run from one), or None where git is absent."""
    if shutil.which("git") is None:
        return None
    return subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.fixture(scope="module")
def ran(backend_env, tmp_path_factory, small_cifar):
    """A train job and an evaluation of its epoch 1 on the module's data set, then the same train
    job on another data set (a second worker, another CIFARQ_DATA_DIR)."""
    env = backend_env
    first = env.submit_train(*QUICK)
    assert env.cli("wait", first, "--timeout", "180").returncode == 0
    evaluation = env.cli_json("submit", "evaluate", "--checkpoint", f"{first}:1")["id"]
    assert env.cli("wait", evaluation, "--timeout", "120").returncode == 0
    env.stop_workers()
    other = write_cifar10(tmp_path_factory.mktemp("other-cifar"), seed=7)
    env.vars["CIFARQ_DATA_DIR"] = str(other)
    try:
        env.start_worker()
        second = env.submit_train(*QUICK)
        assert env.cli("wait", second, "--timeout", "180").returncode == 0
    finally:
        env.vars["CIFARQ_DATA_DIR"] = str(small_cifar)
    return {"first": first, "evaluation": evaluation, "second": second, "data": small_cifar, "other": other}


def test_status_shows_what_a_trained_job_ran_with(backend_env, ran):
    env, job_id = backend_env, ran["first"]
    provenance = env.cli_json("status", job_id)["provenance"]
    assert provenance["cifarq"] == version("cifarq")
    assert provenance["python"] == platform.python_version()
    assert provenance["torch"] == torch.__version__ and provenance["cuda"] == torch.version.cuda
    assert provenance["device"] == "cpu"
    assert provenance["data"] == {"sha256": digest(ran["data"], TRAIN_FILES), "files": TRAIN_FILES}
    commit = expected_git_commit()
    if commit is None:
        assert provenance["git_commit"] is None
    else:  # the test's own checkout may have uncommitted changes
        assert provenance["git_commit"] in (commit, f"{commit}-dirty")

    text = env.cli("status", job_id).stdout
    git = f" (git {provenance['git_commit']})" if provenance["git_commit"] else ""
    assert f"\ncifarq    {version('cifarq')}{git}\n" in text
    assert f"\npython    {platform.python_version()}\n" in text
    assert f"\ntorch     {torch.__version__} (CUDA {torch.version.cuda or 'none'})\n" in text
    assert f"\ndata      sha256 {provenance['data']['sha256'][:12]}… (7 files)\n" in text


def test_the_digest_is_what_sha256sum_gives(backend_env, ran):
    if shutil.which("sha256sum") is None:
        pytest.skip("no sha256sum on PATH")
    recorded = backend_env.cli_json("status", ran["first"])["provenance"]["data"]["sha256"]
    folder = ran["data"] / "cifar-10-batches-py"
    listing = subprocess.run(["sha256sum", *TRAIN_FILES], cwd=folder, capture_output=True, check=True).stdout
    assert hashlib.sha256(listing).hexdigest() == recorded


def test_an_evaluate_job_records_the_test_files_only(backend_env, ran):
    provenance = backend_env.cli_json("status", ran["evaluation"])["provenance"]
    assert provenance["data"] == {"sha256": digest(ran["data"], EVALUATE_FILES), "files": EVALUATE_FILES}
    assert provenance["torch"] == torch.__version__ and provenance["device"] == "cpu"


def test_compare_stars_the_data_set_that_differs(backend_env, ran):
    env, first, second = backend_env, ran["first"], ran["second"]
    data = env.cli_json("compare", first, second)
    assert [job["provenance"]["data"]["sha256"] for job in data["jobs"]] == \
        [digest(ran["data"], TRAIN_FILES), digest(ran["other"], TRAIN_FILES)]

    text = env.cli("compare", first, second).stdout
    a, b = (digest(ran[name], TRAIN_FILES)[:12] for name in ("data", "other"))
    assert re.search(rf"^data\*\s+sha256 {a}… \(7 files\)\s+sha256 {b}… \(7 files\)$", text, re.MULTILINE), text
    torch_row = re.escape(f"{torch.__version__} (CUDA {torch.version.cuda or 'none'})")
    assert re.search(rf"^torch\s+{torch_row}\s+{torch_row}$", text, re.MULTILINE), "the same torch: no star"
    assert re.search(r"^ran on\s+cpu\s+cpu$", text, re.MULTILINE), text
    assert re.search(r"^epochs\s+1\s+1$", text, re.MULTILINE), "the same params: no star"


def test_the_report_says_what_ran(backend_env, ran, tmp_path):
    env = backend_env
    out = tmp_path / "report"
    env.cli("report", ran["first"], "--out", str(out))
    page = (out / "index.html").read_text()
    section = page[page.index("<h2>What ran</h2>"):]
    section = section[:section.index("<h2>", 1)]
    assert f"<th>torch</th><td>{torch.__version__} (CUDA {torch.version.cuda or 'none'})</td>" in section
    assert "<th>ran on</th><td>cpu</td>" in section
    assert f"sha256 {digest(ran['data'], TRAIN_FILES)} of {', '.join(TRAIN_FILES)}" in section


def test_only_the_attempt_that_owns_the_job_records_what_ran(env, database):
    # Each attempt overwrites what the last recorded; one that no longer owns the job cannot.
    from shared.models import Job
    from worker.records import LeaseLost, claim_job, hand_back, record_provenance

    job_id = env.submit_train("--epochs", "1")
    with database.session_scope() as session:
        stale = claim_job(session=session, job_id=job_id, worker="w1", stale_after=60, max_attempts=3)
    with database.session_scope() as session:
        record_provenance(session=session, claim=stale, provenance={"device": "cpu"})
        hand_back(session=session, claim=stale, reason="the worker stopped")
    with database.session_scope() as session:
        live = claim_job(session=session, job_id=job_id, worker="w2", stale_after=60, max_attempts=3)
    assert live is not None
    with pytest.raises(LeaseLost), database.session_scope() as session:
        record_provenance(session=session, claim=stale, provenance={"device": "cpu", "late": True})
    with database.session_scope() as session:
        record_provenance(session=session, claim=live, provenance={"device": "cuda:0 (NVIDIA H200)"})
    with database.session_scope() as session:
        assert session.get(Job, job_id).provenance == {"device": "cuda:0 (NVIDIA H200)"}
    assert env.cli_json("status", job_id)["provenance"] == {"device": "cuda:0 (NVIDIA H200)"}

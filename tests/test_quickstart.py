"""The README's first command, literally, in a fresh copy of the repository.

A new user has Python and nothing else: `./quickstart.sh` makes .venv, installs cifarq with
torch, starts a background worker, trains, follows and prints the per-class results, all on the
embedded SQLite + filesystem broker under CIFARQ_HOME. The data directory points at a small
generated data set. The fresh install costs ~100 s and a few GB of temporary disk, once.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow  # a fresh venv with torch, then a job: CI runs it, the inner loop does not


def _copy_checkout(target: Path) -> None:
    """What a fresh clone would hold: tracked files plus new, not-ignored ones (work in progress)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO, capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():  # a file deleted but not yet committed is listed too
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


@pytest.fixture(scope="module")
def fresh(tmp_path_factory, small_cifar):
    if shutil.which("git") is None:
        pytest.skip("needs git to list the repository's files")
    root = tmp_path_factory.mktemp("fresh")
    checkout, home = root / "cifarq", root / "home"
    checkout.mkdir()
    _copy_checkout(checkout)
    # The user's environment, minus anything that would let the copy use this checkout's venv.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CIFARQ_", "PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if not p.startswith(str(REPO / ".venv")))
    env.update(CIFARQ_HOME=str(home), CIFARQ_DATA_DIR=str(small_cifar),
               # pip's byte-compiling of torch's thousands of files is most of a minute on 2 cores;
               # Python compiles what it imports anyway. The script itself runs unchanged.
               PIP_NO_COMPILE="1")
    # The path a host without a GPU takes: torch's pins from another index first. PyTorch's CPU
    # index cannot be reached from here, so PyPI's own stands in: this shows that the pins are read
    # and installed from the given index, and that the rest installs after them.
    env["TORCH_INDEX_URL"] = "https://pypi.org/simple"
    yield checkout, home, env
    state = home / "local-worker.json"
    if state.exists():  # a failed test must not leave a worker behind
        try:
            os.killpg(json.loads(state.read_text())["pid"], signal.SIGKILL)
        except (ProcessLookupError, ValueError, KeyError):
            pass


def _cifarq(checkout, env, *args, check=True):
    result = subprocess.run([str(checkout / ".venv/bin/cifarq"), *args], cwd=checkout, env=env,
                            capture_output=True, text=True, timeout=120)
    if check:
        assert result.returncode == 0, f"cifarq {' '.join(args)}: {result.stderr}"
    return result


def _worker_rows(home: Path) -> list:
    with sqlite3.connect(home / "cifarq.db") as conn:
        return conn.execute("SELECT name, pid, device FROM workers").fetchall()


def test_quickstart_from_a_fresh_checkout(fresh):
    checkout, home, env = fresh
    assert not (checkout / ".venv").exists() and not home.exists()

    run = subprocess.run(["./quickstart.sh"], cwd=checkout, env=env, capture_output=True, text=True,
                         timeout=900)
    assert run.returncode == 0, f"stdout:\n{run.stdout}\nstderr:\n{run.stderr[-4000:]}"

    # What the user sees: the tutorial's lines, per class, and how to stop the worker.
    printed = re.search(r"Accuracy of the network on the (\d+) test images: ([\d.]+) %", run.stdout)
    assert printed and printed.group(1) == "100", run.stdout
    class_rows = re.findall(r"^(\w+)\s+(\d+)\s+(\d+)\s+([\d.]+) %$", run.stdout, re.M)
    assert [row[0] for row in class_rows] == ["airplane", "automobile", "bird", "cat", "deer",
                                              "dog", "frog", "horse", "ship", "truck"]
    assert "stop it with: cifarq local stop" in run.stderr
    # The report extra came with it: `cifarq report` works in the quick start's venv.
    subprocess.run([str(checkout / ".venv/bin/python"), "-c", "import matplotlib"], check=True)
    assert re.search(r"succeeded, epoch 2/2", run.stderr)

    # What was recorded, read back through the CLI of the fresh venv.
    jobs = json.loads(_cifarq(checkout, env, "list", "--json").stdout)
    assert [(j["kind"], j["status"], j["params"]["epochs"]) for j in jobs] == [("train", "succeeded", 2)]
    job = json.loads(_cifarq(checkout, env, "status", jobs[0]["id"], "--json").stdout)
    assert job["device"] == "cpu" and job["progress"]["epoch"] == 2
    results = json.loads(_cifarq(checkout, env, "results", jobs[0]["id"], "--json").stdout)
    assert results["total"] == 100 and len(results["per_class"]) == 10
    assert f"{100 * results['accuracy']:.1f}" == printed.group(2)
    assert [(r[0], int(r[1]), int(r[2])) for r in class_rows] == \
        [(c["class"], c["correct"], c["total"]) for c in results["per_class"]]

    # The worker runs on in the background, from the fresh venv, and is registered.
    status = json.loads(_cifarq(checkout, env, "local", "status", "--json").stdout)
    assert status["running"]
    pid = status["pid"]
    assert Path(f"/proc/{pid}/cmdline").read_bytes().startswith(str(checkout / ".venv").encode())
    assert [row[1:] for row in _worker_rows(home)] == [(pid, "cpu")]

    # A second run installs nothing and reuses that worker.
    again = subprocess.run(["./quickstart.sh", "--epochs", "1"], cwd=checkout, env=env, capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "installing" not in again.stderr
    assert f"using the local worker (pid {pid})" in again.stderr
    assert "Accuracy of the network on the 100 test images" in again.stdout

    # And `local stop` leaves nothing behind: no process, no registry row, no state file.
    _cifarq(checkout, env, "local", "stop")
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not Path(f"/proc/{pid}").exists() or b"worker" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    assert _worker_rows(home) == []
    assert _cifarq(checkout, env, "local", "status", check=False).returncode == 1

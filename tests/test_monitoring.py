"""`cifarq workers` and `cifarq queue` (from the database), TensorBoard event files, and the
CLI's surface: an example in every --help, --version, shell completion."""
from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest

from tests.conftest import REPO


def test_queue_counts_what_waits_per_queue(sqlite_env):
    env = sqlite_env
    assert env.cli_json("queue") == []
    first_gpu = env.submit_train("--device", "cuda")
    env.submit_train("--device", "cuda")
    cpu = env.submit_train("--device", "cpu")
    env.submit_train("--device", "cuda", "--queue", "big")
    rows = {row["queue"]: row for row in env.cli_json("queue")}
    assert sorted(rows) == ["big", "cpu", "gpu"]
    assert (rows["gpu"]["queued"], rows["gpu"]["running"], rows["gpu"]["oldest"]["id"]) == (2, 0, first_gpu)
    assert rows["cpu"]["queued"] == 1 and rows["cpu"]["oldest"]["id"] == cpu
    assert rows["gpu"]["oldest"]["waiting_seconds"] >= 0
    env.cli("cancel", first_gpu)
    env.cli("cancel", cpu)
    rows = {row["queue"]: row for row in env.cli_json("queue")}
    assert sorted(rows) == ["big", "gpu"] and rows["gpu"]["queued"] == 1
    text = env.cli("queue").stdout.splitlines()
    assert text[0].split() == ["queue", "queued", "running", "oldest", "queued"]
    assert text[2].split()[:3] == ["gpu", "1", "0"]


def _session(env):
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    url = env.vars.get("CIFARQ_DATABASE_URL") or f"sqlite:///{env.home / 'cifarq.db'}"
    return create_engine(url), Session


def test_workers_shows_live_workers_with_their_job(sqlite_env):
    # Rows written here through SQLAlchemy, as a launcher writes them, so that the test sets the
    # heartbeat ages: one live, one stale by minutes, one just past shared.registry's threshold.
    # A job is marked running on the live one. (The next test has a real launcher's row.)
    from shared.models import Job, JobStatus, WorkerRecord
    from shared.registry import ALIVE_SECONDS

    env = sqlite_env
    job_id = env.submit_train("--epochs", "4", "--device", "cuda")
    env.cli_json("list")  # the embedded database exists and is migrated
    now = datetime.now(timezone.utc)
    engine, Session = _session(env)
    with Session(engine) as session, session.begin():
        session.add(WorkerRecord(name="cifarq-gpu-11@node1", host="node1", queues="default,gpu", device="cuda",
                                 gpu_index=1, gpu_name="NVIDIA H100 80GB HBM3", pid=11, started_at=now,
                                 heartbeat_at=now - timedelta(seconds=3)))
        session.add(WorkerRecord(name="cifarq-cpu-12@node2", host="node2", queues="default,cpu", device="cpu",
                                 pid=12, started_at=now - timedelta(hours=2), heartbeat_at=now - timedelta(minutes=5)))
        session.add(WorkerRecord(name="cifarq-cpu-13@node3", host="node3", queues="default,cpu", device="cpu",
                                 pid=13, started_at=now - timedelta(hours=1),
                                 heartbeat_at=now - timedelta(seconds=ALIVE_SECONDS + 15)))
        job = session.get(Job, job_id)
        job.status, job.worker, job.epoch, job.step, job.steps_per_epoch = (
            JobStatus.running, "cifarq-gpu-11@node1", 1, 300, 12500)

    def beat_three_seconds_ago() -> None:
        """The live worker beats anew before each call that needs it live: a CLI call takes 0.5 to
        2 s on a busy 2-core machine, and three of them would outlast its ALIVE_SECONDS."""
        with Session(engine) as session, session.begin():
            session.get(WorkerRecord, "cifarq-gpu-11@node1").heartbeat_at = \
                datetime.now(timezone.utc) - timedelta(seconds=3)

    beat_three_seconds_ago()
    live = env.cli("workers", "--json")
    (row,) = __import__("json").loads(live.stdout)
    assert row["name"] == "cifarq-gpu-11@node1" and row["host"] == "node1" and row["device"] == "cuda"
    assert row["gpu_index"] == 1 and row["gpu_name"] == "NVIDIA H100 80GB HBM3" and row["queues"] == ["default", "gpu"]
    assert row["job"] == {"id": job_id, "epoch": 1, "epochs": 4, "step": 300, "steps_per_epoch": 12500}
    assert row["stale"] is False and 2 <= row["heartbeat_age_seconds"] < ALIVE_SECONDS
    assert live.stderr == "2 stale worker(s) hidden; --all shows them\n"

    every = {r["name"]: r for r in env.cli_json("workers", "--all")}
    assert every["cifarq-cpu-12@node2"]["stale"] is True and every["cifarq-cpu-12@node2"]["job"] is None
    # Stale by the same measure as `cifarq run`'s live workers, not by a job's stale-after setting.
    assert every["cifarq-cpu-13@node3"]["stale"] is True
    assert every["cifarq-cpu-13@node3"]["heartbeat_age_seconds"] >= ALIVE_SECONDS + 15
    beat_three_seconds_ago()
    engine.dispose()
    assert [r["name"] for r in env.cli_json("workers", extra_env={"CIFARQ_STALE_AFTER_SECONDS": "1"})] == \
        ["cifarq-gpu-11@node1"]
    text = env.cli("workers", "--all").stdout.splitlines()
    assert text[0].split() == ["name", "host", "device", "gpu", "job", "heartbeat"]
    assert "1: NVIDIA H100 80GB HBM3" in text[1] and f"{job_id} (epoch 1/4)" in text[1]
    assert text[2].split()[-1] == "STALE" and "5m ago" in text[2]
    assert text[3].split()[-1] == "STALE" and text[3].startswith("cifarq-cpu-13@node3")
    assert f"older than {ALIVE_SECONDS:.0f} s" in " ".join(env.cli("workers", "--help").stdout.split()), \
        "the help states the threshold the code uses"


def test_workers_lists_a_real_worker_and_the_job_it_runs(sqlite_env):
    import time

    env = sqlite_env
    env.start_worker()
    (row,) = env.cli_json("workers")  # the launcher registered itself before it said "ready."
    assert row["device"] == "cpu" and row["stale"] is False and row["job"] is None and row["gpu_name"] is None
    assert "cpu" in row["queues"] and row["name"].startswith("cifarq-cpu-")

    job_id = env.submit_train("--epochs", "1000", "--batch-size", "1", "--device", "cpu")  # runs until cancelled
    deadline = time.monotonic() + 120
    while True:
        (row,) = env.cli_json("workers")
        if row["job"] is not None or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert row["job"] is not None and row["job"]["id"] == job_id and row["job"]["epochs"] == 1000
    assert env.cli_json("status", job_id)["worker"] == row["name"]
    (gauge,) = env.cli_json("queue")
    assert gauge["queue"] == "cpu" and gauge["running"] == 1 and gauge["queued"] == 0
    env.cli("cancel", job_id)
    assert env.cli("wait", job_id, "--timeout", "120", check=False).returncode == 1


def test_tensorboard_events_can_be_read_back(tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard package is not installed (worker extra)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from worker.tensorboard import TensorBoardLog

    with TensorBoardLog("job42", tmp_path) as log:
        assert log.enabled and log.logdir == tmp_path / "job42" / "tensorboard"
        log.epoch(1, loss=2.1, lr=0.001, images_per_second=2100.0)
        log.epoch(2, loss=1.5, lr=0.0005, images_per_second=2300.0, test_accuracy=0.52)
        log.accuracy(3, 0.6)
    events = EventAccumulator(str(tmp_path / "job42" / "tensorboard"))
    events.Reload()
    assert set(events.Tags()["scalars"]) == {"train/loss", "train/lr", "train/images_per_second", "test/accuracy"}
    assert [(e.step, round(e.value, 4)) for e in events.Scalars("train/loss")] == [(1, 2.1), (2, 1.5)]
    assert [(e.step, round(e.value, 4)) for e in events.Scalars("train/lr")] == [(1, 0.001), (2, 0.0005)]
    assert [(e.step, round(e.value, 4)) for e in events.Scalars("test/accuracy")] == [(2, 0.52), (3, 0.6)]


def test_tensorboard_without_the_package_does_nothing_and_warns_once(tmp_path):
    probe = """
import sys, logging
class NoTensorBoard:
    def find_spec(self, name, path=None, target=None):
        if name == "tensorboard" or name.startswith("tensorboard."):
            raise ImportError("No module named 'tensorboard'")
sys.meta_path.insert(0, NoTensorBoard())
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
from worker.tensorboard import TensorBoardLog
for job in ("a", "b"):
    log = TensorBoardLog(job, sys.argv[1])
    log.epoch(1, loss=1.0, lr=0.1, images_per_second=1.0, test_accuracy=0.5)
    log.close()
    print("enabled", log.enabled)
"""
    result = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], capture_output=True, text=True,
                            cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["enabled False", "enabled False"]
    assert result.stderr.count("WARNING TensorBoard logging is off") == 1, result.stderr
    assert list(tmp_path.iterdir()) == []


def all_commands():
    import typer.main

    from api_cli.main import app

    def walk(command, path):
        subcommands = getattr(command, "commands", None)
        if subcommands is None:
            yield path
            return
        for name, sub in subcommands.items():
            yield from walk(sub, [*path, name])

    return list(walk(typer.main.get_command(app), []))


def test_every_command_has_an_example_in_its_help():
    from typer.testing import CliRunner

    from api_cli.main import app

    commands = all_commands()
    assert {"submit train", "submit sweep", "report", "compare", "workers", "queue", "wait"} <= \
        {" ".join(c) for c in commands}
    runner = CliRunner()
    for path in commands:
        result = runner.invoke(app, [*path, "--help"], terminal_width=200)
        assert result.exit_code == 0, (path, result.output)
        assert f"Example: cifarq {' '.join(path)}" in result.output, f"cifarq {' '.join(path)} --help has no example"


def test_version_and_shell_completion():
    import os
    import shutil
    from importlib.metadata import version
    from pathlib import Path

    script = shutil.which("cifarq", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("the cifarq console script is not installed in this environment (pip install -e .)")

    def cifarq(*args, env=None):
        return subprocess.run([script, *args], capture_output=True, text=True, cwd=REPO, timeout=60,
                              env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})

    assert cifarq("--version").stdout == f"cifarq {version('cifarq')}\n"
    # The script that `--show-completion` prints for bash. (That flag finds the shell by walking up
    # the process tree, which under pytest depends on what started it; this asks for bash's.)
    printed = cifarq(env={"_CIFARQ_COMPLETE": "source_bash"})
    assert printed.returncode == 0 and "complete -o default -F _cifarq_completion cifarq" in printed.stdout
    # What that bash function asks when the user presses TAB after `cifarq submit s` / `cifarq rep`:
    asked = cifarq(env={"_CIFARQ_COMPLETE": "complete_bash", "COMP_WORDS": "cifarq submit s", "COMP_CWORD": "2"})
    assert asked.stdout.split() == ["sweep"]
    asked = cifarq(env={"_CIFARQ_COMPLETE": "complete_bash", "COMP_WORDS": "cifarq rep", "COMP_CWORD": "1"})
    assert asked.stdout.split() == ["report"]


def test_the_new_commands_never_import_torch(sqlite_env):
    from tests.test_client_light import run_without_torch

    job_id = sqlite_env.submit_train("--epochs", "1", "--device", "cuda")
    for args in (["report", "--help"], ["compare", job_id, job_id], ["workers"], ["queue", "--json"],
                 ["submit", "sweep", "--lr", "0.1,0.2", "--device", "cuda"], ["list", "--sweep", "abcd"],
                 ["wait", job_id, "--timeout", "0"]):
        result = run_without_torch(sqlite_env, *args)
        assert "IMPORTED [] EXIT" in result.stderr and "the client imported torch" not in result.stderr, (args, result.stderr)


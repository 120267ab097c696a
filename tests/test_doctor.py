"""`cifarq doctor` on real installations, both backends: a healthy one passes every check; a
database not upgraded, an unreachable broker or database, queued jobs no live worker takes, and a
missing or corrupt data set each get their line with the fix, and the other checks still run."""
from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys

import pytest

from shared.doctor import DEFAULT_CHECKPOINT_BYTES, FAIL, OK, WARN, space_status
from tests.conftest import REPO, drop_postgres_database, make_postgres_database

CHECKS = ["database", "broker", "workers", "queues", "data", "space"]


def doctor(env, **extra_env) -> tuple[int, dict[str, str]]:
    """The exit code and each check's printed line, by check name."""
    result = env.cli("doctor", check=False, extra_env=extra_env)
    lines = {line.split()[1]: line for line in result.stdout.splitlines()}
    assert list(lines) == CHECKS, result.stdout + result.stderr
    return result.returncode, lines


def test_a_healthy_installation_passes_every_check(backend_env):
    code, lines = doctor(backend_env)
    assert code == 0
    assert all(line.startswith("ok    ") for line in lines.values()), lines
    assert "schema at head" in lines["database"]
    assert "(cpu) on default,cpu" in lines["workers"]
    assert "200 training + 100 test images, 10 classes" in lines["data"]

    report = backend_env.cli_json("doctor")
    assert report["ok"] is True and report["failed"] == [] and report["warnings"] == []
    assert [check["name"] for check in report["checks"]] == CHECKS
    assert {check["status"] for check in report["checks"]} == {OK}
    assert all(set(check) == {"name", "status", "message", "fix", "details"} for check in report["checks"])
    (worker,) = report["checks"][2]["details"]["live"]
    assert (worker["device"], worker["queues"], worker["gpu_name"]) == ("cpu", ["default", "cpu"], None)
    assert report["checks"][5]["details"]["checkpoint_bytes"] == DEFAULT_CHECKPOINT_BYTES


def test_a_missing_or_corrupt_data_set_fails_where_a_worker_runs(backend_env, tmp_path, small_cifar):
    code, lines = doctor(backend_env, CIFARQ_DATA_DIR=str(tmp_path / "empty"))
    assert code == 1
    assert lines["data"].startswith("FAIL  data ")
    assert "a worker runs on this host" in lines["data"]
    assert "fix: put cifar-10-batches-py/ or cifar-10-python.tar.gz in" in lines["data"]
    assert all(lines[name].startswith("ok") for name in CHECKS if name != "data")

    copy = tmp_path / "copy"
    shutil.copytree(small_cifar, copy)
    (copy / "cifar-10-batches-py" / "test_batch").write_bytes(b"not a pickle")
    code, lines = doctor(backend_env, CIFARQ_DATA_DIR=str(copy))
    assert code == 1
    assert "test_batch is not a CIFAR-10 batch file" in lines["data"], lines["data"]
    assert "fix: replace the file: tar xzf cifar-10-python.tar.gz" in lines["data"]

    (copy / "cifar-10-batches-py" / "data_batch_3").unlink()
    code, lines = doctor(backend_env, CIFARQ_DATA_DIR=str(copy))
    assert code == 1
    assert "is incomplete: missing data_batch_3" in lines["data"]


def test_an_unreachable_broker_fails_and_the_other_checks_still_run(backend_env):
    code, lines = doctor(backend_env, CIFARQ_BROKER_URL="redis://:s3cret@127.0.0.1:1/0")
    assert code == 1
    assert lines["broker"].startswith("FAIL  broker     redis://:***@127.0.0.1:1/0 unreachable: ")
    assert "fix: start Redis, or correct CIFARQ_BROKER_URL" in lines["broker"]
    assert "s3cret" not in "".join(lines.values())
    assert all(lines[name].startswith("ok") for name in CHECKS if name != "broker")

    report = backend_env.cli_json("doctor", check=False, extra_env={"CIFARQ_BROKER_URL": "redis://127.0.0.1:1/0"})
    assert report["ok"] is False and report["failed"] == ["broker"]


def test_queued_jobs_that_no_live_worker_consumes_fail(backend_env):
    # The worker consumes default and cpu: neither queue is served.
    stranded = [backend_env.submit_train("--queue", "nobody-here"), backend_env.submit_train("--device", "cuda")]
    try:
        code, lines = doctor(backend_env)
        assert code == 1
        queues = lines["queues"]
        assert queues.startswith("FAIL  queues     ")
        assert f"gpu: 1 queued (oldest {stranded[1]}" in queues
        assert f"nobody-here: 1 queued (oldest {stranded[0]}" in queues
        assert "fix: start `cifarq worker` on a host with an NVIDIA GPU" in queues
        assert "start `cifarq worker --queues nobody-here`" in queues
        assert all(lines[name].startswith("ok") for name in CHECKS if name != "queues")
    finally:
        for job_id in stranded:
            backend_env.cli("cancel", job_id)


def test_a_database_not_at_head_is_reported_with_the_fix(env, tmp_path):
    if "CIFARQ_DATABASE_URL" not in env.vars:
        # The embedded database not created yet: any command would make it, so it is a warning,
        # and doctor itself creates nothing.
        fresh = tmp_path / "fresh"
        code, lines = doctor(env, CIFARQ_HOME=str(fresh))
        assert code == 0
        assert lines["database"] == f"warn  database   sqlite:///{fresh}/cifarq.db: not created yet; " \
                                    "fix: run `cifarq db upgrade`"
        assert lines["workers"].startswith("warn  workers    no live worker")
        assert not (fresh / "cifarq.db").exists() and not (fresh / "broker").exists()
    else:
        # PostgreSQL never upgraded: every command would refuse it, so it fails.
        name = make_postgres_database()
        try:
            code, lines = doctor(env, CIFARQ_DATABASE_URL=f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}")
        finally:
            drop_postgres_database(name)
        assert code == 1
        assert lines["database"].startswith("FAIL  database   ")
        assert lines["database"].endswith("reachable, but no schema yet; fix: run `cifarq db upgrade`")
        assert lines["workers"] == "warn  workers    not checked: needs the database at head (see the database line)"
        assert lines["broker"].startswith("ok") and lines["data"].startswith("ok")

        code, lines = doctor(env, CIFARQ_DATABASE_URL="postgresql+psycopg://postgres:s3cret@127.0.0.1:1/cifarq")
        assert code == 1
        assert lines["database"].startswith("FAIL  database   postgresql+psycopg://postgres:***@127.0.0.1:1/cifarq "
                                            "unreachable: ")
        assert "fix: start the database server at 127.0.0.1:1, or correct CIFARQ_DATABASE_URL" in lines["database"]
        assert "s3cret" not in "".join(lines.values())

    # A schema this cifarq does not know (a newer release migrated it) fails on both backends.
    env.cli("db", "upgrade")
    if "CIFARQ_DATABASE_URL" in env.vars:
        import psycopg

        with psycopg.connect(env.vars["CIFARQ_DATABASE_URL"].replace("+psycopg", ""), autocommit=True) as conn:
            conn.execute("UPDATE alembic_version SET version_num = '9999'")
    else:
        with sqlite3.connect(env.home / "cifarq.db") as conn:
            conn.execute("UPDATE alembic_version SET version_num = '9999'")
    code, lines = doctor(env)
    assert code == 1
    assert "schema at 9999, which this cifarq does not know" in lines["database"]
    assert "fix: install the cifarq release that migrated it on this host" in lines["database"]


# A client install: neither torch nor numpy can be imported.
CLIENT_ONLY = """
import sys
class ClientOnly:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "numpy"):
            raise ImportError(f"No module named {name!r}")
sys.meta_path.insert(0, ClientOnly())
sys.argv = ["cifarq", "doctor"]
from api_cli.main import main
main()
"""


def test_doctor_runs_on_a_client_install_and_says_what_it_could_not_check(sqlite_env):
    result = subprocess.run([sys.executable, "-c", CLIENT_ONLY], capture_output=True, text=True,
                            env=sqlite_env.vars, cwd=REPO, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = {line.split()[1]: line for line in result.stdout.splitlines()}
    assert list(lines) == CHECKS
    assert "not checked: No module named 'numpy' here (a client install)" in lines["data"]
    assert lines["data"].startswith("warn") and "torch" not in result.stdout + result.stderr


@pytest.mark.parametrize("free, status", [
    (0, FAIL), (DEFAULT_CHECKPOINT_BYTES - 1, FAIL), (DEFAULT_CHECKPOINT_BYTES, WARN),
    (2**30 - 1, WARN), (2**30, OK),
])
def test_space_fails_under_one_checkpoint_and_warns_under_a_gibibyte(free, status):
    assert space_status(free) == status
    # With checkpoints big enough that 100 of them exceed 1 GiB, the bar is 100 checkpoints.
    assert space_status(99 * 20 * 2**20, checkpoint=20 * 2**20) == WARN
    assert space_status(100 * 20 * 2**20, checkpoint=20 * 2**20) == OK

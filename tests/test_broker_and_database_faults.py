"""Redis restarted without its data, PostgreSQL unreachable for a while: nothing lost, nothing twice.

Both use servers of the test's own (a private redis-server; a TCP proxy in front of the machine's
PostgreSQL that the test can cut), so the machine's shared services are never disturbed.
"""
from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections import Counter
from contextlib import closing

import pytest

from tests.conftest import drop_postgres_database, make_env, make_postgres_database

pytestmark = pytest.mark.slow  # minutes of real workers and outages: CI runs it, the inner loop does not

FAST_FAULTS = {"CIFARQ_STALE_AFTER_SECONDS": "3", "CIFARQ_REAP_INTERVAL_SECONDS": "1"}


def free_port() -> int:
    with closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateRedis:
    def __init__(self, port: int, workdir):
        self.port, self.workdir, self.proc = port, workdir, None

    def start(self):
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(self.workdir)], stdout=subprocess.DEVNULL)
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("private redis did not start")

    def stop(self):
        self.proc.kill()
        self.proc.wait()


class CuttableProxy:
    """Forwards 127.0.0.1:port to PostgreSQL; cut() drops every connection and refuses new ones;
    lose_next_commit_reply() lets one commit through and drops its reply with the connection."""

    def __init__(self, target_port: int = 5432):
        self.port, self.target = free_port(), target_port
        self.up = threading.Event()
        self.connections: list[socket.socket] = []
        self.marker: bytes | None = None  # armed by lose_next_commit_reply
        self.spared = 0  # marked transactions still to let through before one loses its reply
        self.reply_lost = threading.Event()
        self.server = socket.create_server(("127.0.0.1", self.port))
        self.up.set()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            client, _ = self.server.accept()
            if not self.up.is_set():
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target))
            self.connections += [client, upstream]
            muted = threading.Event()  # set: what the server says goes nowhere
            threading.Thread(target=self._requests, args=(client, upstream, muted), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, muted), daemon=True).start()

    def _requests(self, client, upstream, muted):
        """Client to server; when armed, the transaction that sent the marker has its COMMIT
        reach the server, then the connection drops before the client hears the answer."""
        in_marked_transaction = False
        try:
            while data := client.recv(65536):
                marker = self.marker
                in_marked_transaction = in_marked_transaction or bool(marker and marker in data)
                if in_marked_transaction and b"COMMIT" in data and marker is not None and self.spared:
                    self.spared -= 1
                    in_marked_transaction = False
                elif in_marked_transaction and b"COMMIT" in data and marker is not None:
                    self.marker = None
                    muted.set()
                    upstream.sendall(data)
                    time.sleep(0.5)  # the server commits; its reply is dropped
                    self.reply_lost.set()
                    break
                if b"ROLLBACK" in data:
                    in_marked_transaction = False
                upstream.sendall(data)
        except OSError:
            pass
        finally:
            self._close(client, upstream)

    def _pipe(self, src, dst, muted):
        try:
            while data := src.recv(65536):
                if not muted.is_set():
                    dst.sendall(data)
        except OSError:
            pass
        finally:
            self._close(src, dst)

    @staticmethod
    def _close(*sockets):
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def lose_next_commit_reply(self, of: bytes, spare: int = 0):
        """The next transaction that sends `of` (after `spare` such transactions) commits, and its
        client is told the connection broke: the write went through but was reported failed."""
        self.reply_lost.clear()
        self.spared = spare
        self.marker = of

    def cut(self):
        self.up.clear()
        for s in self.connections:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.connections.clear()

    def restore(self):
        self.up.set()


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
def test_redis_restart_loses_no_queued_job_and_runs_none_twice(tmp_path, medium_cifar):
    redis_server = PrivateRedis(free_port(), tmp_path)
    redis_server.start()
    database = make_postgres_database()
    env, _ = make_env("sqlite", tmp_path / "home", medium_cifar)
    env.vars.update(FAST_FAULTS, CIFARQ_BROKER_URL=f"redis://127.0.0.1:{redis_server.port}/0",
                    CIFARQ_DATABASE_URL=f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}")
    try:
        env.cli("db", "upgrade")
        env.start_worker()
        # 10 epochs (medium_cifar's rule): caught running by a polling CLI even on a busy machine.
        running = env.submit_train("--epochs", "10", "--lr", "0.01")
        env.wait_until_training(running)
        queued = [env.submit_train("--epochs", "1", "--lr", "0.01") for _ in range(3)]
        redis_server.stop()  # the queued messages are gone with it: no persistence
        redis_server.start()
        for job_id in [running, *queued]:
            assert env.cli("wait", job_id, "--timeout", "120").returncode == 0, job_id
        for job_id in queued:
            status = env.cli_json("status", job_id)
            assert status["attempts"] == 1, "ran once"
            assert env.cli("logs", job_id).stdout.count("Finished Training") == 1
    finally:
        env.stop_workers()
        redis_server.stop()
        drop_postgres_database(database)


def test_database_away_for_a_while_the_job_carries_on(tmp_path, medium_cifar):
    proxy = CuttableProxy()
    database = make_postgres_database()
    env, _ = make_env("sqlite", tmp_path / "home", medium_cifar)
    env.vars.update(CIFARQ_DATABASE_URL=f"postgresql+psycopg://postgres@127.0.0.1:{proxy.port}/{database}",
                    CIFARQ_STALE_AFTER_SECONDS="60")
    direct = {"CIFARQ_DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}"}
    try:
        env.cli("db", "upgrade")
        env.start_worker()
        # 20 epochs of about half a second: long enough to be caught running under load
        job_id = env.submit_train("--epochs", "20", "--lr", "0.01", "--log-every", "100")
        env.wait_until_training(job_id, steps=50)
        proxy.cut()
        # The CLI says so, on one line.
        down = env.cli("status", job_id, check=False)
        assert down.returncode == 1 and down.stderr.startswith("error: database unreachable at postgresql+psycopg://")
        assert down.stderr.count("\n") == 1
        time.sleep(8)  # heartbeats and an epoch's checkpoint fail meanwhile; the worker retries
        proxy.restore()
        assert env.cli("wait", job_id, "--timeout", "300", extra_env=direct).returncode == 0
        status = env.cli_json("status", job_id)
        assert status["status"] == "succeeded" and status["attempts"] == 1
        assert [c["epoch"] for c in env.cli_json("checkpoint", "list", job_id)] == list(range(1, 21))
        worker_log = env.workers[0].log_path.read_text()
        assert "database unreachable" in worker_log or "heartbeat of job" in worker_log
    finally:
        env.stop_workers()
        proxy.cut()
        drop_postgres_database(database)


@pytest.mark.parametrize("write", [b"INSERT INTO log_lines", b"INSERT INTO results"], ids=["heartbeat", "end"])
def test_a_commit_whose_reply_is_lost_writes_its_log_lines_once(tmp_path, medium_cifar, write):
    """A transaction commits, but the connection breaks before the worker hears so: a heartbeat
    (progress and log lines) must not write the same lines again when it retries; the job's end
    (results, the last lines) must find itself written, not take the job for another attempt's."""
    proxy = CuttableProxy()
    database = make_postgres_database()
    env, _ = make_env("sqlite", tmp_path / "home", medium_cifar)
    env.vars.update(CIFARQ_DATABASE_URL=f"postgresql+psycopg://postgres@127.0.0.1:{proxy.port}/{database}")
    try:
        env.cli("db", "upgrade")
        env.start_worker()
        job_id = env.submit_train("--epochs", "10", "--lr", "0.01", "--log-every", "50")
        env.wait_until_training(job_id, steps=50)
        proxy.lose_next_commit_reply(of=write)
        assert proxy.reply_lost.wait(120), f"no transaction sent {write!r}"
        assert env.cli("wait", job_id, "--timeout", "300").returncode == 0
        status = env.cli_json("status", job_id)
        assert status["status"] == "succeeded" and status["attempts"] == 1, status
        log = env.cli("logs", job_id).stdout.splitlines()
        printed = [line for line in log if line.startswith("[") and "loss:" in line]
        twice = [line for line, n in Counter(printed).items() if n > 1]
        assert not twice, f"written twice: {twice}"
        assert len(printed) == 10 * (status["progress"]["steps_per_epoch"] // 50), "log lines were lost"
        assert sum(line.startswith("Accuracy of the network") for line in log) == 1, log[-15:]
        worker_log = env.workers[0].log_path.read_text()
        assert "heartbeat of job" in worker_log or "database unreachable" in worker_log, "the worker saw a failure"
        assert "another attempt owns it" not in worker_log
        assert len(env.cli_json("results", job_id)["per_class"]) == 10, "per-class results written once"
    finally:
        env.stop_workers()
        proxy.cut()
        drop_postgres_database(database)


CLAIM_SQL = b"attempts=(jobs.attempts +"  # the claim's UPDATE (worker/records.py: claim_job), nothing else's


@pytest.mark.parametrize("what", ["job", "pack"])
def test_a_claim_whose_reply_is_lost_is_taken_up_by_the_message_s_retry(tmp_path, medium_cifar, what):
    """The claim commits, the worker hears that the connection broke: the message is retried,
    and the retry finds the job running under its own earlier token. It must take it up as the
    same attempt, not leave it "running elsewhere" until the heartbeat goes stale (600 s here).
    A pack: its first point claimed, the second's reply lost; the retry takes up both."""
    proxy = CuttableProxy()
    database = make_postgres_database()
    env, _ = make_env("sqlite", tmp_path / "home", medium_cifar)
    env.vars.update(CIFARQ_DATABASE_URL=f"postgresql+psycopg://postgres@127.0.0.1:{proxy.port}/{database}",
                    CIFARQ_STALE_AFTER_SECONDS="600")
    try:
        env.cli("db", "upgrade")
        env.start_worker()
        proxy.lose_next_commit_reply(of=CLAIM_SQL, spare=1 if what == "pack" else 0)
        if what == "job":
            job_ids = [env.submit_train("--epochs", "2", "--lr", "0.01")]
        else:
            sweep = env.cli_json("submit", "sweep", "--lr", "0.01,0.02", "--epochs", "2", "--pack-size", "2")
            job_ids = [job["id"] for job in sweep["jobs"]]
        assert proxy.reply_lost.wait(60), "no claim was made"
        for job_id in job_ids:
            assert env.cli("wait", job_id, "--timeout", "120").returncode == 0, job_id
            status = env.cli_json("status", job_id)
            assert status["status"] == "succeeded" and status["attempts"] == 1, status
        if what == "pack":
            statuses = [env.cli_json("status", job_id) for job_id in job_ids]
            assert all(s["packed_with"] == 2 for s in statuses), (statuses, env.workers[0].log_path.read_text()[-5000:])
        assert "database unreachable" in env.workers[0].log_path.read_text() or \
            "Retry in" in env.workers[0].log_path.read_text(), "the worker saw the claim fail"
    finally:
        env.stop_workers()
        proxy.cut()
        drop_postgres_database(database)


def test_a_message_that_cannot_be_claimed_is_retried_for_as_long_as_the_database_is_away(tmp_path, medium_cifar):
    """Claims fail for 20 s: the message is retried (after 1, 2, 4, 8 s ...) past Celery's
    default limit of 3 retries, and the job runs, once, when the database is back."""
    proxy = CuttableProxy()
    database = make_postgres_database()
    env, _ = make_env("sqlite", tmp_path / "home", medium_cifar)
    env.vars.update(CIFARQ_DATABASE_URL=f"postgresql+psycopg://postgres@127.0.0.1:{proxy.port}/{database}")
    direct = {"CIFARQ_DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}"}
    try:
        env.cli("db", "upgrade")
        env.start_worker()
        proxy.cut()
        job_id = env.cli_json("submit", "train", "--epochs", "1", "--lr", "0.01", extra_env=direct)["id"]
        time.sleep(20)
        proxy.restore()
        waited = env.cli("wait", job_id, "--timeout", "90", extra_env=direct, check=False)
        assert waited.returncode == 0, env.workers[0].log_path.read_text()[-6000:]
        status = env.cli_json("status", job_id, extra_env=direct)
        assert status["status"] == "succeeded" and status["attempts"] == 1, status
        assert env.workers[0].log_path.read_text().count("Retry in") >= 4
    finally:
        env.stop_workers()
        proxy.cut()
        drop_postgres_database(database)


@pytest.mark.parametrize("stale_after,outage", [(5, 12), (None, 90)], ids=["fast-settings", "defaults-90s"])
def test_database_away_longer_than_the_stale_threshold_requeues_no_live_job(tmp_path, medium_cifar,
                                                                             stale_after, outage):
    """When the database comes back, every heartbeat looks old: the reaper gives the workers one
    stale interval to write again before it judges anyone, and the log lines written meanwhile
    are kept for the next heartbeat. Once with fast settings (an outage of twice the threshold),
    once at the shipped defaults (60 s threshold, 5 s reaper rounds, 5 s heartbeats) and 90 s."""
    proxy = CuttableProxy()
    database = make_postgres_database()
    env, _ = make_env("sqlite", tmp_path / "home", medium_cifar)
    env.vars.update(CIFARQ_DATABASE_URL=f"postgresql+psycopg://postgres@127.0.0.1:{proxy.port}/{database}")
    if stale_after:
        env.vars.update(CIFARQ_STALE_AFTER_SECONDS=str(stale_after), CIFARQ_REAP_INTERVAL_SECONDS="1")
    else:
        env.vars.pop("CIFARQ_HEARTBEAT_SECONDS")
    direct = {"CIFARQ_DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}"}
    try:
        env.cli("db", "upgrade")
        env.start_worker()
        job_id = env.submit_train("--epochs", "20", "--lr", "0.01", "--log-every", "50")
        env.wait_until_training(job_id, steps=50)
        proxy.cut()
        time.sleep(outage)  # longer than the stale threshold without a single heartbeat
        proxy.restore()
        assert env.cli("wait", job_id, "--timeout", "300", extra_env=direct).returncode == 0
        status = env.cli_json("status", job_id)
        assert status["status"] == "succeeded" and status["attempts"] == 1, status
        steps_per_epoch = status["progress"]["steps_per_epoch"]
        log = env.cli("logs", job_id).stdout
        printed = [line for line in log.splitlines() if line.startswith("[") and "loss:" in line]
        assert len(printed) == 20 * (steps_per_epoch // 50), "log lines were lost while the database was away"
        assert "reaper round failed" in env.workers[0].log_path.read_text()
    finally:
        env.stop_workers()
        proxy.cut()
        drop_postgres_database(database)

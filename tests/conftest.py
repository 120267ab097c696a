"""Fixtures that use the real thing: PostgreSQL and Redis on this machine, the embedded SQLite +
filesystem broker, `cifarq` run as a subprocess, and real `cifarq worker` processes."""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.fakedata import write_cifar10

REPO = Path(__file__).resolve().parents[1]
PG_ADMIN_URL = os.environ.get("CIFARQ_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("CIFARQ_TEST_REDIS", "redis://127.0.0.1:6379")
BACKENDS = ["sqlite", "postgres"]


@dataclass
class Env:
    """One cifarq installation: its environment, and helpers to run the CLI against it."""

    vars: dict[str, str]
    home: Path
    workers: list[subprocess.Popen] = field(default_factory=list)

    def cli(self, *args: str, check: bool = True, timeout: float = 120, extra_env: dict | None = None,
            ) -> subprocess.CompletedProcess:
        result = subprocess.run([sys.executable, "-m", "api_cli.main", *args], capture_output=True, text=True,
                                env={**self.vars, **(extra_env or {})}, cwd=REPO, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"cifarq {' '.join(args)} exited {result.returncode}: {result.stderr}")
        return result

    def cli_json(self, *args: str, **kwargs):
        return json.loads(self.cli(*args, "--json", **kwargs).stdout)

    def submit_train(self, *flags: str) -> str:
        return self.cli_json("submit", "train", *flags)["id"]

    def start_worker(self, *flags: str, name: str = "worker",
                     limit_address_space_gb: float | None = None) -> subprocess.Popen:
        log = open(self.home / f"{name}-{len(self.workers)}.log", "w")

        def limit():
            if limit_address_space_gb:
                import resource

                size = int(limit_address_space_gb * 2**30)
                resource.setrlimit(resource.RLIMIT_AS, (size, size))

        proc = subprocess.Popen([sys.executable, "-m", "api_cli.main", "worker", *flags], env=self.vars, cwd=REPO,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=limit)
        proc.log_path = Path(log.name)
        self.workers.append(proc)
        deadline = time.monotonic() + 60
        while "ready." not in proc.log_path.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"worker did not start:\n{proc.log_path.read_text()}")
            time.sleep(0.2)
        return proc

    def worker_running(self, job_id: str) -> subprocess.Popen:
        """The worker process whose log shows it started this job most recently."""
        for proc in reversed(self.workers):
            if proc.poll() is None and f"[{job_id}] running on" in proc.log_path.read_text():
                return proc
        raise AssertionError(f"no live worker runs job {job_id}")

    def kill_worker(self, proc: subprocess.Popen, sig: int = signal.SIGKILL, group: bool = True) -> None:
        """Signal the worker's whole process group (launcher, Celery, the job's process), or only
        the launcher, as `docker compose stop` does through the container's init."""
        (os.killpg if group else os.kill)(proc.pid, sig)
        proc.wait(timeout=120)

    def wait_for(self, job_id: str, predicate, timeout: float = 120, what: str = "condition") -> dict:
        deadline = time.monotonic() + timeout
        while True:
            status = self.cli_json("status", job_id)
            if predicate(status):
                return status
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id}: timed out waiting for {what}; last status {status}")
            time.sleep(0.3)

    def wait_until_training(self, job_id: str, steps: int = 1, timeout: float = 120) -> dict:
        """Until the job runs and has taken `steps` optimizer steps in all (the CLI is polled, about
        one call a second under load: give the job enough epochs to be caught running)."""
        def trained(s: dict) -> bool:
            progress = s.get("progress") or {}
            epoch, per_epoch, step = (progress.get(key) or 0 for key in ("epoch", "steps_per_epoch", "step"))
            done = epoch * per_epoch + step  # None before the first heartbeat with steps
            assert s["status"] in ("queued", "running"), f"job {job_id} ended before the test caught it: {s}"
            return s["status"] == "running" and done >= steps
        return self.wait_for(job_id, trained, timeout=timeout, what=f"{steps} steps of training")

    def stop_workers(self) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.workers:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.workers.clear()


def pytest_collection_modifyitems(items):
    """Whole files in this order: the container stack's first, then those with slow tests, then the
    rest, each file's own order kept (its module fixtures set up once). Under xdist's loadfile
    (pyproject.toml) the longest files then start first and the short ones fill in at the end."""
    rank = {}
    for item in items:
        module = item.nodeid.split("::", 1)[0]
        mine = 0 if item.get_closest_marker("containers") else 1 if item.get_closest_marker("slow") else 2
        rank[module] = min(rank.get(module, 2), mine)
    items.sort(key=lambda item: rank[item.nodeid.split("::", 1)[0]])  # stable: each file's order kept


def pytest_configure(config):
    # One torch.compile cache for the session, shared with the workers the tests start: the
    # default step's compile (~50 s on 2 cores) is then paid once, by whichever test compiles first.
    if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        config._cifarq_inductor_cache = tempfile.mkdtemp(prefix="cifarq-test-inductor-")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = config._cifarq_inductor_cache


def pytest_unconfigure(config):
    cache = getattr(config, "_cifarq_inductor_cache", None)
    if cache:
        shutil.rmtree(cache, ignore_errors=True)


def _base_env(home: Path, data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIFARQ_")}
    env.update(CIFARQ_HOME=str(home), CIFARQ_DATA_DIR=str(data_dir), CIFARQ_HEARTBEAT_SECONDS="0.5",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
               PYTHONUNBUFFERED="1",
               # Several workers share 2 cores in these tests; spinning OpenMP threads would
               # starve each other (batch-4 steps gain nothing from a second thread anyway).
               OMP_NUM_THREADS="1",
               # A worker compiles the default step at start (worker/warm_up.py): ~20 s of a core
               # at every worker start here; tests/test_warm_up.py turns it on where it is the subject.
               CIFARQ_CPU_WARM_UP="never")
    return env


def query(env, sql: str, job_id: str) -> list:
    """Read straight from the database, not through cifarq's own code (nor a CLI process)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(env.vars.get("CIFARQ_DATABASE_URL") or f"sqlite:///{env.home / 'cifarq.db'}")
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(text(sql), {"j": job_id})]
    finally:
        engine.dispose()


def register_some_workers(database) -> None:
    """Three rows in the workers table: live on default and cpu, live on gpu, and one on default
    whose heartbeat is a minute old (not alive): for the tests that count a queue's live workers."""
    from datetime import datetime, timedelta, timezone

    from sqlalchemy import update

    from shared.models import WorkerRecord
    from shared.registry import register_worker

    with database.session_scope() as session:
        for name, queues in (("live-default", ["default", "cpu"]), ("live-gpu", ["gpu"]), ("stale", ["default"])):
            register_worker(session=session, name=name, host="h", queues=queues, device="cpu", gpu_index=None,
                            gpu_name=None, pid=1)
        session.execute(update(WorkerRecord).where(WorkerRecord.name == "stale")
                        .values(heartbeat_at=datetime.now(timezone.utc) - timedelta(seconds=60)))


@pytest.fixture(scope="session")
def medium_cifar(tmp_path_factory) -> Path:
    """2,000 training images: an epoch takes half a second to a second; give a job to be interrupted
    10 epochs or more, or a test that polls the CLI (about a second a call under load) can miss it."""
    return write_cifar10(tmp_path_factory.mktemp("cifar-medium"), train_per_batch=400, test=200, signal=0.4)


@pytest.fixture(scope="session")
def small_cifar(tmp_path_factory) -> Path:
    """200 training and 100 test images in the official layout."""
    return write_cifar10(tmp_path_factory.mktemp("cifar"))


def make_postgres_database() -> str:
    import psycopg

    name = f"cifarq_test_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name


def drop_postgres_database(name: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def make_env(backend: str, home: Path, data_dir: Path) -> tuple[Env, callable]:
    home.mkdir(parents=True, exist_ok=True)
    env = Env(_base_env(home, data_dir), home)
    if backend == "sqlite":
        return env, lambda: None  # the embedded default: SQLite + filesystem broker under CIFARQ_HOME
    db_index, release_redis = claim_redis_database()
    try:
        database = make_postgres_database()
    except BaseException:
        release_redis()
        raise

    def cleanup():
        drop_postgres_database(database)
        release_redis()

    env.vars["CIFARQ_DATABASE_URL"] = f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}"
    env.vars["CIFARQ_BROKER_URL"] = f"{REDIS_URL}/{db_index}"
    try:
        env.cli("db", "upgrade")
    except BaseException:
        cleanup()
        raise
    return env, cleanup


def claim_redis_database(timeout: float = 300) -> tuple[int, callable]:
    """A Redis database number (1 to 15), emptied, that no other environment holds: neither this
    process's nor a parallel pytest process's (xdist's workers, another run). A claim is a key in
    database 0 that expires, so a run killed mid-test frees its numbers within the hour. Returns
    the number and the claim's release."""
    import redis

    owner = uuid.uuid4().hex
    with redis.Redis.from_url(f"{REDIS_URL}/0") as claims:
        def claim_one() -> int | None:
            for db_index in random.sample(range(1, 16), 15):
                if claims.set(f"cifarq-test:redis-db:{db_index}", owner, nx=True, ex=3600):
                    return db_index
            return None

        deadline = time.monotonic() + timeout
        while (db_index := claim_one()) is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"all 15 Redis test databases stayed claimed for {timeout:.0f} s")
            time.sleep(0.5)
    with redis.Redis.from_url(f"{REDIS_URL}/{db_index}") as database:
        database.flushdb()

    def release():
        with redis.Redis.from_url(f"{REDIS_URL}/0") as claims:
            key = f"cifarq-test:redis-db:{db_index}"
            if claims.get(key) == owner.encode():  # not one that expired and another run took since
                claims.delete(key)
    return db_index, release


@contextmanager
def env_with_worker(backend: str, home: Path, data_dir: Path):
    """An installation on `backend` with one running worker; its workers stopped and its
    database dropped afterwards, also when the worker fails to start."""
    env, cleanup = make_env(backend, home, data_dir)
    try:
        env.start_worker()
        yield env
    finally:
        env.stop_workers()
        cleanup()


@pytest.fixture(params=BACKENDS, scope="module")
def backend_env(request, tmp_path_factory, small_cifar):
    """A cifarq installation on each backend, with one running worker."""
    with env_with_worker(request.param, tmp_path_factory.mktemp(request.param), small_cifar) as env:
        yield env


@pytest.fixture
def sqlite_env(tmp_path, small_cifar):
    """The embedded default with no worker: for what the client does on its own."""
    env, _ = make_env("sqlite", tmp_path / "home", small_cifar)
    yield env
    env.stop_workers()


@pytest.fixture(params=BACKENDS)
def env(request, tmp_path, small_cifar):
    """A fresh installation on each backend with no worker yet (a module may define its own)."""
    env, cleanup = make_env(request.param, tmp_path / "home", small_cifar)
    yield env
    env.stop_workers()
    cleanup()


@pytest.fixture
def database(env, monkeypatch):
    """This process's own sessions on `env`'s database, for the tests that interleave or repeat
    writes themselves (`env` is the requesting module's fixture)."""
    from shared import db, settings

    for name, value in env.vars.items():
        if name.startswith("CIFARQ_"):
            monkeypatch.setenv(name, value)
    for name in [n for n in os.environ if n.startswith("CIFARQ_") and n not in env.vars]:
        monkeypatch.delenv(name)

    def forget_engine():
        if db.get_engine.cache_info().currsize:
            db.get_engine().dispose()
        db.get_engine.cache_clear()
        db._sessionmaker.cache_clear()
        settings.get_settings.cache_clear()

    forget_engine()
    yield db
    forget_engine()

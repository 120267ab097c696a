"""`cifarq worker --gpu auto`: workers on one host lease distinct GPUs, and give them back.

Real launcher processes on a simulated device list (CIFARQ_SIMULATED_GPUS; the Celery child
runs on the CPU), on both lease backends: Redis keys (with the Redis broker and PostgreSQL)
and file locks under CIFARQ_HOME (the embedded default).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
from sqlalchemy import create_engine, select

from shared.models import WorkerRecord
from tests.conftest import REPO, make_env
from worker.gpu_lease import KEY_PREFIX, Gpu, parse_nvidia_smi


def test_nvidia_smi_rows_are_parsed():
    text = "0, GPU-1d5e, NVIDIA H100 80GB HBM3\n1, GPU-77aa, NVIDIA A100-SXM4-40GB, rev B\n"
    assert parse_nvidia_smi(text) == [Gpu(0, "GPU-1d5e", "NVIDIA H100 80GB HBM3"),
                                      Gpu(1, "GPU-77aa", "NVIDIA A100-SXM4-40GB, rev B")]


def _database_url(env) -> str:
    return env.vars.get("CIFARQ_DATABASE_URL") or f"sqlite:///{env.home / 'cifarq.db'}"


def _rows(env) -> dict[int, WorkerRecord]:
    """pid -> the worker's registry row."""
    engine = create_engine(_database_url(env))
    try:
        with engine.connect() as conn:
            return {row.pid: row for row in conn.execute(select(WorkerRecord))}
    finally:
        engine.dispose()


def _start(env, *flags: str, extra_env: dict | None = None) -> subprocess.Popen:
    log = open(env.home / f"worker-{len(env.workers)}.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "api_cli.main", "worker", *flags],
                            env={**env.vars, **(extra_env or {})}, cwd=REPO, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    proc.log_path = log.name
    env.workers.append(proc)
    return proc


def _registered(env, proc, timeout: float = 60):
    """The worker's row, once its launcher has leased a GPU and registered."""
    deadline = time.monotonic() + timeout
    while proc.pid not in (rows := _rows(env)):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"worker did not register:\n{open(proc.log_path).read()}")
        time.sleep(0.2)
    return rows[proc.pid]


def _stop(proc, sig=signal.SIGTERM) -> None:
    os.killpg(proc.pid, sig)
    proc.wait(timeout=60)


@pytest.fixture(params=["sqlite", "postgres"])
def fleet(request, tmp_path, small_cifar):
    """An installation whose host 'has' three GPUs, with UUIDs no other test uses."""
    env, cleanup = make_env(request.param, tmp_path / "home", small_cifar)
    uuids = [f"GPU-{uuid.uuid4().hex[:8]}-{i}" for i in range(3)]
    env.vars["CIFARQ_SIMULATED_GPUS"] = ",".join(uuids)
    env.backend, env.uuids = request.param, uuids
    env.cli("db", "upgrade")  # SQLite migrates on first use; the test reads the table at once
    yield env
    env.stop_workers()
    cleanup()


def _lease_holders(env) -> set[str]:
    """The GPU UUIDs whose lease is held right now, read from the backend itself."""
    if env.backend == "postgres":
        import redis

        client = redis.Redis.from_url(env.vars["CIFARQ_BROKER_URL"])
        held = {u for u in env.uuids if client.get(KEY_PREFIX + u)}
        assert all(0 < client.ttl(KEY_PREFIX + u) <= 30 for u in held), "a lease without its TTL"
        return held
    import fcntl

    held = set()
    for u in env.uuids:
        path = env.home / "gpu-leases" / f"{u}.lock"
        if not path.exists():
            continue
        with open(path) as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(f, fcntl.LOCK_UN)
            except BlockingIOError:
                held.add(u)
    return held


def test_workers_lease_distinct_gpus_and_free_them_on_exit(fleet):
    procs = [_start(fleet, "--gpu", "auto") for _ in range(3)]
    rows = [_registered(fleet, p) for p in procs]
    assert sorted(r.gpu_index for r in rows) == [0, 1, 2], "two workers share a GPU"
    assert {r.gpu_name for r in rows} == {f"simulated {u}" for u in fleet.uuids}
    assert all(r.device == "cuda" and r.queues == "default,gpu" for r in rows)
    assert len({r.name for r in rows}) == 3
    assert _lease_holders(fleet) == set(fleet.uuids)

    # A fourth worker on this host: one clear line, non-zero exit, nothing registered.
    extra = subprocess.run([sys.executable, "-m", "api_cli.main", "worker"], env=fleet.vars, cwd=REPO,
                           capture_output=True, text=True, timeout=120)
    assert extra.returncode == 1, extra.stderr
    assert extra.stderr.strip().splitlines()[-1].startswith("error: all 3 GPUs of this host are leased")
    assert len(_rows(fleet)) == 3

    # Pinning a GPU that is taken fails too, and names who holds it.
    on_one = next(p for p, r in zip(procs, rows) if r.gpu_index == 1)
    pinned = subprocess.run([sys.executable, "-m", "api_cli.main", "worker", "--gpu", "auto"],
                            env={**fleet.vars, "CIFARQ_GPU": "1"}, cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert pinned.returncode == 1
    assert "GPU 1 is already leased" in pinned.stderr and f"pid {on_one.pid}" in pinned.stderr

    # The worker on GPU 1 stops: its row and its lease go, and the next worker gets GPU 1.
    _stop(on_one)
    assert on_one.pid not in _rows(fleet)
    assert _lease_holders(fleet) == set(fleet.uuids) - {fleet.uuids[1]}
    successor = _start(fleet)
    assert _registered(fleet, successor).gpu_index == 1
    assert _lease_holders(fleet) == set(fleet.uuids)


def test_a_worker_killed_hard_frees_its_file_lock_at_once(tmp_path, small_cifar):
    # The embedded backend only: a Redis lease of a killed worker lasts until its TTL (30 s).
    env, _ = make_env("sqlite", tmp_path / "home", small_cifar)
    env.vars["CIFARQ_SIMULATED_GPUS"] = f"GPU-{uuid.uuid4().hex[:8]}"
    env.cli("db", "upgrade")
    try:
        first = _start(env)
        assert _registered(env, first).gpu_index == 0
        _stop(first, signal.SIGKILL)
        second = _start(env)
        assert _registered(env, second).gpu_index == 0
    finally:
        env.stop_workers()

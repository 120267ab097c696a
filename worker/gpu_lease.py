"""One GPU per worker: `cifarq worker --gpu auto` leases a free GPU of its host.

Compose gives every replica the same device request (docker/compose#11863), so the replicas
share out the GPUs themselves. A lease is keyed by the GPU's UUID, never its index, so that
hosts sharing one Redis never collide (GPU 0 of host A is not GPU 0 of host B).

- Redis broker: a redis-py Lock on `cifarq:gpu-lease:<uuid>` whose token is the holder's
  description (`SET NX PX ttl` underneath), renewed by a thread while the worker lives and
  released on exit; a worker killed hard loses its lease after the TTL.
- Embedded broker (one machine): an flock on `$CIFARQ_HOME/gpu-leases/<uuid>.lock`; the
  kernel drops it when the process dies, however it dies.

GPUs are listed with nvidia-smi, or with torch in a throwaway process where nvidia-smi is
missing: the launcher itself never initialises CUDA. CIFARQ_SIMULATED_GPUS="GPU-a,GPU-b"
stands in for the list (tests, and trying the lease on a machine without GPUs).
"""
from __future__ import annotations

import fcntl
import logging
import os
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Protocol

from shared.errors import CifarqError

log = logging.getLogger("cifarq.gpu_lease")

LEASE_TTL_SECONDS = 30
KEY_PREFIX = "cifarq:gpu-lease:"


@dataclass(frozen=True)
class Gpu:
    index: int  # as nvidia-smi numbers it on this host
    uuid: str  # GPU-xxxxxxxx: stable, unique across hosts
    name: str


def parse_nvidia_smi(text: str) -> list[Gpu]:
    """Rows of `nvidia-smi --query-gpu=index,uuid,name --format=csv,noheader`."""
    gpus = []
    for row in text.strip().splitlines():
        index, uuid, name = (part.strip() for part in row.split(",", 2))
        gpus.append(Gpu(int(index), uuid, name))
    return gpus


_TORCH_PROBE = """
import torch
if torch.cuda.is_available():
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        print(f"{i}, GPU-{p.uuid}, {p.name}")
"""


def list_gpus() -> list[Gpu]:
    simulated = os.environ.get("CIFARQ_SIMULATED_GPUS")
    if simulated is not None:
        uuids = [u.strip() for u in simulated.split(",") if u.strip()]
        return [Gpu(i, uuid, f"simulated {uuid}") for i, uuid in enumerate(uuids)]
    if shutil.which("nvidia-smi"):
        command = ["nvidia-smi", "--query-gpu=index,uuid,name", "--format=csv,noheader"]
    else:
        # No nvidia-smi: ask torch, in a process of its own (it initialises CUDA, we must not).
        command = [sys.executable, "-c", _TORCH_PROBE]
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=120)
        return parse_nvidia_smi(out.stdout) if out.returncode == 0 else []
    except (OSError, subprocess.SubprocessError, ValueError):
        return []


class Lease(Protocol):
    gpu: Gpu

    def release(self) -> None: ...


class FileLease:
    """Held as long as this process keeps the file open (the Celery child does not inherit it)."""

    def __init__(self, gpu: Gpu, file) -> None:
        self.gpu, self._file = gpu, file

    @classmethod
    def try_take(cls, gpu: Gpu, folder: Path, holder: str) -> Optional["FileLease"]:
        folder.mkdir(parents=True, exist_ok=True)
        file = open(folder / f"{gpu.uuid}.lock", "a+")
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.close()
            return None
        file.seek(0)
        file.truncate()
        file.write(holder + "\n")  # for people: who holds it
        file.flush()
        return cls(gpu, file)

    def release(self) -> None:
        if not self._file.closed:
            self._file.close()


class RedisLease:
    """A redis-py Lock on the GPU's key, taken with this worker's holder string as its token.
    redis-py renews and releases it with its own token-checked scripts: after a long stall,
    when another worker may hold the GPU, this one can neither renew nor delete that lease."""

    def __init__(self, gpu: Gpu, lock, ttl: int) -> None:
        self.gpu, self._lock, self._ttl = gpu, lock, ttl
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew_forever, daemon=True, name="gpu-lease")
        self._thread.start()

    @classmethod
    def try_take(cls, gpu: Gpu, client, holder: str, ttl: int) -> Optional["RedisLease"]:
        # thread_local=False: the token must be visible to the renewing thread too.
        lock = client.lock(KEY_PREFIX + gpu.uuid, timeout=ttl, thread_local=False)
        return cls(gpu, lock, ttl) if lock.acquire(blocking=False, token=holder) else None

    def _renew_forever(self) -> None:
        from redis.exceptions import LockNotOwnedError

        while not self._stop.wait(self._ttl / 3):
            try:
                self._lock.reacquire()  # the TTL back to its full length
            except LockNotOwnedError:
                log.error("lost the lease on GPU %s (%s): another worker may be using it",
                          self.gpu.index, self.gpu.uuid)
            except Exception as exc:  # Redis away for a moment: try again next round
                log.warning("could not renew the lease on GPU %s: %s", self.gpu.index, exc)

    def release(self) -> None:
        self._stop.set()
        try:
            self._lock.release()
        except Exception as exc:  # not ours any more, or Redis away: the TTL frees it anyway
            log.warning("could not release the lease on GPU %s: %s", self.gpu.index, exc)


def holder_of(gpu: Gpu, *, broker_url: Optional[str], home: Path) -> Optional[str]:
    """Who holds the lease on this GPU (for the error message), if anyone says so."""
    try:
        if broker_url and broker_url.startswith(("redis://", "rediss://")):
            import redis

            value = redis.Redis.from_url(broker_url).get(KEY_PREFIX + gpu.uuid)
            return value.decode() if value else None
        return (home / "gpu-leases" / f"{gpu.uuid}.lock").read_text().strip() or None
    except Exception:
        return None


def take_lease(gpus: list[Gpu], *, broker_url: Optional[str], home: Path, holder: str,
               ttl: int = LEASE_TTL_SECONDS) -> Lease:
    """A lease on the first free GPU of `gpus`; a CifarqError when every one is taken."""
    if broker_url and broker_url.startswith(("redis://", "rediss://")):
        import redis

        client = redis.Redis.from_url(broker_url, socket_timeout=5, socket_connect_timeout=5)
        try_take = lambda gpu: RedisLease.try_take(gpu, client, holder, ttl)  # noqa: E731
        where = "in Redis"
    elif broker_url is None or broker_url.startswith("filesystem://"):
        try_take = lambda gpu: FileLease.try_take(gpu, home / "gpu-leases", holder)  # noqa: E731
        where = f"under {home / 'gpu-leases'}"
    else:
        raise CifarqError(f"--gpu auto needs a Redis broker or the embedded one, not {broker_url.split(':')[0]}://")
    for gpu in gpus:
        try:
            lease = try_take(gpu)
        except Exception as exc:
            raise CifarqError(f"could not lease a GPU {where}: {exc}") from exc
        if lease is not None:
            return lease
    if len(gpus) == 1:
        holder = holder_of(gpus[0], broker_url=broker_url, home=home)
        raise CifarqError(f"GPU {gpus[0].index} is already leased {where}"
                          f"{f' by {holder}' if holder else ''}: one worker per GPU")
    raise CifarqError(f"all {len(gpus)} GPUs of this host are leased {where} by other workers: "
                      f"run at most {len(gpus)} workers here (--scale worker={len(gpus)})")

"""`cifarq run train` and `cifarq local start|stop|status`: the whole job from one command.

`run` = a worker (a running one is reused, else a local one is started in the background)
+ `submit` + `wait` + `results`. The local worker is a detached `cifarq worker` with its state
file and log under CIFARQ_HOME; it is never left behind without the user being told how to
stop it. Everything goes through the same settings, so it works unchanged on Redis + PostgreSQL.
"""
from __future__ import annotations

import fcntl
import inspect
import json
import os
import signal
import subprocess
import sys
import time
import typing
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer

from api_cli import jobs_cmd, submit_cmd
from api_cli.options import JsonOption
from api_cli.output import print_json, say
from shared.errors import CifarqError

START_TIMEOUT_SECONDS = 180.0  # torch's first import on a cold, busy machine


# --------------------------------------------------------------------------- the local worker

def _files() -> tuple[Path, Path, Path]:
    from shared.settings import get_settings

    home = get_settings().home
    home.mkdir(parents=True, exist_ok=True)
    return home / "local-worker.json", home / "local-worker.log", home / "local-worker.lock"


def _backends() -> dict[str, str]:
    from shared.settings import get_settings, redact_url

    settings = get_settings()
    return {"broker": redact_url(settings.broker), "database": redact_url(settings.database)}


def _alive(pid: int) -> bool:
    """Whether `pid` is still our local worker. By hand rather than with psutil: a signal 0 and one
    /proc read cover Linux, and psutil would be a compiled dependency of every client install
    (about 1 MB, some 70 ms to import) for the one check it adds, a recycled pid on macOS."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists():  # Linux: a recycled pid that is not our worker does not count
        try:
            text = cmdline.read_bytes()
        except OSError:
            return False
        return b"worker" in text and b"<defunct>" not in text
    return True


def _running() -> Optional[dict]:
    """The local worker's state, if it is alive; a stale state file is removed."""
    state_file, _, _ = _files()
    try:
        state = json.loads(state_file.read_text())
    except (FileNotFoundError, ValueError):
        return None
    if _alive(state["pid"]):
        return state
    state_file.unlink(missing_ok=True)
    return None


@contextmanager
def _locked():
    # Two `cifarq run` at once must not start two local workers.
    _, _, lock_file = _files()
    with open(lock_file, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _check_same_backends(state: dict) -> None:
    if {k: state.get(k) for k in ("broker", "database")} != _backends():
        raise CifarqError(f"the local worker (pid {state['pid']}) uses broker {state['broker']} and database "
                          f"{state['database']}, not this configuration's: stop it with `cifarq local stop`")


def start_local_worker(gpu: str = "auto") -> tuple[dict, bool]:
    """(state, started): the running local worker, or a new one once it is ready for jobs."""
    from api_cli.admin import _need_worker_extra

    state_file, log_file, _ = _files()
    with _locked():
        state = _running()
        if state is not None:
            _check_same_backends(state)
            return state, False
        _need_worker_extra()
        offset = log_file.stat().st_size if log_file.exists() else 0
        with open(log_file, "ab") as log:
            # A session of its own: Ctrl-C in this terminal does not reach it, and `local stop`
            # can end the whole group if it will not stop.
            proc = subprocess.Popen([sys.executable, "-m", "api_cli.main", "worker", "--gpu", gpu],
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        state = {"pid": proc.pid, "log": str(log_file), "started_at": time.time(), **_backends()}
        state_file.write_text(json.dumps(state))
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while True:
        with open(log_file, "rb") as log:
            log.seek(offset)
            text = log.read().decode(errors="replace")
        if " ready." in text:
            return state, True
        if proc.poll() is not None:
            state_file.unlink(missing_ok=True)
            last = (text.strip().splitlines() or ["(no output)"])[-1]
            raise CifarqError(f"the local worker exited at start ({last}); its log: {log_file}")
        if time.monotonic() > deadline:
            say(f"the local worker (pid {proc.pid}) is still starting; its log: {log_file}")
            return state, True
        time.sleep(0.2)


def stop_local_worker(timeout: float) -> Optional[dict]:
    """SIGTERM (its running job goes back to the queue), then SIGKILL to the group after `timeout`."""
    state_file, _, _ = _files()
    state = _running()
    if state is None:
        return None
    pid = state["pid"]
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _alive(pid):
        os.killpg(pid, signal.SIGKILL)
        say(f"the local worker (pid {pid}) did not stop within {timeout:g} s: killed; "
            "its job, if any, is re-queued once its heartbeat is stale")
    state_file.unlink(missing_ok=True)
    return state


def start(
    gpu: Annotated[str, typer.Option(help="As `cifarq worker --gpu`: auto, none, or a GPU index.")] = "auto",
    json_output: JsonOption = False,
) -> None:
    """Start a worker in the background (or find the one already running).

    Example: cifarq local start
    """
    state, started = start_local_worker(gpu)
    if json_output:
        print_json({**state, "running": True, "started": started})
    else:
        say(f"{'started' if started else 'already running:'} local worker, pid {state['pid']}, "
            f"log {state['log']}; stop it with: cifarq local stop")


def stop(
    timeout: Annotated[float, typer.Option(help="Seconds to let it stop before it is killed.", min=0)] = 30.0,
) -> None:
    """Stop the background worker. A running job goes back to the queue and resumes later.

    Example: cifarq local stop
    """
    state = stop_local_worker(timeout)
    say(f"stopped the local worker (pid {state['pid']})" if state else "no local worker is running")


def status_(json_output: JsonOption = False) -> None:
    """Whether the background worker runs, its pid and its log. Exit 0 if it runs, 1 if not.

    Example: cifarq local status --json
    """
    state = _running()
    if json_output:
        print_json({**(state or {}), "running": state is not None})
    elif state:
        say(f"local worker running, pid {state['pid']}, broker {state['broker']}, log {state['log']}")
    else:
        say("no local worker is running (start one with: cifarq local start)")
    if state is None:
        raise typer.Exit(1)


# --------------------------------------------------------------------------- cifarq run

def _consumers(queue: str) -> list[tuple[str, int, str]]:
    """(name, pid, host) of each live worker that consumes `queue`."""
    from shared.db import session_scope
    from shared.registry import live_workers

    with session_scope() as session:
        return [(w.name, w.pid, w.host) for w in live_workers(session=session, queue=queue)]


def _local_queues(state: dict) -> str:
    """The queues the local worker consumes, from its row in the workers table."""
    import socket

    from shared.db import session_scope
    from shared.registry import live_workers

    with session_scope() as session:
        rows = [w for w in live_workers(session=session) if w.pid == state["pid"] and w.host == socket.gethostname()]
    return rows[0].queues.replace(",", ", ") if rows else "no queue yet (it is not registered)"


def _ensure_worker(queue: str) -> None:
    """A live worker that consumes `queue`: the local one, another running one, or a local one
    started now. Never one that cannot take the job (a CPU worker for a --device cuda job):
    then nothing is queued, and the error says what to start."""
    import socket

    from shared.states import how_to_serve

    local = _running()
    if local is not None:
        _check_same_backends(local)
    consumers = _consumers(queue)
    here = socket.gethostname()
    if local is not None and any(pid == local["pid"] and host == here for _, pid, host in consumers):
        say(f"using the local worker (pid {local['pid']}); stop it with: cifarq local stop")
        return
    if consumers:
        names = [name for name, *_ in consumers]
        say(f"using running worker{'s' if len(names) > 1 else ''}: {', '.join(names)}")
        return
    started = local is None
    if started:
        say("starting a local worker in the background...")
        local, _ = start_local_worker()
        if _consumers(queue):
            say(f"started a local worker (pid {local['pid']}, log {local['log']}); stop it with: cifarq local stop")
            return
    reads = _local_queues(local)
    if started:
        stop_local_worker(timeout=30)
    raise CifarqError(f"no live worker can take this job: it goes to queue {queue!r}, and the local worker "
                      f"(pid {local['pid']}{', now stopped' if started else ''}) consumes {reads}; "
                      f"{how_to_serve(queue)}, or use --device auto; nothing was queued")


def train(**flags) -> None:
    """Train the tutorial's Net on CIFAR-10 and print its per-class test accuracy, all in one go.

    Takes every flag of `cifarq submit train`. Starts a background worker if none is running.

    Example: cifarq run train --epochs 2
    """
    from shared.jobspec import TrainConfig, parse_config
    from shared.states import JobKind, queue_for_device

    json_output = flags.pop("json_output", False)
    queue = flags.pop("queue", None)
    config = parse_config(TrainConfig, flags)
    _ensure_worker(queue or queue_for_device(config.device))
    job_id = submit_cmd.submit(JobKind.train, config, queue)
    say(f"job {job_id} queued")
    try:
        jobs_cmd.wait(job_id)
    except (KeyboardInterrupt, typer.Abort):
        say(f"stopped following; job {job_id} goes on: cifarq wait {job_id}")
        raise
    jobs_cmd.results(job_id, json_output=json_output)


# The flags are `submit train`'s own, so the two never drift apart.
train.__signature__ = inspect.signature(submit_cmd.train, eval_str=True)
train.__annotations__ = typing.get_type_hints(submit_cmd.train, include_extras=True)

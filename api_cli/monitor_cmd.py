"""`cifarq workers` and `cifarq queue`: what runs where, and what waits, from the database
(shared/monitoring.py)."""
from __future__ import annotations

from typing import Annotated

import typer

from api_cli.options import JsonOption
from api_cli.output import print_json, print_table, say


def _age(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s ago"
    if seconds < 7200:
        return f"{seconds // 60}m ago"
    return f"{seconds // 3600}h ago"


def workers(
    all_: Annotated[bool, typer.Option("--all", help="Also show workers whose heartbeat is stale (likely dead).")] = False,
    json_output: JsonOption = False,
) -> None:
    """Live workers: host, device, GPU, the job each is running, and its last heartbeat.

    A worker whose heartbeat is older than 8 s (four missed beats) is stale: hidden unless
    --all, and marked so. `cifarq run` counts the same workers as live.

    Example: cifarq workers --all --json
    """
    from shared.db import session_scope
    from shared.monitoring import worker_overview

    with session_scope() as session:
        rows = worker_overview(session=session)
    shown = rows if all_ else [row for row in rows if not row["stale"]]
    if json_output:
        print_json(shown)
    else:
        print_table(["name", "host", "device", "gpu", "job", "heartbeat"], [
            [row["name"], row["host"], row["device"],
             "-" if row["gpu_name"] is None else f"{row['gpu_index']}: {row['gpu_name']}",
             "-" if row["job"] is None else f"{row['job']['id']} (epoch {row['job']['epoch']}/{row['job']['epochs']})",
             _age(row["heartbeat_age_seconds"]) + (" STALE" if row["stale"] else "")] for row in shown])
    hidden = len(rows) - len(shown)
    if hidden:
        say(f"{hidden} stale worker(s) hidden; --all shows them")
    elif not rows and not json_output:
        say("no worker has reported: start one with `cifarq worker`")


def queue(json_output: JsonOption = False) -> None:
    """Jobs waiting per queue (counts and the oldest), and how many run, from the database.

    Example: cifarq queue --json
    """
    from shared.db import session_scope
    from shared.monitoring import queue_overview

    with session_scope() as session:
        rows = queue_overview(session=session)
    if json_output:
        print_json(rows)
        return
    print_table(["queue", "queued", "running", "oldest queued"], [
        [row["queue"], row["queued"], row["running"],
         "-" if row["oldest"] is None else f"{row['oldest']['id']} ({_age(row['oldest']['waiting_seconds'])})"]
        for row in rows])
    if not rows:
        say("nothing queued or running")

"""Reading jobs: status, wait, results, list, logs; and cancel."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from api_cli.options import JobIdArg, JsonOption
from api_cli.output import print_json, print_table, say
from api_cli.progress import ProgressView, progress_line
from shared.states import JobKind, JobStatus

if TYPE_CHECKING:
    from shared.job_watch import JobWatch

POLL_SECONDS = 1.0  # one primary-key read a second per follower (heartbeats come every 5 s by default)
SERVED_CHECK_SECONDS = 10.0  # how often a follower of a queued job asks whether any worker could take it


def _load(job_id: str, *, quick: bool = False) -> dict:
    """The job's status object. `quick`: try a read without SQLAlchemy first (shared/job_view.py),
    for a one-off read; a follower polls through the ORM's pooled connection instead of opening
    one a second."""
    if quick:
        from shared.job_view import read_job
        from shared.settings import get_settings

        found = read_job(get_settings().database, job_id)
        if found is not None:
            return found
    from shared.db import session_scope
    from shared.job_view import job_to_dict
    from shared.jobs import get_job

    with session_scope() as session:
        return job_to_dict(get_job(session=session, job_id=job_id))


def _last_epoch_speed(job_id: str) -> Optional[float]:
    """images/s of the job's last finished epoch: the speed shown before two heartbeats are seen."""
    from shared.db import session_scope
    from shared.results import last_epoch_speed

    with session_scope() as session:
        return last_epoch_speed(session=session, job_id=job_id)


def _live_consumers(queue: str) -> int:
    """How many live workers consume `queue`: none means a queued job there waits for good."""
    from shared.db import session_scope
    from shared.registry import live_workers

    with session_scope() as session:
        return len(live_workers(session=session, queue=queue))


def status(
    job_id: JobIdArg,
    follow: Annotated[bool, typer.Option("--follow", "-f", help=(
        "Draw live progress on stderr until the job ends, then print its status."))] = False,
    json_output: JsonOption = False,
) -> None:
    """State, progress and metrics of a job, from the database (no worker needed).

    Example: cifarq status 3f2a9c1e --json

    Example: cifarq status 3f2a9c1e --follow
    """
    job = _follow(job_id) if follow else _load(job_id, quick=True)
    queued = job["status"] == JobStatus.queued.value
    if "live_consumers" not in job:  # the quick read counted them already
        job["live_consumers"] = _live_consumers(job["queue"]) if queued else None
    if json_output:
        print_json(job)
        return
    from shared.provenance import provenance_rows

    rows = [("id", job["id"]), ("kind", job["kind"]), ("status", progress_line(job)),
            ("device", job["device"] or "-"), ("worker", job["worker"] or "-"), ("attempts", job["attempts"]),
            ("params", " ".join(f"{k}={v}" for k, v in job["params"].items() if v is not None)),
            ("created", job["created_at"]), ("finished", job["finished_at"] or "-"),
            *provenance_rows(job["provenance"], device=False)]  # what ran: versions, data digest
    if job["sweep_id"]:
        rows.append(("sweep", job["sweep_id"]))
    if job["pack_id"]:
        rows.append(("pack", pack_line(job)))
    if job["error"]:
        rows.append(("error", job["error"]))
    if queued and not job["live_consumers"]:
        from shared.states import nobody_serves

        rows.append(("waiting", nobody_serves(job["queue"])))
    for key, value in rows:
        typer.echo(f"{key:9s} {value}")


def pack_line(job: dict) -> str:
    """'5b1c07d2e9f0a3b4 (trained with 7 other points)': the pack a sweep point was queued in, and
    how its current or last attempt ran (a point resumed after a worker died may run alone)."""
    together = job["packed_with"]
    if together:
        verb = "training" if job["status"] == JobStatus.running.value else "trained"
        how = f"{verb} with {together - 1} other point{'s' if together > 2 else ''}"
    elif job["status"] == JobStatus.queued.value or job["started_at"] is None:
        how = "queued packed"
    else:
        how = "ran alone"
    return f"{job['pack_id']} ({how})"


def _follow(job_id: str, deadline: Optional[float] = None) -> dict:
    """Read the job row once a second and draw its progress on stderr until it ends (or the
    deadline passes); its end, announced at its commit, ends the wait at once (shared/job_watch.py)."""
    from shared.job_watch import JobWatch
    from shared.settings import get_settings

    job = _load(job_id, quick=True)
    job.pop("live_consumers", None)  # the quick read's count: not part of the status object
    with JobWatch(get_settings().database, job["id"]) as watch:
        # Read again now that the watch listens: an end written in between is not missed.
        return _follow_watched(watch.read() or job, watch, deadline)


def _follow_watched(job: dict, watch: JobWatch, deadline: Optional[float]) -> dict:
    view = ProgressView(epoch_images_per_second=watch.last_epoch_speed(lambda: _last_epoch_speed(job["id"])))
    epochs_seen = job["progress"]["epoch"]
    served, served_checked = True, -SERVED_CHECK_SECONDS
    while True:
        if JobStatus(job["status"]).is_final:
            view.finish(job)
            return job
        if job["status"] == JobStatus.queued.value and time.monotonic() - served_checked >= SERVED_CHECK_SECONDS:
            served_checked = time.monotonic()
            was_served, served = served, watch.live_consumers(job["queue"], lambda: _live_consumers(job["queue"])) > 0
            if was_served and not served:  # said once, and again only after a worker came and went
                from shared.states import nobody_serves

                view.note(f"{job['id']} waits: {nobody_serves(job['queue'])}")
        if job["progress"]["epoch"] != epochs_seen:  # an epoch ended: its speed is the next guess
            epochs_seen = job["progress"]["epoch"]
            view.speed.epoch_images_per_second = watch.last_epoch_speed(lambda: _last_epoch_speed(job["id"]))
        view.update(job)
        if deadline is not None and time.monotonic() >= deadline:
            view.finish(job)
            return job
        watch.wait(POLL_SECONDS)
        job = watch.read() or _load(job["id"])


def wait(
    job_id: JobIdArg,
    timeout: Annotated[Optional[float], typer.Option(help="Give up after this many seconds (exit 2).", min=0)] = None,
    json_output: JsonOption = False,
) -> None:
    """Block until the job ends: exit 0 if it succeeded, 1 if it failed or was cancelled, 2 on timeout.

    Example: cifarq wait 3f2a9c1e --timeout 600
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    job = _follow(job_id, deadline)
    if not JobStatus(job["status"]).is_final:
        if json_output:
            print_json(job)
        say(f"timed out after {timeout:g} s; the job is still {job['status']}")
        raise typer.Exit(2)
    if json_output:
        print_json(job)
    if job["status"] != JobStatus.succeeded.value:
        if job["error"]:  # a cancelled job's error already says "cancelled: ..."
            error = job["error"]
            say(error if error.startswith(job["status"]) else f"{job['status']}: {error}")
        raise typer.Exit(1)


def results(job_id: JobIdArg, json_output: JsonOption = False) -> None:
    """Test accuracy, and per class, with the confusion matrix in --json.

    Example: cifarq results 3f2a9c1e
    """
    from shared.db import session_scope
    from shared.jobs import get_job
    from shared.results import get_result, result_to_dict

    with session_scope() as session:
        job = get_job(session=session, job_id=job_id)
        data = result_to_dict(get_result(session=session, job=job))
    if json_output:
        print_json(data)
        return
    typer.echo(f"Accuracy of the network on the {data['total']} test images: {100 * data['accuracy']:.1f} %")
    print_table(["class", "correct", "total", "accuracy"],
                [(row["class"], row["correct"], row["total"], f"{100 * row['accuracy']:.1f} %")
                 for row in data["per_class"]])


def list_(
    status: Annotated[Optional[JobStatus], typer.Option(help="Only jobs in this state.")] = None,
    kind: Annotated[Optional[JobKind], typer.Option(help="Only jobs of this kind.")] = None,
    sweep: Annotated[Optional[str], typer.Option(
        help="Only the jobs of this sweep (id or unique prefix), best test accuracy first.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many jobs.", min=1, max=100000)] = 20,
    json_output: JsonOption = False,
) -> None:
    """Jobs, newest first; with --sweep, the sweep's jobs ranked by test accuracy.

    Example: cifarq list --status running --json

    Example: cifarq list --sweep 5b1c07d2
    """
    from shared.db import session_scope
    from shared.job_view import job_to_dict
    from shared.jobs import list_jobs, sweep_jobs

    with session_scope() as session:
        if sweep is None:
            found = list_jobs(session=session, status=status, kind=kind, limit=limit)
        else:
            found = [job for job in sweep_jobs(session=session, sweep_id=sweep)
                     if (status is None or job.status == status) and (kind is None or job.kind == kind)][:limit]
        jobs = [job_to_dict(job) for job in found]
    if json_output:
        print_json(jobs)
        return
    headers = ["id", "kind", "status", "progress", "accuracy", "created"]
    rows = [[j["id"], j["kind"], j["status"],
             f"{j['progress']['epoch']}/{j['progress']['epochs']}" if j["kind"] == "train" else "",
             f"{100 * j['metrics']['test_accuracy']:.1f}%" if j["metrics"]["test_accuracy"] is not None else "",
             j["created_at"][:19]] for j in jobs]
    if sweep is not None:
        from api_cli.sweep_cmd import SWEPT

        headers = ["rank", *headers[:4], *SWEPT, "accuracy"]
        rows = [[i + 1, *row[:4], *(j["params"].get(name) for name in SWEPT), row[4]]
                for i, (row, j) in enumerate(zip(rows, jobs))]
    print_table(headers, rows)


def logs(
    job_id: JobIdArg,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines until the job ends.")] = False,
    tail: Annotated[Optional[int], typer.Option(help="Only the last N lines (then new ones with --follow).",
                                                min=0)] = None,
) -> None:
    """The training log of a job (the tutorial's loss lines, epochs, accuracy).

    Read a page at a time, so a job that logged every step prints without holding its log in memory.

    Example: cifarq logs 3f2a9c1e --follow
    """
    from shared.db import session_scope
    from shared.jobs import LOG_PAGE, get_job, last_log_line_id, log_lines_after

    after = None
    while True:
        with session_scope() as session:
            job = get_job(session=session, job_id=job_id)
            final = job.status.is_final
            if after is None:
                after = 0 if tail is None else last_log_line_id(session=session, job_id=job.id, count=tail)
            lines = log_lines_after(session=session, job_id=job.id, after_id=after)
        for line in lines:
            typer.echo(line.line)
            after = line.id
        if len(lines) == LOG_PAGE:
            continue  # more already written: the next page at once
        if not follow or (final and not lines):
            return
        time.sleep(POLL_SECONDS)


def cancel(job_id: JobIdArg, json_output: JsonOption = False) -> None:
    """Cancel a job: a queued one never runs, a running one stops at its next safe point.

    Example: cifarq cancel 3f2a9c1e
    """
    from shared.db import session_scope
    from shared.job_view import job_to_dict
    from shared.jobs import get_job, request_cancel

    with session_scope() as session:
        job = request_cancel(session=session, job=get_job(session=session, job_id=job_id))
        data = job_to_dict(job)
    if json_output:
        print_json(data)
    elif data["status"] == JobStatus.cancelled.value:
        say(f"{data['id']}: cancelled")
    else:
        say(f"{data['id']}: cancel requested; it stops at its next safe point")

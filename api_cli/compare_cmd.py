"""`cifarq compare`: jobs side by side (params, what ran, accuracy, per class), or a sweep ranked by accuracy.

Deltas are against the first job given (the baseline), in percentage points.
"""
from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from api_cli.options import JsonOption
from api_cli.output import print_json, print_table
from shared.errors import CifarqError
from shared.provenance import provenance_rows


def compare_jobs(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """Deltas of every job against the first: accuracy and per class (fractions, None where unknown)."""
    base = summaries[0]
    deltas = []
    for other in summaries[1:]:
        accuracy = None
        if other["accuracy"] is not None and base["accuracy"] is not None:
            accuracy = other["accuracy"] - base["accuracy"]
        per_class = {name: other["per_class"][name] - value
                     for name, value in base["per_class"].items() if name in other["per_class"]}
        deltas.append({"id": other["id"], "accuracy": accuracy, "per_class": per_class})
    return {"baseline": base["id"], "jobs": summaries, "deltas": deltas}


def _percent(value: Optional[float]) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _delta(value: Optional[float]) -> str:
    return "" if value is None else f"{100 * value:+.1f}"


def compare(
    job_ids: Annotated[Optional[list[str]], typer.Argument(
        help="Jobs to compare (ids or unique prefixes); the first is the baseline.", show_default=False)] = None,
    sweep: Annotated[Optional[str], typer.Option(help="Rank the jobs of this sweep by test accuracy instead.")] = None,
    json_output: JsonOption = False,
) -> None:
    """Jobs side by side: params, what ran (versions, device, data digest), test accuracy and
    per-class accuracy, with deltas against the first; * marks a row whose values differ.

    With --sweep, the sweep's jobs are ranked by test accuracy, best first.

    Example: cifarq compare 3f2a9c1e 8b0d44a7

    Example: cifarq compare --sweep 5b1c07d2 --json
    """
    from shared.db import session_scope
    from shared.jobs import get_job, resolve_sweep, sweep_jobs
    from shared.results import job_summary

    if (sweep is None) == (not job_ids):
        raise CifarqError("give two or more job ids, or --sweep ID")
    if sweep is None and len(job_ids) < 2:
        raise CifarqError("give two or more job ids to compare (or --sweep ID)")
    with session_scope() as session:
        if sweep is not None:
            sweep_id = resolve_sweep(session=session, sweep_id=sweep)
            jobs = sweep_jobs(session=session, sweep_id=sweep_id)
        else:
            jobs = [get_job(session=session, job_id=job_id) for job_id in job_ids]
        summaries = [job_summary(session=session, job=job) for job in jobs]
    if sweep is not None:
        _print_sweep(sweep_id, summaries, json_output)
        return
    data = compare_jobs(summaries)
    if json_output:
        print_json(data)
        return
    _print_side_by_side(data)


def _print_side_by_side(data: dict[str, Any]) -> None:
    jobs, deltas = data["jobs"], [None, *data["deltas"]]
    keys = list(dict.fromkeys(key for job in jobs for key in job["params"]))
    rows: list[list[Any]] = [["kind", *(j["kind"] for j in jobs)], ["status", *(j["status"] for j in jobs)]]

    def starred(label: str, values: list[Any]) -> list[Any]:
        marker = "*" if len({repr(v) for v in values}) > 1 else ""  # a star marks what differs
        return [label + marker, *("-" if v is None else v for v in values)]

    for key in keys:
        rows.append(starred(key, [job["params"].get(key) for job in jobs]))
    # What ran: versions, device, data digest (shared/provenance.py); "-" for a job not started.
    ran = [dict(provenance_rows(job.get("provenance"))) for job in jobs]
    for label in dict.fromkeys(label for rows_of_job in ran for label in rows_of_job):
        rows.append(starred(label, [rows_of_job.get(label) for rows_of_job in ran]))

    def with_delta(value, delta):
        return _percent(value) + (f" ({_delta(delta)})" if delta is not None else "")

    rows.append(["accuracy", *(with_delta(j["accuracy"], d and d["accuracy"]) for j, d in zip(jobs, deltas))])
    classes = list(dict.fromkeys(name for job in jobs for name in job["per_class"]))
    for name in classes:
        rows.append([name, *(with_delta(j["per_class"].get(name), d and d["per_class"].get(name))
                             for j, d in zip(jobs, deltas))])
    print_table(["", *(job["id"] for job in jobs)], rows)
    typer.echo(f"(deltas in percentage points against {data['baseline']}; * marks what differs)")


def _print_sweep(sweep_id: str, summaries: list[dict[str, Any]], json_output: bool) -> None:
    from api_cli.sweep_cmd import SWEPT

    ranked = [{"rank": i + 1, **s} for i, s in enumerate(summaries)]
    if json_output:
        print_json({"sweep": sweep_id, "jobs": ranked})
        return
    varied = [name for name in SWEPT if len({repr(s["params"].get(name)) for s in summaries}) > 1] or list(SWEPT)
    best = ranked[0]["accuracy"] if ranked and ranked[0]["accuracy"] is not None else None
    print_table(["rank", "id", "status", *varied, "accuracy", "vs best"],
                [[r["rank"], r["id"], r["status"], *(r["params"].get(name) for name in varied), _percent(r["accuracy"]),
                  _delta(r["accuracy"] - best) if best is not None and r["accuracy"] is not None else ""]
                 for r in ranked])

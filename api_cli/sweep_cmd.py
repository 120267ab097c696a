"""`cifarq submit sweep`: a grid of train jobs (the cartesian product of comma lists), as one sweep.

Every combination is validated before any row is written: a bad value anywhere queues nothing.
"""
from __future__ import annotations

import itertools
import uuid
from typing import Annotated, Callable, Optional

import typer

from api_cli.options import DeviceOption, JsonOption, QueueOption
from api_cli.output import print_json, print_table, say
from shared.errors import CifarqError

# The knobs a sweep can vary, in the order of the grid (and of the columns of `list --sweep`).
SWEPT = ("lr", "width", "batch_size", "momentum", "seed", "epochs")
MAX_JOBS = 1000  # a typo like --seed 0,1,...,9999 should not flood the queue


def parse_list(flag: str, text: Optional[str], convert: Callable[[str], object]) -> Optional[list]:
    """'0.01,0.001' -> [0.01, 0.001]; None stays None (the recipe's default)."""
    if text is None:
        return None
    values = []
    for item in text.split(","):
        item = item.strip()
        try:
            values.append(convert(item))
        except ValueError:
            kind = "whole numbers" if convert is int else "numbers"
            raise CifarqError(f"invalid --{flag} {text!r}: expected comma-separated {kind}, got {item!r}") from None
    if len(set(values)) != len(values):
        raise CifarqError(f"invalid --{flag} {text!r}: a value is repeated")
    return values


def sweep(
    lr: Annotated[Optional[str], typer.Option(help="SGD learning rates, comma-separated.")] = None,
    width: Annotated[Optional[str], typer.Option(help="Widths of the first conv, comma-separated.")] = None,
    batch_size: Annotated[Optional[str], typer.Option(help="Mini-batch sizes, comma-separated.")] = None,
    momentum: Annotated[Optional[str], typer.Option(help="SGD momentums, comma-separated.")] = None,
    seed: Annotated[Optional[str], typer.Option(help="Seeds, comma-separated (repeats of one recipe).")] = None,
    epochs: Annotated[Optional[str], typer.Option(help="Epoch counts, comma-separated.")] = None,
    log_every: Annotated[Optional[int], typer.Option(help="Mini-batches between log lines (every job).")] = None,
    device: DeviceOption = "auto",
    queue: QueueOption = None,
    json_output: JsonOption = False,
) -> None:
    """Queue a grid of train jobs: every combination of the comma-separated values, as one sweep.

    Flags left out keep the tutorial's default. Rank the results with `cifarq compare --sweep ID`.

    Example: cifarq submit sweep --lr 0.01,0.001 --width 6,32 --epochs 5
    """
    from api_cli.submit_cmd import submit
    from shared.jobspec import TrainConfig, parse_config
    from shared.states import JobKind, JobStatus

    grid = {name: values for name, values in (
        ("lr", parse_list("lr", lr, float)), ("width", parse_list("width", width, int)),
        ("batch_size", parse_list("batch-size", batch_size, int)),
        ("momentum", parse_list("momentum", momentum, float)),
        ("seed", parse_list("seed", seed, int)), ("epochs", parse_list("epochs", epochs, int)),
    ) if values is not None}
    if not grid:
        raise CifarqError("a sweep needs at least one list, e.g. --lr 0.01,0.001")
    size = 1
    for values in grid.values():
        size *= len(values)
    if size > MAX_JOBS:
        raise CifarqError(f"the grid has {size} combinations; at most {MAX_JOBS} jobs per sweep")
    fixed = {"device": device} if log_every is None else {"device": device, "log_every": log_every}
    configs = [parse_config(TrainConfig, {**fixed, **dict(zip(grid, combination))})
               for combination in itertools.product(*grid.values())]

    sweep_id = uuid.uuid4().hex[:16]
    job_ids: list[str] = []
    for config in configs:
        try:
            job_ids.append(submit(JobKind.train, config, queue, sweep_id=sweep_id))
        except CifarqError as exc:
            if not job_ids:
                raise
            raise CifarqError(f"{exc} (sweep {sweep_id}: {len(job_ids)} of {len(configs)} jobs were queued "
                              f"before this; cancel them or queue the rest)") from exc
    if json_output:
        print_json({"sweep": sweep_id, "jobs": [{"id": i, "status": JobStatus.queued.value} for i in job_ids]})
        return
    varied = list(grid)
    print_table(["id", *varied], [[i, *(c.model_dump()[name] for name in varied)] for i, c in zip(job_ids, configs)])
    say(f"sweep {sweep_id}: {len(job_ids)} jobs queued; rank them with: cifarq compare --sweep {sweep_id}")

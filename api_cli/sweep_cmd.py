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
from shared.recipes import PACK_SIZE

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
    pack: Annotated[bool, typer.Option(
        "--pack/--no-pack",
        help="Train the points that share a width, batch size and epochs together, as one batched model "
             "on one worker (each point stays its own job); --no-pack sends each job on its own.")] = True,
    pack_size: Annotated[Optional[int], typer.Option(
        min=1, max=MAX_JOBS, show_default=False,
        help=f"The most points per pack (default by device: cpu {PACK_SIZE['cpu']}, i.e. not packed: it did not "
             f"pay on a 2-core CPU; cuda {PACK_SIZE['cuda']}; auto: cuda's when a live worker of the queue "
             f"has a GPU).")] = None,
    json_output: JsonOption = False,
) -> None:
    """Queue a grid of train jobs: every combination of the comma-separated values, as one sweep.

    Flags left out keep the tutorial's default. Rank the results with `cifarq compare --sweep ID`.

    Example: cifarq submit sweep --lr 0.01,0.001 --width 6,32 --epochs 5
    """
    from api_cli.submit_cmd import queue_of, submit, submit_pack
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

    queue = queue_of(configs[0], queue)
    groups = packs(configs, pack_size or default_pack_size(device, queue)) if pack else [[c] for c in configs]

    sweep_id = uuid.uuid4().hex[:16]
    queued: dict[int, str] = {}  # id(config) -> job id
    for group in groups:
        try:
            if len(group) == 1:
                ids = [submit(JobKind.train, group[0], queue, sweep_id=sweep_id)]
            else:
                ids = submit_pack(group, queue, sweep_id=sweep_id, pack_id=uuid.uuid4().hex[:16])
        except CifarqError as exc:
            if not queued:
                raise
            raise CifarqError(f"{exc} (sweep {sweep_id}: {len(queued)} of {len(configs)} jobs were queued "
                              f"before this; cancel them or queue the rest)") from exc
        queued.update(zip(map(id, group), ids))
    job_ids = [queued[id(c)] for c in configs]  # in the grid's order, whatever the packs
    if json_output:
        print_json({"sweep": sweep_id, "jobs": [{"id": i, "status": JobStatus.queued.value} for i in job_ids]})
        return
    varied = list(grid)
    print_table(["id", *varied], [[i, *(c.model_dump()[name] for name in varied)] for i, c in zip(job_ids, configs)])
    packed = [g for g in groups if len(g) > 1]
    how = (f", {sum(map(len, packed))} of them in {len(packed)} pack{'s' if len(packed) > 1 else ''} "
           f"trained together" if packed else "")
    say(f"sweep {sweep_id}: {len(job_ids)} jobs queued{how}; rank them with: cifarq compare --sweep {sweep_id}")


def packs(configs: list, size: int) -> list[list]:
    """The points that share a shape (shared/jobspec.py: pack_shape), in the grid's order,
    cut into packs of at most `size`, as even as that allows (9 points at 8: 5 and 4, not 8 and 1)."""
    from shared.jobspec import pack_shape

    by_shape: dict[tuple, list] = {}
    for config in configs:
        by_shape.setdefault(pack_shape(config) or (id(config),), []).append(config)
    groups = []
    for members in by_shape.values():
        count = -(-len(members) // size)  # ceil
        base, extra = divmod(len(members), count)
        start = 0
        for i in range(count):
            end = start + base + (1 if i < extra else 0)
            groups.append(members[start:end])
            start = end
    return groups


def default_pack_size(device: str, queue: str) -> int:
    """PACK_SIZE of the device the points will run on; for auto, cuda's when a live worker
    that consumes the queue has a GPU, the CPU's otherwise."""
    if device != "auto":
        return PACK_SIZE["cpu" if device == "cpu" else "cuda"]
    from shared.db import session_scope
    from shared.registry import live_workers

    with session_scope() as session:
        devices = {w.device for w in live_workers(session=session, queue=queue)}
    return PACK_SIZE["cuda" if "cuda" in devices else "cpu"]

"""`cifarq checkpoint list|export` and `cifarq prune`: checkpoints are stored in the database;
export writes a file; prune thins finished jobs' older epochs."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from api_cli.options import JobIdArg, JsonOption
from api_cli.output import print_json, print_table, say
from api_cli.submit_cmd import parse_checkpoint_ref
from shared.errors import CifarqError


def list_(job_id: JobIdArg, json_output: JsonOption = False) -> None:
    """Checkpoints of a job, one per finished epoch.

    Example: cifarq checkpoint list 3f2a9c1e
    """
    from shared.db import session_scope
    from shared.jobs import checkpoint_to_dict, list_checkpoints

    with session_scope() as session:
        rows = [checkpoint_to_dict(c) for c in list_checkpoints(session=session, job_id=job_id)]
    if json_output:
        print_json(rows)
    else:
        print_table(["epoch", "size", "sha256", "created"],
                    [(r["epoch"], r["size"], r["sha256"][:16], r["created_at"][:19]) for r in rows])


def export(
    ref: Annotated[str, typer.Argument(metavar="JOB[:EPOCH]", help="A job's checkpoint; its latest without :EPOCH.")],
    file: Annotated[Path, typer.Argument(help="Where to write the .pt file.")],
    force: Annotated[bool, typer.Option("--force", help="Overwrite FILE if it exists.")] = False,
) -> None:
    """Write a checkpoint's weights as a .pt file: `net.load_state_dict(torch.load(FILE))` loads it into the tutorial's Net.

    Example: cifarq checkpoint export 3f2a9c1e:2 cifar_net.pth
    """
    from shared.db import session_scope
    from shared.jobs import find_checkpoint

    job_id, epoch = parse_checkpoint_ref(ref)
    if file.is_dir():
        raise CifarqError(f"{file} is a directory; give the path of the .pt file to write")
    if file.exists() and not force:
        raise CifarqError(f"{file} exists; pass --force to overwrite it")
    with session_scope() as session:
        checkpoint = find_checkpoint(session=session, job_id=job_id, epoch=epoch)  # hash checked there
        data, expected, epoch, job_id = checkpoint.weights, checkpoint.sha256, checkpoint.epoch, checkpoint.job_id
    # Written beside the target and renamed: a failed export never leaves half a file.
    directory = file.resolve().parent
    if not directory.is_dir():
        raise CifarqError(f"directory {directory} does not exist")
    with tempfile.NamedTemporaryFile(dir=directory, prefix=f".{file.name}.", delete=False) as tmp:
        tmp.write(data)
    try:
        os.replace(tmp.name, file)
    except OSError as exc:
        os.unlink(tmp.name)
        raise CifarqError(f"cannot write {file}: {exc.strerror}") from exc
    say(f"wrote {file} ({len(data)} bytes, job {job_id}, epoch {epoch}, sha256 {expected[:16]}...)")


def prune(
    older_than: Annotated[float, typer.Option(
        help="Only jobs that finished at least this many days ago.", min=0)] = 30,
    keep_last: Annotated[int, typer.Option(
        help="Epoch checkpoints each job keeps besides its best and the one its results came from.", min=1)] = 1,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would go; delete nothing.")] = False,
    json_output: JsonOption = False,
) -> None:
    """Delete the older epoch checkpoints of finished jobs; results, metrics and logs stay.

    Each job keeps its last --keep-last checkpoints, its best epoch (lowest loss) and any
    checkpoint a result was computed from. One transaction per job.

    Example: cifarq prune --older-than 30 --dry-run
    """
    from datetime import timedelta

    from shared.clock import database_now
    from shared.db import session_scope
    from shared.jobs import delete_checkpoints, jobs_finished_before, prunable_checkpoints

    with session_scope() as session:
        job_ids = [job.id for job in jobs_finished_before(
            session=session, before=database_now(session) - timedelta(days=older_than))]
    pruned = []
    for job_id in job_ids:
        with session_scope() as session:
            doomed = prunable_checkpoints(session=session, job_id=job_id, keep_last=keep_last)
            if doomed and not dry_run:
                delete_checkpoints(session=session, checkpoints=doomed)
        if doomed:
            pruned.append({"job": job_id, "epochs": [c.epoch for c in doomed], "bytes": sum(c.size for c in doomed)})
    total = sum(row["bytes"] for row in pruned)
    if json_output:
        print_json({"dry_run": dry_run, "jobs": pruned, "bytes": total})
        return
    for row in pruned:
        typer.echo(f"{row['job']}\tepochs {','.join(map(str, row['epochs']))}\t{row['bytes']} bytes")
    verb = "would delete" if dry_run else "deleted"
    say(f"{verb} {sum(len(r['epochs']) for r in pruned)} checkpoints of {len(pruned)} jobs ({total / 2**20:.1f} MiB)")

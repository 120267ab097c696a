"""`cifarq checkpoint list|export`: checkpoints are stored in the database; export writes a file."""
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
    os.replace(tmp.name, file)
    say(f"wrote {file} ({len(data)} bytes, job {job_id}, epoch {epoch}, sha256 {expected[:16]}...)")

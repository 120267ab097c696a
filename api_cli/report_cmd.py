"""`cifarq report`: a job's figures as PNGs and one self-contained HTML page (drawn by api_cli/report_render.py)."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Annotated, Optional

import typer

from api_cli.options import JobIdArg, JsonOption
from api_cli.output import print_json, say
from shared.errors import CifarqError


def report(
    job_id: JobIdArg,
    out: Annotated[Optional[Path], typer.Option(
        help="Directory for index.html and the PNGs. Default: $CIFARQ_ARTIFACTS_DIR/<job>/report.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite a report already in --out.")] = False,
    json_output: JsonOption = False,
) -> None:
    """Write a finished job's report as PNGs and one self-contained HTML page.

    Loss and accuracy curves, the confusion matrix, per-class accuracy, and a grid of test images
    with their predictions (when CIFARQ_DATA_DIR holds the test set).

    Example: cifarq report 3f2a9c1e --out report/ && xdg-open report/index.html
    """
    if importlib.util.find_spec("matplotlib") is None:
        raise CifarqError("reports need matplotlib: pip install 'cifarq[report]'")
    from api_cli.report_render import REPORT_FILES, render_report
    from shared.db import session_scope
    from shared.results import load_report_data
    from shared.settings import get_settings

    settings = get_settings()
    with session_scope() as session:
        data = load_report_data(session=session, job_id=job_id)
    if out is not None and not force:  # the default folder is cifarq's own: rewritten freely
        taken = [name for name in REPORT_FILES if (out / name).exists() or (out / name).is_symlink()]
        if taken:
            raise CifarqError(f"{out} already holds {', '.join(taken)}; pass --force to overwrite")
    out = out or settings.artifacts / data.job["id"] / "report"
    if out.exists() and not out.is_dir():
        raise CifarqError(f"{out} exists and is not a directory")
    written = render_report(data, out, settings.data)
    for note in written["notes"]:
        say(note)
    if json_output:
        print_json(written)
    else:
        typer.echo(written["html"])

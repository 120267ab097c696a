"""`cifarq doctor`: every check of shared/doctor.py, one line each, and an exit code scripts trust."""
from __future__ import annotations

import typer

from api_cli.options import JsonOption
from api_cli.output import print_json, say

LABELS = {"ok": "ok", "warn": "warn", "fail": "FAIL"}


def doctor(json_output: JsonOption = False) -> None:
    """Check this installation and say what to fix: the database (reachable, schema at head), the
    broker, the live workers and their devices, queues with jobs but no worker, the data set, and
    the space left for checkpoints.

    One line per check: ok, warn or FAIL, what it found and, when not ok, the fix. Exits 1 when a
    check failed (warnings do not fail). Read-only: it creates nothing, and waits at most a few
    seconds for a server that does not answer.

    Example: cifarq doctor --json
    """
    import logging
    import os

    from shared.doctor import FAIL, WARN, run_checks

    if os.environ.get("CIFARQ_DEBUG"):  # a check that raised: its traceback on stderr
        logging.basicConfig(format="%(name)s: %(message)s")
        logging.getLogger("cifarq.doctor").setLevel(logging.DEBUG)
    checks = run_checks()
    failed = [check.name for check in checks if check.status == FAIL]
    warned = [check.name for check in checks if check.status == WARN]
    if json_output:
        print_json({"ok": not failed, "failed": failed, "warnings": warned,
                    "checks": [check.as_dict() for check in checks]})
    else:
        for check in checks:
            fix = f"; fix: {check.fix}" if check.fix and check.status != "ok" else ""
            message = check.message.rstrip(".") if fix else check.message  # "refused.; fix:" reads badly
            typer.echo(f"{LABELS[check.status]:<6}{check.name:<11}{message}{fix}")
        if failed or warned:
            say(f"failed: {', '.join(failed) or 'nothing'}; warnings: {', '.join(warned) or 'none'}")
    if failed:
        raise typer.Exit(1)

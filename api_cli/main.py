"""`cifarq`: submit CIFAR-10 training and evaluation jobs and read what the workers recorded.

Every error the user can cause ends the same way, in one place (OneLineErrors): one line on
stderr and a non-zero exit; the traceback only with --debug or CIFARQ_DEBUG=1.
"""
from __future__ import annotations

import os
import sys
import traceback

import typer
from typer.core import TyperGroup
from typer.exceptions import TyperException

from api_cli import (
    admin,
    checkpoint_cmd,
    compare_cmd,
    doctor_cmd,
    jobs_cmd,
    local_cmd,
    monitor_cmd,
    report_cmd,
    submit_cmd,
    sweep_cmd,
)
from shared.errors import CifarqError, first_line


class OneLineErrors(TyperGroup):
    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.Abort:
            _fail("interrupted", 130)
        except TyperException as exc:  # Typer's usage errors: a bad flag, a value of the wrong type
            # `cifarq` or `cifarq submit` alone: the help asked for, not an error. By name: typer
            # 0.29 raises it from its private copy of click.
            if type(exc).__name__ == "NoArgsIsHelpError":
                sys.stdout.write(exc.format_message() + "\n")
                sys.exit(0)
            message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
            _fail(message, getattr(exc, "exit_code", 2))
        except CifarqError as exc:
            _fail(str(exc), exc.exit_code)
        except Exception as exc:  # noqa: BLE001 - the last line of defence against tracebacks
            _fail(_describe_unexpected(exc), 1)
        sys.exit(code if isinstance(code, int) else 0)


def _debug() -> bool:
    return os.environ.get("CIFARQ_DEBUG", "").lower() in ("1", "true", "yes")


def _fail(message: str, code: int) -> None:
    if _debug() and sys.exc_info()[0] is not None:
        traceback.print_exc()
    # One line whatever the message holds: a value the user gave (a path, an id) may carry a
    # newline, and scripts read the first line of stderr as the error.
    one_line = message.strip().replace("\r", "\\r").replace("\n", "\\n")
    sys.stderr.write(f"error: {one_line}\n")
    sys.exit(code)


def _describe_unexpected(exc: Exception) -> str:
    from sqlalchemy.exc import OperationalError

    if isinstance(exc, OperationalError):
        from shared.settings import get_settings, redact_url

        return f"database unreachable at {redact_url(get_settings().database)}: {first_line(exc.orig or exc)}"
    hint = "" if _debug() else " (run with --debug for the traceback)"
    return f"unexpected {type(exc).__name__}: {first_line(exc)}{hint}"


app = typer.Typer(
    cls=OneLineErrors,
    name="cifarq",
    help="CIFAR-10 training as batch jobs: submit, watch, and read results.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    # Click's plain help: typer 0.29's rich panels print `<bool>` beside every flag (--help too).
    rich_markup_mode=None,
)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"cifarq {version('cifarq')}")
        except PackageNotFoundError:  # run from a checkout that was never installed
            typer.echo("cifarq (not installed)")
        raise typer.Exit()


@app.callback()
def _global_options(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors.", envvar="CIFARQ_DEBUG"),
    version: bool = typer.Option(False, "--version", help="Print cifarq's version and exit.", is_eager=True,
                                 callback=_print_version),
) -> None:
    if debug:
        os.environ["CIFARQ_DEBUG"] = "1"


# The whole command tree, in the order `cifarq --help` lists it. Each command is a plain function
# in its module, with its options, help and examples; this is the one place that names the
# commands and puts them in groups, so that the CLI's surface reads in one screen.
COMMANDS = [
    ("status", jobs_cmd.status),
    ("wait", jobs_cmd.wait),
    ("results", jobs_cmd.results),
    ("list", jobs_cmd.list_),
    ("logs", jobs_cmd.logs),
    ("cancel", jobs_cmd.cancel),
    ("prune", checkpoint_cmd.prune),
    ("report", report_cmd.report),
    ("compare", compare_cmd.compare),
    ("workers", monitor_cmd.workers),
    ("queue", monitor_cmd.queue),
    ("doctor", doctor_cmd.doctor),
    ("worker", admin.worker),
    ("beat", admin.beat),
]
GROUPS = [
    ("submit", "Put a train or evaluate job on the queue.",
     [("train", submit_cmd.train), ("evaluate", submit_cmd.evaluate), ("sweep", sweep_cmd.sweep)]),
    ("checkpoint", "List and export stored checkpoints.",
     [("list", checkpoint_cmd.list_), ("export", checkpoint_cmd.export)]),
    ("db", "Database schema.",
     [("upgrade", admin.upgrade)]),
    ("local", "A background worker on this machine (state and log under CIFARQ_HOME).",
     [("start", local_cmd.start), ("stop", local_cmd.stop), ("status", local_cmd.status_)]),
    ("run", "Submit a job, make sure a worker runs it, follow it, print its results.",
     [("train", local_cmd.train)]),
]


def _add_commands() -> None:
    for name, function in COMMANDS:
        app.command(name)(function)
    for group_name, help_text, commands in GROUPS:
        group = typer.Typer(help=help_text, no_args_is_help=True, rich_markup_mode=None)
        for name, function in commands:
            group.command(name)(function)
        app.add_typer(group, name=group_name)


_add_commands()


def main() -> None:
    app()


if __name__ == "__main__":
    main()

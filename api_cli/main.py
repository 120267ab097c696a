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

from shared.errors import CifarqError


class OneLineErrors(TyperGroup):
    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.Abort:
            _fail("interrupted", 130)
        except TyperException as exc:  # Typer's usage errors: a bad flag, a value of the wrong type
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
    sys.stderr.write(f"error: {message}\n")
    sys.exit(code)


def _describe_unexpected(exc: Exception) -> str:
    from sqlalchemy.exc import OperationalError

    if isinstance(exc, OperationalError):
        from shared.settings import get_settings, redact_url

        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
        return f"database unreachable at {redact_url(get_settings().database)}: {reason}"
    hint = "" if _debug() else " (run with --debug for the traceback)"
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"unexpected {type(exc).__name__}: {first}{hint}"


app = typer.Typer(
    cls=OneLineErrors,
    name="cifarq",
    help="CIFAR-10 training as batch jobs: submit, watch, and read results.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
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


def _register() -> None:
    from api_cli import admin, checkpoint_cmd, compare_cmd, jobs_cmd, monitor_cmd, report_cmd, submit_cmd, sweep_cmd

    submit_cmd.app.command("sweep")(sweep_cmd.sweep)
    app.add_typer(submit_cmd.app, name="submit")
    jobs_cmd.register(app)
    app.command()(report_cmd.report)
    app.command()(compare_cmd.compare)
    monitor_cmd.register(app)
    app.add_typer(checkpoint_cmd.app, name="checkpoint")
    app.add_typer(admin.db_app, name="db")
    admin.register(app)
    from api_cli import local_cmd

    local_cmd.register(app)


_register()


def main() -> None:
    app()


if __name__ == "__main__":
    main()

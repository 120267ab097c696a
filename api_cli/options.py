"""Option aliases shared by several commands."""
from typing import Annotated

import typer

JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
JobIdArg = Annotated[str, typer.Argument(help="Job id (or a unique prefix of at least 4 characters).")]

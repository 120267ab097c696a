"""Options and arguments that several commands take, declared once: same flag, same help."""
from typing import Annotated, Optional

import typer

JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
JobIdArg = Annotated[str, typer.Argument(help="Job id (or a unique prefix of at least 4 characters).")]
DeviceOption = Annotated[str, typer.Option(
    help="auto (CUDA when the worker has it, else the CPU), cpu, cuda or cuda:N.")]
QueueOption = Annotated[Optional[str], typer.Option(
    help="Queue to send to. Default follows --device: cuda -> gpu, cpu -> cpu, auto -> default.")]

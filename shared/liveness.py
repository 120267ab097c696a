"""A liveness file: "this process did its periodic work at T; count it as alive until T + valid_for".

`cifarq worker` marks it after each heartbeat it writes to the database, `cifarq beat` after
each reaper round, when CIFARQ_LIVENESS_FILE names a file (docker-compose.yml sets it). A
container's healthcheck reads it with `python3 -m shared.liveness FILE`: a few milliseconds, no
database round trip, and no import of the CLI.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Optional


def mark_alive(path: Optional[Path], *, valid_for: float) -> None:
    """Write the deadline; a no-op when no file is configured. Atomic: a reader never sees half."""
    if path is None:
        return
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_text(f"{time.time() + valid_for:.3f}\n")
    os.replace(temporary, path)


def check(path: Path) -> Optional[str]:
    """None when alive; otherwise why not, in one line."""
    try:
        deadline = float(path.read_text())
    except FileNotFoundError:
        return f"{path} does not exist yet: the process has not finished its first round"
    except (OSError, ValueError) as exc:
        return f"{path} is unreadable: {exc}"
    late = time.time() - deadline
    if late > 0:
        return f"the last round was due {late:.0f} s ago (database or broker unreachable?)"
    return None


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        sys.stderr.write("usage: python -m shared.liveness FILE\n")
        return 2
    problem = check(Path(argv[0]))
    if problem:
        sys.stderr.write(f"unhealthy: {problem}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

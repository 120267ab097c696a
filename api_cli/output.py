"""Printing: data on stdout (JSON with --json), everything meant for people on stderr."""
from __future__ import annotations

import json
import math
import sys
from typing import Any, Iterable, Sequence


def print_json(data: Any) -> None:
    """Strict JSON: NaN and infinities (a diverged run's loss) are not JSON, so they print as null."""
    replaced: list[float] = []
    text = json.dumps(_finite_or_none(data, replaced), indent=2, allow_nan=False)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
    if replaced:
        say(f"note: {len(replaced)} value(s) were NaN or infinite (a diverged run?) and are printed as null")


def _finite_or_none(value: Any, replaced: list[float]) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        replaced.append(value)
        return None
    if isinstance(value, dict):
        return {key: _finite_or_none(item, replaced) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(item, replaced) for item in value]
    return value


def say(message: str) -> None:
    """A hint or progress line for people: stderr, so that stdout stays parseable."""
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def print_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    rows = [["" if cell is None else str(cell) for cell in row] for row in rows]
    widths = [max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(headers)]
    for row in [list(headers), *rows]:
        sys.stdout.write("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() + "\n")

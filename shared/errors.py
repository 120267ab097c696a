"""The one exception type that carries a message meant for the user, and how any exception is
said in one line."""
from __future__ import annotations


class CifarqError(Exception):
    """A user-facing error: the CLI prints its message on one line and exits non-zero."""

    exit_code = 1


class DatabaseUnreachable(CifarqError):
    """The database did not answer when a process first connected (shared/db.py). A worker's
    claim retries its message on it, as on a dropped connection."""


def first_line(exc: BaseException | None, limit: int = 300) -> str:
    """The first line of an exception's message, cut at `limit`; its type's name when it has none."""
    text = str(exc).strip() if exc is not None else ""
    return text.splitlines()[0][:limit] if text else type(exc).__name__


def shown(value: str, limit: int = 40) -> str:
    """A value the user gave, quoted for an error message, and cut when it is long."""
    return repr(value) if len(value) <= limit else f"{value[:16]!r}... ({len(value)} characters)"

"""The one exception type that carries a message meant for the user."""


class CifarqError(Exception):
    """A user-facing error: the CLI prints its message on one line and exits non-zero."""

    exit_code = 1

"""`cifarq submit train`'s quick write of a new job's row through the database's own driver
(shared/driver.py), without SQLAlchemy.

The quick write is one INSERT of the columns that shared/new_job.py queued_job_values names (the
ORM's create_job builds its Job from the same values); the database refuses a
column it does not have. After the message is sent, one UPDATE per job clears the debt and one
SELECT counts the queue's live workers, as shared/jobs.py message_sent and shared/registry.py do.
tests/test_job_write.py checks that both ways write the same row, on both backends.
"""
from __future__ import annotations

import enum
from datetime import datetime, timedelta
from typing import Any, Optional

from shared.driver import PlainConnection, plain_connection
from shared.errors import CifarqError, first_line
from shared.new_job import queued_job_values
from shared.states import JobKind


def insert_queued_job(database_url: str, *, kind: JobKind, params: dict[str, Any], queue: str,
                      lease_seconds: float) -> Optional[tuple[str, datetime]]:
    """Write a new queued job's row; its id and message lease. None where the quick write does not
    answer (a URL it does not know, a new or old schema, a database away): nothing was written,
    and the ORM's way writes it, or says what is wrong."""
    try:
        plain = plain_connection(database_url, write=True)
    except Exception:  # noqa: BLE001 - the ORM's way meets the same problem and says what it is
        return None
    if plain is None:
        return None
    with plain:
        values = queued_job_values(kind=kind, params=params, queue=queue,
                                   resend_after=plain.now() + timedelta(seconds=lease_seconds))
        stored = {column: _stored(plain, value) for column, value in values.items()}
        # One statement in autocommit: written whole, or not at all. Not retried the ORM's way:
        # a connection lost mid-statement leaves it unknown whether the row was written (if it
        # was, its debt stands, and a reaper sends its message when the lease runs out).
        try:
            plain.execute(f"INSERT INTO jobs ({', '.join(stored)}) VALUES ({', '.join(['{p}'] * len(stored))})",
                          tuple(stored.values()))
        except Exception as exc:
            raise CifarqError(f"writing the job's row failed: {first_line(exc)} (where the connection was lost, "
                              "it may have been written all the same: see `cifarq list`)") from exc
    return values["id"], values["resend_after"]


def messages_sent(database_url: str, leases: list[tuple[str, datetime]], queue: str) -> Optional[int]:
    """The broker took the jobs' messages: clear each debt taken under its lease (unless the job came
    to owe one anew), then count the live workers that consume `queue`. None where the quick way
    cannot answer (the caller then asks the ORM)."""
    try:
        plain = plain_connection(database_url, write=True)
        if plain is None:
            return None
        with plain:
            for job_id, lease in leases:
                plain.execute("UPDATE jobs SET resend_after = NULL WHERE id = {p} AND resend_after = {p}",
                              (job_id, plain.stored_time(lease)))
            return plain.live_consumers(queue)
    except Exception:  # noqa: BLE001 - the ORM's way meets the same problem and says what it is
        return None


def _stored(plain: PlainConnection, value: Any) -> Any:
    """A value as SQLAlchemy's column types store it: an enum by its name (native_enum=False),
    times and JSON as the driver's dialect keeps them."""
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, datetime):
        return plain.stored_time(value)
    if isinstance(value, dict):
        return plain.stored_json(value)
    return value

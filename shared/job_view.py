"""A job's status object (the JSON that scripts rely on), and a quick read of it for `cifarq status`.

`cifarq status ID` is what scripts and people run most, and importing SQLAlchemy's ORM with the
models is ~60% of its wall time (~160 ms of ~410 on 2 cores). So status first reads the one row
through the database's own driver (sqlite3, psycopg): `SELECT *` by id, the columns named and
typed by the database itself (SQLite's declared types: DATETIME, JSON, BOOLEAN; PostgreSQL's
real ones), so there is no second copy of the schema here. Anything that read cannot answer
plainly returns None, and the caller takes the ORM path, which says what is wrong: no such job,
an ambiguous prefix, a database away or behind on migrations, a URL this read does not know.
tests/test_job_view.py checks both reads give the same object, on both backends.
"""
from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional

from shared.clock import iso
from shared.states import ALIVE_SECONDS, JobKind, JobStatus

# The newest migration (Alembic's head; tests/test_migrations.py checks it). A database at
# another revision is left to shared/db.py, which migrates SQLite and stops on PostgreSQL.
HEAD_REVISION = "0006"


def job_to_dict(job: Any) -> dict[str, Any]:
    """The status object that scripts rely on (field names fixed): from a `shared.models.Job`
    or from read_job's row, which has the same attributes."""
    return {
        "id": job.id,
        "kind": job.kind.value,
        "status": job.status.value,
        "params": job.params,
        "queue": job.queue,
        "device": job.device,
        "worker": job.worker,
        "attempts": job.attempts,
        "error": job.error,
        "progress": {
            "epoch": job.epoch,
            "epochs": job.params.get("epochs"),
            "step": job.step,
            "steps_per_epoch": job.steps_per_epoch,
            "loss": job.loss,
            "phase": job.phase if job.status == JobStatus.running else None,
            "compile_seconds": job.compile_seconds,
        },
        "metrics": {"test_accuracy": job.test_accuracy},
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
        "heartbeat_at": iso(job.heartbeat_at),
        "sweep_id": job.sweep_id,
        "pack_id": job.pack_id,  # the pack it was queued in (packed sweeps); None otherwise
        "packed_with": job.packed_with,  # points its attempt trained together, itself included; None: alone
        "provenance": job.provenance,  # what ran, by the last attempt (shared/provenance.py); None before
    }


def may_be_id_prefix(text: str) -> bool:
    """An id or the prefix of one, as lookups take it: letters and digits only (so LIKE's
    wildcards never reach a query), 4 or more (a shorter prefix matches too much to be meant)."""
    return 4 <= len(text) <= 64 and text.isalnum()


def read_job(database_url: str, job_id: str) -> Optional[dict[str, Any]]:
    """job_to_dict of the job with this id or unique id prefix, with "live_consumers": how many
    live workers consume a queued job's queue (None for other jobs, as shared.registry counts
    them); or None where this quick read does not answer (the caller then asks the ORM, which
    explains)."""
    if not may_be_id_prefix(job_id):
        return None  # the ORM path says what is wrong with it
    try:
        if database_url.startswith("sqlite:///") and "?" not in database_url:
            row = _read_sqlite(database_url[len("sqlite:///"):], job_id)
        elif database_url.startswith(("postgresql+psycopg://", "postgresql://")):
            row = _read_postgres("postgresql://" + database_url.split("://", 1)[1], job_id)
        else:
            return None
        if row is None:
            return None
        consumers = row.pop("live_consumers")
        row["kind"], row["status"] = JobKind(row["kind"]), JobStatus(row["status"])
        return {**job_to_dict(SimpleNamespace(**row)), "live_consumers": consumers}
    except Exception:  # noqa: BLE001 - the ORM path meets the same problem and says what it is
        return None


# By id, else by prefix (as shared.jobs.get_job): two rows at most, so that an ambiguous prefix
# is seen (and left to the ORM path's error). LIKE is safe: see may_be_id_prefix.
_BY_ID = "SELECT * FROM jobs WHERE id = {p}"
_BY_PREFIX = "SELECT * FROM jobs WHERE id LIKE {p} LIMIT 2"


def _read_sqlite(path: str, job_id: str) -> Optional[dict[str, Any]]:
    if "%" in path or not Path(path).is_file():
        return None  # an escaped URL, or a new database that the ORM path creates and migrates
    # Read-only: this read never creates, migrates or locks anything.
    connection = sqlite3.connect(Path(path).resolve().as_uri() + "?mode=ro", uri=True, timeout=30,
                                 detect_types=sqlite3.PARSE_DECLTYPES)
    try:
        if connection.execute("SELECT version_num FROM alembic_version").fetchone() != (HEAD_REVISION,):
            return None
        # The embedded default's time is this host's (shared/clock.py database_now), stored naive.
        return _one(connection.cursor(), "?", job_id, now=datetime.now(timezone.utc).replace(tzinfo=None))
    finally:
        connection.close()


def _read_postgres(url: str, job_id: str) -> Optional[dict[str, Any]]:
    import psycopg

    with psycopg.connect(url, connect_timeout=5, autocommit=True) as connection:
        cursor = connection.cursor()
        cursor.execute("SELECT version_num FROM alembic_version")
        if cursor.fetchone() != (HEAD_REVISION,):
            return None
        cursor.execute("SELECT statement_timestamp()")  # the server's time, as shared/clock.py reads it
        return _one(cursor, "%s", job_id, now=cursor.fetchone()[0])


def _one(cursor, placeholder: str, job_id: str, *, now: datetime) -> Optional[dict[str, Any]]:
    cursor.execute(_BY_ID.format(p=placeholder), (job_id,))
    rows = cursor.fetchall()
    if not rows:
        cursor.execute(_BY_PREFIX.format(p=placeholder), (job_id + "%",))
        rows = cursor.fetchall()
    if len(rows) != 1:
        return None
    row = dict(zip([column[0] for column in cursor.description], rows[0]))
    row["live_consumers"] = None
    if row["status"] == JobStatus.queued.value:
        # shared.registry.live_workers' rule: a recent heartbeat, the queue among the row's queues.
        cursor.execute("SELECT queues, heartbeat_at FROM workers")
        since = now - timedelta(seconds=ALIVE_SECONDS)
        row["live_consumers"] = sum(1 for queues, beat in cursor.fetchall()
                                    if beat >= since and row["queue"] in queues.split(","))
    return row


# SQLite hands back text for these declared types; SQLAlchemy stores DateTime as ISO text
# (naive, as it reads them back), JSON as json.dumps, Boolean as 0/1. The converters are
# sqlite3's, process-wide, but apply only to connections opened with detect_types, as above
# (SQLAlchemy opens its own without).
sqlite3.register_converter("DATETIME", lambda raw: datetime.fromisoformat(raw.decode()))
sqlite3.register_converter("JSON", lambda raw: json.loads(raw))
sqlite3.register_converter("BOOLEAN", lambda raw: bool(int(raw)))

"""A job's status object (the JSON that scripts rely on), and a quick read of it for `cifarq status`.

`cifarq status ID` is what scripts and people run most. It first reads the one row through the
database's own driver (shared/driver.py): `SELECT *` by id, the columns named and typed by the
database itself (SQLite's declared types: DATETIME, JSON, BOOLEAN; PostgreSQL's real ones), so
there is no second copy of the schema here. Anything that read cannot answer plainly returns
None, and the caller takes the ORM path, which says what is wrong: no such job, an ambiguous
prefix, a database away or behind on migrations, a URL this read does not know.
tests/test_job_view.py checks both reads give the same object, on both backends.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Optional

from shared.clock import iso
from shared.driver import PlainConnection, plain_connection
from shared.states import JobKind, JobStatus


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
        plain = plain_connection(database_url)
        if plain is None:
            return None
        with plain:
            row = row_of(plain, job_id)
            if row is None:
                return None
            consumers = plain.live_consumers(row.queue) if row.status == JobStatus.queued else None
        return {**job_to_dict(row), "live_consumers": consumers}
    except Exception:  # noqa: BLE001 - the ORM path meets the same problem and says what it is
        return None


# By id, else by prefix (as shared.jobs.get_job): two rows at most, so that an ambiguous prefix
# is seen (and left to the ORM path's error). LIKE is safe: see may_be_id_prefix.
_BY_ID = "SELECT * FROM jobs WHERE id = {p}"
_BY_PREFIX = "SELECT * FROM jobs WHERE id LIKE {p} LIMIT 2"


def row_of(plain: PlainConnection, job_id: str) -> Optional[SimpleNamespace]:
    """The job's row, with the attributes of a `shared.models.Job` that job_to_dict reads; None
    where no one job has this id or unique prefix."""
    cursor = plain.execute(_BY_ID, (job_id,))
    rows = cursor.fetchall()
    if not rows:
        cursor = plain.execute(_BY_PREFIX, (job_id + "%",))
        rows = cursor.fetchall()
    if len(rows) != 1:
        return None
    row = dict(zip([column[0] for column in cursor.description], rows[0]))
    row["kind"], row["status"] = JobKind(row["kind"]), JobStatus(row["status"])
    return SimpleNamespace(**row)

"""A new job's row: the values it starts with, in one place. The ORM's create_job (shared/jobs.py)
builds its Job from them, and `cifarq submit train`'s quick write (shared/job_write.py) inserts
them; importable without SQLAlchemy or a database driver."""
from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Optional

from shared.clock import utcnow
from shared.states import JobKind, JobStatus


def new_job_id() -> str:
    return uuid.uuid4().hex[:16]


def queued_job_values(*, kind: JobKind, params: dict[str, Any], queue: str, resend_after: datetime,
                      sweep_id: Optional[str] = None, pack_id: Optional[str] = None) -> dict[str, Any]:
    """Every column a new job sets: queued, owing its first message from `resend_after` on (the
    submitter's lease: shared/jobs.py, "the message a queued job is owed"); the rest are NULL."""
    return dict(id=new_job_id(), kind=kind, status=JobStatus.queued, params=params, queue=queue,
                created_at=utcnow(), attempts=0, cancel_requested=False, epoch=0, step=0,
                sweep_id=sweep_id, pack_id=pack_id, resend_after=resend_after)

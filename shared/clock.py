"""Time as cifarq stores it: UTC. SQLite hands datetimes back without a zone; these put it back.

Heartbeats, stale checks and message leases compare times written by different hosts, so they
use one clock, the database server's (`database_now`); a host whose clock runs fast or slow
then neither re-queues live jobs nor keeps dead ones. SQLite is one host's file: its clock.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from sqlalchemy.orm import Session


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def as_utc(value: Optional[datetime]) -> Optional[datetime]:
    return value if value is None or value.tzinfo else value.replace(tzinfo=timezone.utc)


def iso(value: Optional[datetime]) -> Optional[str]:
    return None if value is None else as_utc(value).isoformat()


def database_now(session: "Session") -> datetime:
    """The database server's time (PostgreSQL's statement_timestamp()); this host's for SQLite."""
    if session.get_bind().dialect.name == "sqlite":
        return utcnow()
    from sqlalchemy import func, select

    return as_utc(session.scalar(select(func.statement_timestamp())))

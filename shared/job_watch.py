"""Following one job (`cifarq wait`, `status --follow`): its row read once a second on one
connection, and its end announced the moment it is committed, so that a follower returns when the
job ends rather than at its next read (half a second later on average, up to a second).

How an end is announced (`announce_end`, called wherever a job's final state is written):
- PostgreSQL: NOTIFY on the job's own channel, inside the transaction that writes the end: it is
  delivered at that commit, never for a write rolled back. The follower LISTENs on the connection
  it reads on, so following costs one connection (all its reads use it) and one read a second.
- SQLite (one file on one host): an empty file per ended job in a folder beside the database
  (<db>-ends/<id>), written after the commit; the follower looks for it 10 times a second (a stat,
  not a query). Files older than an hour are removed as new ones are written.
- Anything else (another URL, a database behind on migrations): the follower reads once a second
  through the ORM, as before.

The follower side imports no SQLAlchemy (shared/driver.py says why); `announce_end` runs where a
session is open anyway.
"""
from __future__ import annotations

import functools
import os
import select
import time
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

from shared.driver import plain_connection
from shared.job_view import job_to_dict, row_of

SQLITE_PREFIX = "sqlite:///"
END_FILE_SECONDS = 3600  # how long an end file is kept: a follower that starts later reads the row
END_FILE_POLL_SECONDS = 0.1  # a stat: 50 followers of one job slowed it 2.7% (bench/followers.py, docs)
_LAST_SPEED = "SELECT images_per_second FROM epoch_metrics WHERE job_id = {p} ORDER BY epoch DESC LIMIT 1"
T = TypeVar("T")
_ENDED = "cifarq_ended_jobs"  # session.info key: jobs whose end this session's commit announces (SQLite)


def end_channel(job_id: str) -> str:
    return f"cifarq_end_{job_id}"


def ends_folder(database_path: str) -> Path:
    return Path(f"{database_path}-ends")


class JobWatch:
    """One job followed. read(): its status object, or None where the plain read cannot answer
    (the caller then reads through the ORM, which explains); wait(seconds): until its end is
    announced, or the seconds pass. Closes its connection on exit."""

    def __init__(self, database_url: str, job_id: str):
        self.job_id = job_id
        self.end_file: Optional[Path] = None
        self._end_told: Optional[int] = None
        try:
            self.plain = plain_connection(database_url)
            if self.plain is not None and self.plain.dialect == "postgresql":
                from psycopg import sql

                self.plain.connection.execute(sql.SQL("LISTEN {}").format(sql.Identifier(end_channel(job_id))))
            elif self.plain is not None:
                self.end_file = ends_folder(database_url[len(SQLITE_PREFIX):]) / job_id
        except Exception:  # noqa: BLE001 - the ORM path meets the same problem and says what it is
            self.close()

    def read(self) -> Optional[dict[str, Any]]:
        row = self._plain_or(lambda: None, lambda plain: row_of(plain, self.job_id))
        return None if row is None else job_to_dict(row)

    # The follower's two other reads, on the same connection: a second one held per follower
    # (the ORM's pool) would take 100 of PostgreSQL's 100 connections for 50 followers.
    def last_epoch_speed(self, fallback: Callable[[], Optional[float]]) -> Optional[float]:
        """images/s of the job's last finished epoch (shared.results.last_epoch_speed)."""
        return self._plain_or(fallback, lambda plain: (plain.execute(_LAST_SPEED, (self.job_id,)).fetchone() or (None,))[0])

    def live_consumers(self, queue: str, fallback: Callable[[], int]) -> int:
        return self._plain_or(fallback, lambda plain: plain.live_consumers(queue))

    def _plain_or(self, fallback: Callable[[], T], read: Callable[[Any], T]) -> T:
        if self.plain is not None:
            try:
                return read(self.plain)
            except Exception:  # noqa: BLE001 - as above; from here on, the ORM reads
                self.close()
        return fallback()

    def wait(self, seconds: float) -> bool:
        """True when the job's end was announced within `seconds`."""
        deadline = time.monotonic() + seconds
        if self.plain is not None and self.plain.dialect == "postgresql":
            connection = self.plain.connection
            try:
                while True:  # psycopg keeps what arrived during a read for the next notifies()
                    if any(True for _ in connection.notifies(timeout=0, stop_after=1)):
                        return True
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    # Woken by the server, else once at the end: psycopg's own wait looks every
                    # 0.1 s, and 50 followers doing that slowed their job 13% rather than ~5%.
                    select.select([connection.fileno()], [], [], left)
            except Exception:  # noqa: BLE001 - the connection is gone: sleep out the interval
                self.close()
        while self.end_file is not None and time.monotonic() < deadline:
            if self._end_file_is_new():
                return True
            time.sleep(min(END_FILE_POLL_SECONDS, max(deadline - time.monotonic(), 0)))
        time.sleep(max(deadline - time.monotonic(), 0))
        return False

    def _end_file_is_new(self) -> bool:
        """The end file is there, written since this watch last said so: a job's end is told
        once, and a wait never turns into a loop of reads."""
        try:
            written = self.end_file.stat().st_mtime_ns
        except OSError:
            return False
        told, self._end_told = self._end_told, written
        return written != told

    def close(self) -> None:
        plain, self.plain, self.end_file = getattr(self, "plain", None), None, None
        if plain is not None:
            try:
                plain.close()
            except Exception:  # noqa: BLE001 - closing a broken connection
                pass

    def __enter__(self) -> "JobWatch":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def announce_end(session: Any, job_id: str) -> None:
    """Tell the job's followers that its final state is being written in this session's
    transaction (a SQLAlchemy Session): at its commit, not before, and never if it rolls back."""
    bind = session.get_bind()
    if bind.dialect.name == "postgresql":
        from sqlalchemy import func
        from sqlalchemy import select as select_sql

        session.execute(select_sql(func.pg_notify(end_channel(job_id), "")))
    elif bind.dialect.name == "sqlite" and bind.url.database not in (None, "", ":memory:"):
        _listen_for_commits()
        session.info.setdefault(_ENDED, set()).add(job_id)


@functools.cache
def _listen_for_commits() -> None:
    from sqlalchemy import event
    from sqlalchemy.orm import Session

    event.listen(Session, "after_commit", _write_end_files)
    event.listen(Session, "after_rollback", lambda session: session.info.pop(_ENDED, None))


def _write_end_files(session: Any) -> None:
    ended = session.info.pop(_ENDED, None)
    if not ended:
        return
    folder = ends_folder(session.get_bind().url.database)
    try:
        folder.mkdir(exist_ok=True)
        for job_id in ended:
            (folder / job_id).touch()
        old = time.time() - END_FILE_SECONDS
        for entry in os.scandir(folder):
            if entry.stat().st_mtime < old:
                os.unlink(entry.path)
    except OSError:  # the end is committed; a follower only learns of it at its next read
        pass

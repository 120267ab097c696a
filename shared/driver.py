"""The database through its own driver (sqlite3, psycopg), for the client's two hottest calls:
`cifarq status ID` (shared/job_view.py) and `cifarq submit train` (shared/job_write.py).

Importing SQLAlchemy's ORM with the models was a third to a half of either call's wall time
(~160 to 190 ms of 0.4 to 0.6 s on 2 cores), for one row. So these calls first try the database's own driver, in the plain
cases only: a SQLite file that exists, or a PostgreSQL URL, at the newest migration. Anything
else gives None, and the caller takes the ORM's way (shared/db.py), which creates, migrates,
and says what is wrong. The schema is not written down again here: reads are `SELECT *`, typed
by the database; writes name the columns they set, and the database refuses a wrong one.
tests/test_job_view.py and tests/test_job_write.py hold the two ways to the same rows.
"""
from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Optional

from shared.states import ALIVE_SECONDS

# The newest migration (Alembic's head; tests/test_migrations.py checks it). A database at
# another revision is left to shared/db.py, which migrates SQLite and stops on PostgreSQL.
HEAD_REVISION = "0006"


@dataclass
class PlainConnection:
    """One connection at the newest schema, in autocommit: each statement is its own transaction
    (every write here is one statement). Callers meet the drivers' differences only through
    these methods: the placeholder, the clock, how times and JSON are stored."""

    connection: Any
    dialect: str  # "sqlite" or "postgresql"

    @property
    def placeholder(self) -> str:
        return "?" if self.dialect == "sqlite" else "%s"

    def execute(self, sql: str, params: tuple = ()) -> Any:
        """`sql` with `{p}` for each placeholder; returns the cursor."""
        cursor = self.connection.cursor()
        cursor.execute(sql.format(p=self.placeholder), params)
        return cursor

    def now(self) -> datetime:
        """The database's time as shared/clock.py database_now reads it: the server's for
        PostgreSQL; for SQLite, one host's file, this host's, naive as SQLite stores it."""
        if self.dialect == "sqlite":
            return datetime.now(timezone.utc).replace(tzinfo=None)
        return self.execute("SELECT statement_timestamp()").fetchone()[0]

    def stored_time(self, value: datetime) -> Any:
        """A time as the ORM stores it: SQLite's naive ISO text (SQLAlchemy's DATETIME format),
        PostgreSQL's timestamptz as it is."""
        if self.dialect != "sqlite":
            return value
        if value.tzinfo is not None:
            value = value.astimezone(timezone.utc).replace(tzinfo=None)
        return value.isoformat(sep=" ", timespec="microseconds")

    def stored_json(self, value: Any) -> Any:
        if self.dialect == "sqlite":
            return json.dumps(value)  # as SQLAlchemy's JSON type writes it on SQLite
        from psycopg.types.json import Json

        return Json(value)

    def live_consumers(self, queue: str) -> int:
        """Workers that consume `queue`, by shared.registry.live_workers' rule: a heartbeat younger
        than ALIVE_SECONDS by the database's clock, and the queue among the worker's queues."""
        since = self.now() - timedelta(seconds=ALIVE_SECONDS)
        return sum(1 for queues, beat in self.execute("SELECT queues, heartbeat_at FROM workers").fetchall()
                   if beat >= since and queue in queues.split(","))

    def close(self) -> None:
        self.connection.close()

    def __enter__(self) -> "PlainConnection":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def plain_connection(database_url: str, *, write: bool = False) -> Optional[PlainConnection]:
    """A connection through the database's own driver where the case is plain, else None. Raises
    what the driver raises (a database away): the caller's ORM path then meets it and explains."""
    if database_url.startswith("sqlite:///") and "?" not in database_url:
        connection = _sqlite(database_url[len("sqlite:///"):], write=write)
        dialect = "sqlite"
    elif database_url.startswith(("postgresql+psycopg://", "postgresql://")):
        import psycopg

        connection = psycopg.connect("postgresql://" + database_url.split("://", 1)[1], connect_timeout=5,
                                     autocommit=True)
        dialect = "postgresql"
    else:
        return None
    if connection is None:
        return None
    plain = PlainConnection(connection, dialect)
    try:
        if plain.execute("SELECT version_num FROM alembic_version").fetchone() != (HEAD_REVISION,):
            plain.close()
            return None
    except BaseException:
        plain.close()
        raise
    return plain


def _sqlite(path: str, *, write: bool) -> Optional[sqlite3.Connection]:
    if "%" in path or not Path(path).is_file():
        return None  # an escaped URL, or a new database that the ORM path creates and migrates
    if not write:  # read-only: a read never creates, migrates or locks anything
        return sqlite3.connect(Path(path).resolve().as_uri() + "?mode=ro", uri=True, timeout=30,
                               detect_types=sqlite3.PARSE_DECLTYPES)
    connection = sqlite3.connect(path, timeout=30, detect_types=sqlite3.PARSE_DECLTYPES, isolation_level=None)
    connection.execute("PRAGMA foreign_keys=ON")  # as shared/db.py's engine; WAL is the file's own
    return connection


# SQLite hands back text for these declared types; SQLAlchemy stores DateTime as ISO text
# (naive, as it reads them back), JSON as json.dumps, Boolean as 0/1. The converters are
# sqlite3's, process-wide, but apply only to connections opened with detect_types, as above
# (SQLAlchemy opens its own without).
sqlite3.register_converter("DATETIME", lambda raw: datetime.fromisoformat(raw.decode()))
sqlite3.register_converter("JSON", lambda raw: json.loads(raw))
sqlite3.register_converter("BOOLEAN", lambda raw: bool(int(raw)))

"""Engine and sessions. Callers own their sessions: `with session_scope() as session: ...`.

The engine is made once per process. A Celery prefork child must not reuse the parent's
pooled connections, so the worker calls `reset_after_fork()` in each new child.
"""
from __future__ import annotations

import fcntl
import functools
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import InterfaceError, OperationalError, ProgrammingError
from sqlalchemy.orm import Session, sessionmaker

from shared.errors import CifarqError, DatabaseUnreachable, first_line
from shared.driver import HEAD_REVISION  # the newest migration: the quick read and write check it too
from shared.settings import get_settings, redact_url

log = logging.getLogger("cifarq.db")
T = TypeVar("T")


@functools.cache
def get_engine() -> Engine:
    url = make_url(get_settings().database)
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):
            # WAL lets the CLI read while a worker writes; foreign keys are off by default.
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        _migrate_sqlite_if_needed(engine)
    else:
        engine = create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": 5})
        _check_schema(engine)
    return engine


@functools.cache
def _sessionmaker() -> sessionmaker[Session]:
    return sessionmaker(get_engine(), expire_on_commit=False)


@contextmanager
def session_scope() -> Iterator[Session]:
    """One short transaction: committed on success, rolled back on error."""
    with _sessionmaker().begin() as session:
        yield session


def retry_while_unreachable(fn: Callable[[], T], *, what: str, seconds: float | None = None) -> T:
    """Run fn, retrying with backoff while the database is unreachable (it may be restarting).

    Only connection-level errors are retried; anything else, and the last error after
    `seconds`, is raised.
    """
    deadline = time.monotonic() + (get_settings().db_retry_seconds if seconds is None else seconds)
    delay = 0.5
    while True:
        try:
            return fn()
        except (OperationalError, InterfaceError) as exc:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("database unreachable during %s, retrying in %.1f s: %s", what, delay, first_line(exc.orig))
            time.sleep(delay)
            delay = min(delay * 2, 10.0)


def reset_after_fork() -> None:
    if get_engine.cache_info().currsize:
        get_engine().dispose(close=False)


def current_revision(engine: Engine) -> str | None:
    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except (OperationalError, ProgrammingError) as exc:
        if "alembic_version" in str(exc):
            return None
        raise


def _check_schema(engine: Engine) -> None:
    try:
        revision = current_revision(engine)
    except OperationalError as exc:
        raise DatabaseUnreachable(
            f"database unreachable at {redact_url(str(engine.url))}: {first_line(exc.orig)}"
        ) from exc
    if revision != HEAD_REVISION:
        raise CifarqError(
            f"database schema is at {revision or 'nothing'}, not {HEAD_REVISION}: run `cifarq db upgrade`"
        )


def _migrate_sqlite_if_needed(engine: Engine) -> None:
    """The embedded default migrates itself on first use, under a file lock."""
    if current_revision(engine) == HEAD_REVISION:
        return
    lock_path = Path(engine.url.database or "cifarq").with_suffix(".migrate.lock")
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if current_revision(engine) != HEAD_REVISION:
            upgrade(engine)


def upgrade(engine: Engine | None = None) -> str:
    """Alembic migrations to head; returns the revision. Safe to run again."""
    from alembic import command
    from alembic.config import Config

    migrations = Path(__file__).parent / "migrations"
    config = Config()
    config.set_main_option("script_location", str(migrations))
    engine = engine or get_engine_unchecked()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    return current_revision(engine) or ""


def get_engine_unchecked() -> Engine:
    """An engine for `db upgrade` itself, which must work before the schema exists."""
    url = make_url(get_settings().database)
    if url.get_backend_name() == "sqlite":
        return get_engine()
    return create_engine(url, connect_args={"connect_timeout": 5})

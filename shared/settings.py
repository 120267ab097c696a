"""One settings object for the process, read from CIFARQ_* environment variables.

With no variable set, everything lives under CIFARQ_HOME (default ~/.cifarq): a SQLite
database and a filesystem broker, so that a user without servers can run cifarq at once.
"""
from __future__ import annotations

import functools
from pathlib import Path

from pydantic import field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CIFARQ_", extra="ignore")

    home: Path = Path("~/.cifarq")
    database_url: str | None = None  # default: sqlite:///<home>/cifarq.db
    broker_url: str | None = None  # default: filesystem broker under <home>/broker
    data_dir: Path | None = None  # default: <home>/data
    artifacts_dir: Path | None = None  # default: <home>/artifacts
    # A job whose heartbeat is older than this is taken to have lost its worker.
    heartbeat_seconds: float = 5.0
    stale_after_seconds: float = 60.0
    max_attempts: int = 3
    reap_interval_seconds: float = 15.0  # how often a worker's launcher looks for lost jobs
    db_retry_seconds: float = 300.0  # how long a worker keeps retrying a write while the database is away
    # Redis re-delivers an unacknowledged message after this long (celery#5935): it must be
    # longer than any job, or a long job would be started twice.
    visibility_timeout_seconds: int = 7 * 24 * 3600
    debug: bool = False

    @field_validator("home", "data_dir", "artifacts_dir")
    @classmethod
    def _expand(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None

    @property
    def database(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'cifarq.db'}"

    @property
    def broker(self) -> str:
        return self.broker_url or "filesystem://"

    @property
    def broker_is_embedded(self) -> bool:
        return self.broker.startswith("filesystem://")

    @property
    def broker_dir(self) -> Path:
        return self.home / "broker"

    @property
    def data(self) -> Path:
        return self.data_dir or self.home / "data"

    @property
    def artifacts(self) -> Path:
        return self.artifacts_dir or self.home / "artifacts"


@functools.cache
def get_settings() -> Settings:
    return Settings()


def redact_url(url: str) -> str:
    """The URL with its password replaced, fit for an error message."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1]

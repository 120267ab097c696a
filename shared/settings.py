"""One settings object for the process, read from CIFARQ_* environment variables.

With no variable set, everything lives under CIFARQ_HOME (default ~/.cifarq): a SQLite
database and a filesystem broker, so that a user without servers can run cifarq at once.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from pathlib import Path
from typing import Any, Optional

from shared.errors import CifarqError


@dataclasses.dataclass(frozen=True)
class Settings:
    # A plain dataclass, not pydantic-settings: `cifarq status` must start in well under 0.5 s,
    # and pydantic is a tenth of that. Every field is read from CIFARQ_<FIELD NAME>.
    home: Path = Path("~/.cifarq")
    database_url: Optional[str] = None  # default: sqlite:///<home>/cifarq.db
    broker_url: Optional[str] = None  # default: filesystem broker under <home>/broker
    data_dir: Optional[Path] = None  # default: <home>/data
    artifacts_dir: Optional[Path] = None  # default: <home>/artifacts
    # A job whose heartbeat is older than this is taken to have lost its worker.
    heartbeat_seconds: float = 5.0
    stale_after_seconds: float = 60.0
    max_attempts: int = 3
    reap_interval_seconds: float = 15.0  # how often a worker's launcher looks for lost jobs
    db_retry_seconds: float = 300.0  # how long a worker keeps retrying a write while the database is away
    # Redis re-delivers an unacknowledged message after this long (celery#5935): it must be
    # longer than any job, or a long job would be started twice.
    visibility_timeout_seconds: int = 7 * 24 * 3600
    # Extra kombu transport options, as JSON (e.g. Redis Sentinel's master_name); they win over ours.
    broker_transport_options: dict = dataclasses.field(default_factory=dict)
    # A file that `cifarq worker` and `cifarq beat` keep fresh while they work, for a container's
    # healthcheck (shared/liveness.py); none by default.
    liveness_file: Optional[Path] = None
    # CPU jobs: compile the tutorial step with torch.compile when the job is long enough (auto),
    # always, or never (worker/train.py, COMPILE_MIN_STEPS).
    cpu_compile: str = dataclasses.field(default="auto", metadata={"choices": ("auto", "always", "never")})

    @classmethod
    def from_env(cls, environ: Optional[dict[str, str]] = None) -> "Settings":
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            raw = environ.get(f"CIFARQ_{field.name.upper()}")
            if raw is not None and raw != "":
                values[field.name] = _parse(field, raw)
        settings = cls(**values)
        for name in ("home", "data_dir", "artifacts_dir", "liveness_file"):
            value = getattr(settings, name)
            if value is not None:
                object.__setattr__(settings, name, value.expanduser())
        return settings

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


def _parse(field: dataclasses.Field, raw: str) -> Any:
    name, kind = f"CIFARQ_{field.name.upper()}", str(field.type)
    try:
        if "Path" in kind:
            return Path(raw)
        if kind == "int":
            return int(raw)
        if kind == "float":
            value = float(raw)
            if not math.isfinite(value) or value <= 0:
                raise ValueError
            return value
        if kind == "dict":
            value = json.loads(raw)
            if not isinstance(value, dict):
                raise ValueError
            return value
        choices = field.metadata.get("choices")
        if choices and raw not in choices:
            raise CifarqError(f"invalid {name} {raw!r}: expected one of {', '.join(choices)}")
        return raw
    except ValueError:
        expected = {"int": "a whole number", "float": "a positive number", "dict": "a JSON object"}[kind]
        raise CifarqError(f"invalid {name} {raw!r}: expected {expected}") from None


@functools.cache
def get_settings() -> Settings:
    return Settings.from_env()


def redact_url(url: str) -> str:
    """The URL with its password replaced, fit for an error message."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1]

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


# How each variable's text becomes a value: explicit converters, each with what it expects, so
# that a bad value is refused with a message naming the variable (never guessed from a type).
def _path(raw: str) -> Path:
    return Path(raw).expanduser()


def _text(raw: str) -> str:
    return raw


def _database_url(raw: str) -> str:
    # SQLAlchemy ends the password at its first "@" and takes the rest for the host name, which
    # the driver's own error message would then print: refuse the URL instead.
    netloc = raw.partition("://")[2].split("/", 1)[0]
    if netloc.count("@") > 1:
        raise ValueError
    return raw


def _positive_seconds(raw: str) -> float:
    value = float(raw)
    if not math.isfinite(value) or value <= 0:
        raise ValueError
    return value


def _whole_number_from(minimum: int):
    def parse(raw: str) -> int:
        value = int(raw)
        if value < minimum:
            raise ValueError
        return value
    parse.expected = f"a whole number of at least {minimum}"
    return parse


def _json_object(raw: str) -> dict:
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise ValueError
    return value


def _one_of(*choices: str):
    def parse(raw: str) -> str:
        if raw not in choices:
            raise ValueError
        return raw
    parse.expected = f"one of {', '.join(choices)}"
    return parse


_path.expected = _text.expected = "a path"
_positive_seconds.expected = "a positive number of seconds"
_json_object.expected = "a JSON object"
_database_url.expected = 'a database URL (write a "@" in the password as %40)'


def _setting(default, parse):
    """A field read from CIFARQ_<FIELD NAME>, converted by `parse`."""
    return dataclasses.field(default=default, metadata={"parse": parse})


@dataclasses.dataclass(frozen=True)
class Settings:
    # A plain dataclass, not pydantic-settings: `cifarq status` must start in well under 0.5 s,
    # and pydantic-settings alone costs a tenth of that.
    home: Path = _setting(Path("~/.cifarq"), _path)  # root of the embedded defaults
    database_url: Optional[str] = _setting(None, _database_url)  # default: sqlite:///<home>/cifarq.db
    broker_url: Optional[str] = _setting(None, _text)  # default: filesystem broker under <home>/broker
    data_dir: Optional[Path] = _setting(None, _path)  # default: <home>/data
    artifacts_dir: Optional[Path] = _setting(None, _path)  # default: <home>/artifacts
    # How often a running job writes progress and reads its cancel flag.
    heartbeat_seconds: float = _setting(5.0, _positive_seconds)
    # A running job whose heartbeat is older than this has lost its worker.
    stale_after_seconds: float = _setting(60.0, _positive_seconds)
    # Epoch checkpoints a train job keeps as it goes: its last N, its best (lowest loss) and any a
    # result was computed from; 0 keeps every epoch's. `cifarq prune` thins finished jobs later.
    keep_checkpoints: int = _setting(0, _whole_number_from(0))
    max_attempts: int = _setting(3, _whole_number_from(1))  # deliveries a job may use before it ends failed
    # Launchers' and `cifarq beat`'s rounds: a worker killed hard is noticed within
    # shared.states.ALIVE_SECONDS (8) plus this.
    reap_interval_seconds: float = _setting(5.0, _positive_seconds)
    # A job's message not yet known to be in the broker is sent by a reaper after this long
    # (shared/jobs.py, "the message a queued job is owed").
    send_lease_seconds: float = _setting(30.0, _positive_seconds)
    db_retry_seconds: float = _setting(300.0, _positive_seconds)  # a worker's retries while the database is away
    # Redis re-delivers an unacknowledged message after this long (celery#5935): it must be
    # longer than any job, or a long job would be started twice.
    visibility_timeout_seconds: int = _setting(7 * 24 * 3600, _whole_number_from(1))
    # Extra kombu transport options (e.g. Redis Sentinel's master_name); they win over ours.
    broker_transport_options: dict = dataclasses.field(default_factory=dict, metadata={"parse": _json_object})
    # A file that `cifarq worker` and `cifarq beat` keep fresh while they work, for a container's
    # healthcheck (shared/liveness.py); none by default.
    liveness_file: Optional[Path] = _setting(None, _path)
    # CPU jobs: compile the tutorial step (AOTInductor, worker/aot_step.py) where it pays (auto),
    # always, or never (worker/recipes/tutorial.py, COMPILE_MIN_STEPS).
    cpu_compile: str = _setting("auto", _one_of("auto", "always", "never"))
    # CPU workers: at start, compile the default step into its package while waiting for work
    # (worker/warm_up.py), so that the first job does not pay the ~15 to 25 s first compile.
    cpu_warm_up: str = _setting("auto", _one_of("auto", "never"))

    @classmethod
    def from_env(cls, environ: Optional[dict[str, str]] = None) -> "Settings":
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            name = f"CIFARQ_{field.name.upper()}"
            raw = environ.get(name)
            if raw is None or raw == "":
                if isinstance(field.default, Path):  # paths are expanded, defaults as well
                    values[field.name] = field.default.expanduser()
                continue
            parse = field.metadata["parse"]
            try:
                values[field.name] = parse(raw)
            except ValueError:  # json.JSONDecodeError is one too
                shown = redact_url(raw) if name.endswith("_URL") else raw
                raise CifarqError(f"invalid {name} {shown!r}: expected {parse.expected}") from None
        return cls(**values)

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
    return Settings.from_env()


# Query parameters that carry a secret in the URLs cifarq is given (libpq's password=,
# redis-py's password=, kombu's transport options, tokens).
_SECRET_KEYS = ("password", "passwd", "pwd", "secret", "token")


def redact_url(url: str) -> str:
    """The URL with every password replaced by ***, fit for an error message.

    Neither consumer's own masking is enough: SQLAlchemy's render_as_string(hide_password=True)
    ends the password at its first raw "@" (the rest shows as the host), and kombu's
    sanitize_url fails on a failover list ("sentinel://:a@h1;sentinel://:b@h2") and leaves
    ?password= alone. So each URL of a ;-separated list is split with urllib: the user info ends
    at the netloc's last "@", and secret query parameters are masked too."""
    return ";".join(_redact_one(part) for part in url.split(";"))


def _redact_one(url: str) -> str:
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return "<a URL that could not be parsed>"
    netloc = parts.netloc
    userinfo, at, host = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = f"{userinfo.partition(':')[0]}:***@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(key, "***" if any(s in key.lower() for s in _SECRET_KEYS) else value)
                           for key, value in pairs], safe="*")
    if (netloc, query) == (parts.netloc, parts.query):
        return url  # as given: urlunsplit would rewrite "sqlite:////abs/path"
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))

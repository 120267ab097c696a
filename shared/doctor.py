"""The checks of `cifarq doctor`: what an operator looks at when something is off.

Each check is a plain function that returns a Check: ok, warn or fail, one line saying what it
found and, when not ok, one line saying the fix. Every check only reads and never waits long:
the database and the broker get connect timeouts of a few seconds, and nothing is created (the
embedded SQLite file and broker folders are made on first use by the other commands, not here).
run_checks runs them all; one check's exception becomes its own FAIL line and the rest still run.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import socket
from pathlib import Path
from typing import Any, Callable, Optional

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError
from sqlalchemy.pool import NullPool

from shared.errors import first_line
from shared.recipes import DEFAULT_RECIPE, RECIPE_DEFAULTS, checkpoint_bytes
from shared.settings import Settings, get_settings, redact_url

log = logging.getLogger("cifarq.doctor")

OK, WARN, FAIL = "ok", "warn", "fail"
CONNECT_TIMEOUT_SECONDS = 3  # libpq's connect_timeout and Redis's socket timeouts
# Free space below this is a warning, whatever a checkpoint weighs (TensorBoard files, logs and
# exports need room too).
LOW_SPACE_BYTES = 2**30
LOW_SPACE_CHECKPOINTS = 100
# A checkpoint row holds the weights and the training state, whose SGD momentum is one more copy
# of them (shared/recipes.py): about twice the weights, for the default recipe at its width.
DEFAULT_CHECKPOINT_BYTES = 2 * checkpoint_bytes(DEFAULT_RECIPE, RECIPE_DEFAULTS[DEFAULT_RECIPE]["width"])
OFFICIAL_IMAGES = (50_000, 10_000)  # CIFAR-10's training and test images


@dataclasses.dataclass(frozen=True)
class Check:
    name: str
    status: str  # OK, WARN or FAIL
    message: str  # what was found, one line
    fix: str = ""  # what to do about it, one line; empty when there is nothing to do
    details: dict[str, Any] = dataclasses.field(default_factory=dict)  # for --json

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def run_checks(*, settings: Optional[Settings] = None) -> list[Check]:
    """Every check, in the order an operator reads them: database, broker, workers, queues,
    data, space."""
    settings = settings or get_settings()
    database = _guarded("database", check_database, settings=settings)
    checks = [database, _guarded("broker", check_broker, settings=settings)]
    if database.status == OK or database.details.get("created") is False:
        # At head, or an embedded database not created yet (then no worker has ever run with it).
        engine = doctor_engine(settings) if database.status == OK else None
        workers = _guarded("workers", check_workers, engine=engine)
        checks += [workers, _guarded("queues", check_queues, engine=engine)]
        live = workers.details.get("live")
    else:
        engine, live = None, None
        skipped = "not checked: needs the database at head (see the database line)"
        checks += [Check("workers", WARN, skipped), Check("queues", WARN, skipped)]
    here = socket.gethostname()
    workers_here = None if live is None else [w["name"] for w in live if w["host"] == here]
    checks.append(_guarded("data", check_data, settings=settings, workers_here=workers_here))
    checks.append(_guarded("space", check_space, settings=settings, engine=engine))
    if engine is not None:
        engine.dispose()
    return checks


def _guarded(name: str, check: Callable[..., Check], **kwargs) -> Check:
    try:
        return check(**kwargs)
    except Exception as exc:  # noqa: BLE001 - one check's surprise must not hide the others
        log.debug("check %s raised", name, exc_info=True)
        return Check(name, FAIL, f"the check itself failed: {type(exc).__name__}: {first_line(exc)}",
                     "run `cifarq --debug doctor` for the traceback")


def doctor_engine(settings: Settings) -> Engine:
    """An engine that neither migrates (shared.db's does, for SQLite) nor waits long to connect."""
    url = make_url(settings.database)
    if url.get_backend_name() == "sqlite":
        return create_engine(url, poolclass=NullPool, connect_args={"timeout": CONNECT_TIMEOUT_SECONDS})
    return create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": CONNECT_TIMEOUT_SECONDS})


# --------------------------------------------------------------------------- database

def _migrations() -> tuple[str, set[str]]:
    """Alembic's head in shared/migrations, and every revision there."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory(str(Path(__file__).parent / "migrations"))
    return script.get_current_head(), {revision.revision for revision in script.walk_revisions()}


def check_database(*, settings: Settings) -> Check:
    from shared.db import current_revision

    shown = redact_url(settings.database)
    try:
        url = make_url(settings.database)
        engine = doctor_engine(settings)
    except (ArgumentError, NoSuchModuleError) as exc:
        return Check("database", FAIL, f"{shown!r} is not a database URL this cifarq can use: {first_line(exc)}",
                     "correct CIFARQ_DATABASE_URL (e.g. postgresql+psycopg://user:password@host/cifarq)",
                     {"url": shown})
    embedded = url.get_backend_name() == "sqlite"
    head, known = _migrations()
    details: dict[str, Any] = {"url": shown, "backend": url.get_backend_name(), "revision": None, "head": head}
    if embedded and url.database and url.database != ":memory:":
        path = Path(url.database)
        if not path.exists():
            # Connecting would create it: say so instead. Any cifarq command makes and migrates it.
            return Check("database", WARN, f"{shown}: not created yet", "run `cifarq db upgrade`",
                         {**details, "created": False})
        if not path.is_file():
            return Check("database", FAIL, f"{shown}: {path} is not a file",
                         "move it aside, or point CIFARQ_DATABASE_URL or CIFARQ_HOME elsewhere", details)
    try:
        revision = current_revision(engine)
    except DBAPIError as exc:
        reason = first_line(exc.orig or exc)
        if embedded:
            fix = "restore the file from a backup, or move it aside and run `cifarq db upgrade` for an empty one" \
                if "not a database" in reason else "check the file's permissions and CIFARQ_DATABASE_URL"
        else:
            server = f"{url.host or 'localhost'}:{url.port or 5432}"
            fix = f"start the database server at {server}, or correct CIFARQ_DATABASE_URL"
        return Check("database", FAIL, f"{shown} {'cannot be read' if embedded else 'unreachable'}: {reason}",
                     fix, details)
    finally:
        engine.dispose()
    details["revision"] = revision
    if revision == head:
        return Check("database", OK, f"{shown} {'readable' if embedded else 'reachable'}, schema at head ({head})",
                     "", details)
    if revision is not None and revision not in known:
        return Check("database", FAIL, f"{shown}: schema at {revision}, which this cifarq does not know "
                     f"(its newest is {head}): a newer release migrated it",
                     "install the cifarq release that migrated it on this host", details)
    found = "no schema yet" if revision is None else f"schema at {revision}, not at head ({head})"
    if embedded:  # the embedded database migrates itself on first use: nothing is broken yet
        return Check("database", WARN, f"{shown}: {found} (migrated by the next cifarq command)",
                     "run `cifarq db upgrade`", details)
    return Check("database", FAIL, f"{shown} reachable, but {found}", "run `cifarq db upgrade`", details)


# --------------------------------------------------------------------------- broker

def check_broker(*, settings: Settings) -> Check:
    url = settings.broker
    shown = redact_url(url)
    scheme = url.partition("://")[0].lower()
    details: dict[str, Any] = {"url": shown, "transport": scheme}
    if settings.broker_is_embedded:
        return _filesystem_broker(settings.broker_dir, shown, details)
    if scheme in ("redis", "rediss"):
        return _redis_broker(url, shown, details)
    if scheme == "sentinel":
        return _sentinel_broker(url, shown, settings.broker_transport_options, details)
    # Any other kombu transport: a connection attempt is what it has in common.
    from kombu import Connection

    try:
        with Connection(url, connect_timeout=CONNECT_TIMEOUT_SECONDS,
                        transport_options=settings.broker_transport_options) as connection:
            connection.connect()
    except Exception as exc:  # noqa: BLE001 - each transport has its own errors
        return Check("broker", FAIL, f"{shown} unreachable: {first_line(exc)}",
                     "start the broker, or correct CIFARQ_BROKER_URL", details)
    return Check("broker", OK, f"{shown} reachable", "", details)


def _filesystem_broker(broker_dir: Path, shown: str, details: dict) -> Check:
    """The embedded broker: messages are files in folders under CIFARQ_HOME/broker."""
    folders = [broker_dir / name for name in ("messages", "control", "processed")]
    details["dir"] = str(broker_dir)
    if not all(folder.is_dir() for folder in folders):
        existing = _nearest_existing(broker_dir)
        if not os.access(existing, os.W_OK):
            return Check("broker", FAIL, f"{shown}: {broker_dir} is missing and {existing} is not writable",
                         f"give this user write access to {existing}, or set CIFARQ_HOME", details)
        return Check("broker", OK, f"{shown}: {broker_dir} not created yet (made when the first job is sent)",
                     "", details)
    unwritable = [str(folder) for folder in folders if not os.access(folder, os.W_OK | os.X_OK)]
    if unwritable:
        return Check("broker", FAIL, f"{shown}: not writable by this user: {', '.join(unwritable)}",
                     "give this user write access to them, or set CIFARQ_HOME", details)
    waiting = sum(1 for entry in os.scandir(folders[0]) if entry.is_file())
    details["messages"] = waiting
    return Check("broker", OK, f"{shown}: {broker_dir} writable, {waiting} message(s) waiting "
                 "(this machine's processes only)", "", details)


def _redis_broker(url: str, shown: str, details: dict) -> Check:
    import redis

    # kombu takes "redis://a;redis://b" as a failover list.
    answers, errors = [], []
    for one in url.split(";"):
        client = redis.Redis.from_url(one, socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
                                      socket_timeout=CONNECT_TIMEOUT_SECONDS)
        try:
            client.ping()
            try:
                answers.append(client.info("server").get("redis_version", "?"))
            except redis.RedisError:  # INFO may be refused by an ACL: the ping answered, that is enough
                answers.append("?")
        except redis.RedisError as exc:
            errors.append(f"{redact_url(one)}: {first_line(exc)}")
        finally:
            client.close()
    fix = "start Redis, or correct CIFARQ_BROKER_URL"
    if not answers:
        reason = errors[0].partition(": ")[2] if len(errors) == 1 else "; ".join(errors)
        return Check("broker", FAIL, f"{shown} unreachable: {reason}", fix, details)
    details["redis_version"] = answers[0]
    if errors:
        return Check("broker", WARN, f"{shown}: failover list partly down: {'; '.join(errors)}", fix, details)
    return Check("broker", OK, f"{shown} reachable (Redis {answers[0]})", "", details)


def _sentinel_broker(url: str, shown: str, options: dict, details: dict) -> Check:
    """Ask the sentinels where the master is, as kombu will."""
    from urllib.parse import urlsplit

    import redis
    from redis.sentinel import Sentinel

    master = options.get("master_name")
    if not master:
        return Check("broker", FAIL, f"{shown}: a sentinel broker needs a master_name",
                     'set CIFARQ_BROKER_TRANSPORT_OPTIONS=\'{"master_name": "mymaster"}\'', details)
    hosts = [(urlsplit(one).hostname or "localhost", urlsplit(one).port or 26379) for one in url.split(";")]
    sentinel = Sentinel(hosts, socket_timeout=CONNECT_TIMEOUT_SECONDS, sentinel_kwargs=options.get("sentinel_kwargs"))
    try:
        host, port = sentinel.discover_master(master)
    except redis.RedisError as exc:
        reason = first_line(exc).split(" : <")[0]  # redis-py appends its clients' repr
        return Check("broker", FAIL, f"{shown}: no sentinel names a master {master!r}: {reason}",
                     "start the sentinels and Redis, or correct CIFARQ_BROKER_URL", details)
    return Check("broker", OK, f"{shown}: the sentinels name {host}:{port} as master {master!r}", "", details)


# --------------------------------------------------------------------------- workers and queues

def _describe_device(worker: dict) -> str:
    if worker["device"] == "cuda" and worker["gpu_name"]:
        return f"cuda, GPU {worker['gpu_index']}: {worker['gpu_name']}"
    return worker["device"]


def check_workers(*, engine: Optional[Engine]) -> Check:
    """Live workers, each with its host, device and queues (shared/registry.py says who is live)."""
    fix = "start one: `cifarq worker`, or `cifarq local start` in the background"
    if engine is None:
        return Check("workers", WARN, "no live worker: no worker has run with this database yet", fix, {"live": []})
    from sqlalchemy.orm import Session

    from shared.registry import all_workers, live_workers

    with Session(engine) as session:
        live = [{"name": w.name, "host": w.host, "queues": w.queues.split(","), "device": w.device,
                 "gpu_index": w.gpu_index, "gpu_name": w.gpu_name, "pid": w.pid}
                for w in live_workers(session=session)]
        stale = len(all_workers(session=session)) - len(live)
    details = {"live": live, "stale": stale}
    gone = f"; {stale} stale row(s) of workers that stopped (`cifarq workers --all`)" if stale else ""
    if not live:
        return Check("workers", WARN, f"no live worker{gone}", fix, details)
    described = "; ".join(f"{w['name']} ({_describe_device(w)}) on {','.join(w['queues'])}" for w in live)
    return Check("workers", OK, f"{len(live)} live: {described}{gone}", "", details)


def check_queues(*, engine: Optional[Engine]) -> Check:
    """Per queue, jobs queued and the live workers that consume it: queued jobs nobody will take
    are a failure."""
    if engine is None:
        return Check("queues", OK, "nothing queued (no database yet)", "", {"queues": []})
    from sqlalchemy.orm import Session

    from shared.monitoring import queue_overview
    from shared.registry import live_workers
    from shared.states import how_to_serve

    with Session(engine) as session:
        overview = {row["queue"]: row for row in queue_overview(session=session)}
        consumers: dict[str, list[str]] = {}
        for worker in live_workers(session=session):
            for queue in worker.queues.split(","):
                consumers.setdefault(queue, []).append(worker.name)
    rows = [{"queue": name, "queued": overview.get(name, {}).get("queued", 0),
             "running": overview.get(name, {}).get("running", 0), "workers": consumers.get(name, []),
             "oldest": overview.get(name, {}).get("oldest")} for name in sorted(set(overview) | set(consumers))]
    details = {"queues": rows}
    stranded = [row for row in rows if row["queued"] and not row["workers"]]
    if stranded:
        message = "; ".join(f"{row['queue']}: {row['queued']} queued (oldest {row['oldest']['id']}, "
                            f"{_duration(row['oldest']['waiting_seconds'])}), no live worker" for row in stranded)
        return Check("queues", FAIL, message, "; ".join(how_to_serve(row["queue"]) for row in stranded), details)
    if not rows:
        return Check("queues", OK, "nothing queued", "", details)
    return Check("queues", OK, "; ".join(f"{row['queue']}: {row['queued']} queued, {row['running']} running, "
                                         f"{len(row['workers'])} worker(s)" for row in rows), "", details)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"waiting {seconds}s"
    return f"waiting {seconds // 60}m" if seconds < 7200 else f"waiting {seconds // 3600}h"


# --------------------------------------------------------------------------- data set

def check_data(*, settings: Settings, workers_here: Optional[list[str]]) -> Check:
    """CIFARQ_DATA_DIR as the worker reads it (worker/data.py): the folder of pickles, complete and
    readable, or the archive beside it. `workers_here`: the live workers on this host (None when
    unknown), which read this data dir if they share this shell's settings."""
    data_dir = settings.data
    try:
        from shared.cifar_files import ALL_FILES, ARCHIVE, BATCHES_DIR
    except ImportError as exc:  # numpy: a client install has none
        return Check("data", WARN, f"{data_dir} not checked: {first_line(exc)} here (a client install)",
                     "pip install numpy, or run `cifarq doctor` where the workers run", {"dir": str(data_dir)})
    folder, archive = data_dir / BATCHES_DIR, data_dir / ARCHIVE
    details: dict[str, Any] = {"dir": str(data_dir), "layout": None}
    replace = f"tar xzf cifar-10-python.tar.gz -C {data_dir} (the official archive)"
    missing = [name for name in ALL_FILES if not (folder / name).is_file()]
    if not missing:
        details["layout"] = "folder"
        return _read_folder(folder, details, replace)
    if archive.is_file():
        details["layout"] = "archive"
        return _list_archive(archive, ALL_FILES, details)
    if len(missing) < len(ALL_FILES):
        return Check("data", FAIL, f"{folder} is incomplete: missing {', '.join(missing)}", replace, details)
    put = f"put {BATCHES_DIR}/ or {ARCHIVE} in {data_dir} (a worker downloads it only with internet access)"
    if workers_here:
        return Check("data", FAIL, f"no CIFAR-10 in {data_dir}, and a worker runs on this host "
                     f"({', '.join(workers_here)})", put, details)
    if workers_here is None:
        return Check("data", WARN, f"no CIFAR-10 in {data_dir} (whether a worker runs here is unknown "
                     "without the database)", put, details)
    return Check("data", WARN, f"no CIFAR-10 in {data_dir}: no worker runs on this host, and each worker "
                 "reads its own CIFARQ_DATA_DIR", f"only for `cifarq report`'s test images: {put}", details)


def _read_folder(folder: Path, details: dict, replace: str) -> Check:
    """Every file read in full through the safe reader: about a second for the real data set."""
    from shared.cifar_files import DataError, TEST_FILES, TRAIN_FILES, read_batch, read_classes

    try:
        classes = read_classes(folder)
        counts = [sum(len(read_batch(folder / name, str(folder / name), len(classes))[1]) for name in files)
                  for files in (TRAIN_FILES, TEST_FILES)]
    except DataError as exc:
        return Check("data", FAIL, first_line(exc, limit=400), f"replace the file: {replace}", details)
    details.update(train_images=counts[0], test_images=counts[1], classes=len(classes))
    size = "CIFAR-10's full size" if tuple(counts) == OFFICIAL_IMAGES else \
        f"not CIFAR-10's {OFFICIAL_IMAGES[0]:,} + {OFFICIAL_IMAGES[1]:,}: a subset or another data set"
    return Check("data", OK, f"{folder}: all 7 files valid, {counts[0]:,} training + {counts[1]:,} test images, "
                 f"{len(classes)} classes ({size})", "", details)


def _list_archive(archive: Path, names: list[str], details: dict) -> Check:
    """The archive's member list (its contents are checked when a worker extracts it)."""
    import tarfile

    from shared.cifar_files import BATCHES_DIR

    try:
        with tarfile.open(archive) as tar:
            members = {member.name for member in tar if member.isfile()}
    except (tarfile.TarError, OSError, EOFError) as exc:
        return Check("data", FAIL, f"{archive} cannot be read: {first_line(exc)}",
                     "download the official cifar-10-python.tar.gz again", details)
    missing = [name for name in names if f"{BATCHES_DIR}/{name}" not in members]
    if missing:
        return Check("data", FAIL, f"{archive} lacks {', '.join(missing)}",
                     "download the official cifar-10-python.tar.gz again", details)
    return Check("data", OK, f"{archive}: all 7 files inside (a worker extracts it on its first job)", "", details)


# --------------------------------------------------------------------------- space

def space_status(free_bytes: int, checkpoint: int = DEFAULT_CHECKPOINT_BYTES) -> str:
    """FAIL when not even one checkpoint fits; WARN under 1 GiB or 100 checkpoints."""
    if free_bytes < checkpoint:
        return FAIL
    return WARN if free_bytes < max(LOW_SPACE_BYTES, LOW_SPACE_CHECKPOINTS * checkpoint) else OK


def check_space(*, settings: Settings, engine: Optional[Engine]) -> Check:
    """Free space where this host writes: CIFARQ_HOME, the artifacts, and the SQLite file, which
    holds the checkpoints. A PostgreSQL server's disk is its own: its database's size is shown."""
    places = [settings.home, settings.artifacts]
    sqlite_file = _sqlite_file(settings)
    if sqlite_file is not None:
        places.append(sqlite_file.parent)
    filesystems: dict[int, dict] = {}  # one entry per filesystem, naming every place on it
    for path in places:
        existing = _nearest_existing(path)
        entry = filesystems.setdefault(_device(path), {"paths": [], "free_bytes": shutil.disk_usage(existing).free})
        if not any(path.absolute().is_relative_to(shown) for shown in entry["paths"]):
            entry["paths"].append(path.absolute())
    worst = min(filesystems.values(), key=lambda entry: entry["free_bytes"])
    status = space_status(worst["free_bytes"])
    details: dict[str, Any] = {"filesystems": [{**entry, "paths": [str(p) for p in entry["paths"]]}
                                               for entry in filesystems.values()],
                               "checkpoint_bytes": DEFAULT_CHECKPOINT_BYTES}
    free = ", ".join(f"{_size(entry['free_bytes'])} free for {', '.join(map(str, entry['paths']))}"
                     for entry in filesystems.values())
    if sqlite_file is not None:
        # With its write-ahead log, which holds the recent writes until a checkpoint folds them in.
        database_bytes = sum(path.stat().st_size for path in (sqlite_file, Path(f"{sqlite_file}-wal"))
                             if path.is_file())
        details["database_bytes"] = database_bytes
        room = filesystems[_device(sqlite_file.parent)]["free_bytes"] // DEFAULT_CHECKPOINT_BYTES
        database = f"database {_size(database_bytes)}" if sqlite_file.is_file() else "no database yet"
        message = (f"{free} ({database}; the checkpoints go there: room for about "
                   f"{room:,} more of the default recipe, {_size(DEFAULT_CHECKPOINT_BYTES)} each)")
    else:
        size = "its size not checked (the database check did not pass)"
        if engine is not None and engine.dialect.name == "postgresql":
            try:
                with engine.connect() as connection:
                    database_bytes = connection.execute(text("SELECT pg_database_size(current_database())")).scalar()
                details["database_bytes"] = database_bytes
                size = f"{_size(database_bytes)}, its server's free space is not seen from here"
            except DBAPIError as exc:
                size = f"its size unknown: {first_line(exc.orig or exc)}"
        message = f"{free}; the checkpoints live in the database: {size}"
    fix = "" if status == OK else f"free space for {', '.join(map(str, worst['paths']))}"
    if status != OK and sqlite_file is not None and _device(sqlite_file.parent) == _device(worst["paths"][0]):
        fix += ", or thin old checkpoints: `cifarq prune --older-than 30 --dry-run`"
    return Check("space", status, message, fix, details)


def _sqlite_file(settings: Settings) -> Optional[Path]:
    try:
        url = make_url(settings.database)
    except ArgumentError:  # the database check says so
        return None
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database)


def _device(path: Path) -> int:
    return os.stat(_nearest_existing(path)).st_dev


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _size(count: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} B"

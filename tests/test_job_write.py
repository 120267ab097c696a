"""`cifarq submit train` writes its row without SQLAlchemy (shared/job_write.py) and, on a plain
Redis, sends its message without Celery (shared/broker_push.py): the same row as the ORM's
create_job, byte for byte where SQLite stores text, on both backends; the debt cleared as
shared/jobs.py clears it; and the ORM's way, with its errors, wherever the quick way cannot
answer. (That a worker runs a job sent this way: every worker test on PostgreSQL + Redis.)"""
from __future__ import annotations

import re
import subprocess
import sys
from datetime import datetime, timedelta, timezone

from sqlalchemy import text

from shared.job_write import insert_queued_job, messages_sent
from shared.jobspec import TrainConfig
from shared.models import Job, JobKind
from tests.conftest import REPO, register_some_workers

LEASE = 30.0  # seconds: CIFARQ_SEND_LEASE_SECONDS' default is longer; any will do


def stored_rows(database, *job_ids: str) -> list[dict]:
    """The rows as the database holds them (SQLite: the text itself, its type by typeof())."""
    with database.get_engine().connect() as connection:
        rows = []
        for job_id in job_ids:
            row = connection.execute(text("SELECT * FROM jobs WHERE id = :id"), {"id": job_id}).mappings().one()
            rows.append(dict(row))
        return rows


def test_the_quick_write_writes_what_the_orm_writes(env, database):
    from shared.jobs import create_job, get_job
    from shared.job_view import job_to_dict
    from shared.settings import get_settings

    url = get_settings().database
    env.cli("list")  # the database made and migrated (the quick write never creates one)
    params = TrainConfig(epochs=3, lr=0.01, seed=7).model_dump()
    before = datetime.now(timezone.utc)
    quick_id, quick_lease = insert_queued_job(url, kind=JobKind.train, params=params, queue="cpu",
                                              lease_seconds=LEASE)
    with database.session_scope() as session:
        orm_id = create_job(session=session, kind=JobKind.train, params=params, queue="cpu").id
    quick, orm = stored_rows(database, quick_id, orm_id)

    times = ("created_at", "resend_after")
    assert {k: v for k, v in quick.items() if k not in ("id", *times)} == \
           {k: v for k, v in orm.items() if k not in ("id", *times)}
    assert len(quick_id) == len(orm_id) == 16 and quick_id != orm_id
    if url.startswith("sqlite"):
        # Stored as SQLAlchemy stores them: the same text, typed alike (so that ORDER BY and the
        # ORM's comparisons, which compare text on SQLite, treat both rows the same).
        for column in times:
            assert type(quick[column]) is type(orm[column]) is str
            assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}", quick[column]), quick[column]
            assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}", orm[column]), orm[column]
            assert quick[column] > before.replace(tzinfo=None).isoformat(sep=" ")
        with database.get_engine().connect() as connection:
            kinds = [connection.execute(text(f"SELECT typeof(params), typeof(cancel_requested), typeof(created_at) "
                                             f"FROM jobs WHERE id = '{job_id}'")).one() for job_id in (quick_id, orm_id)]
        assert kinds[0] == kinds[1] == ("text", "integer", "text")
    else:
        assert quick["created_at"] >= before and quick["resend_after"] - quick["created_at"] < timedelta(seconds=LEASE + 5)

    # The ORM reads the quick row as its own (but for id and times), and the lease it returned is
    # the one stored: the debt it owes is the one messages_sent clears.
    with database.session_scope() as session:
        quick_view, orm_view = (job_to_dict(get_job(session=session, job_id=job_id)) for job_id in (quick_id, orm_id))
    differs = {"id", "created_at"}
    assert {k: v for k, v in quick_view.items() if k not in differs} == \
           {k: v for k, v in orm_view.items() if k not in differs}
    # A reaper finds the quick row's debt once its lease is due, and not before, as it finds the
    # ORM's (a submitter killed before sending leaves it to a reaper: shared/jobs.py).
    from shared.jobs import owed_messages, take_message_debt

    with database.session_scope() as session:
        assert quick_id not in [job_id for job_id, _, _ in owed_messages(session=session, due_by=quick_lease
                                                                         - timedelta(seconds=1))]
        due = {job_id: since for job_id, _, since in owed_messages(session=session,
                                                                   due_by=quick_lease + timedelta(seconds=1))}
        assert quick_id in due and orm_id in due
    assert messages_sent(url, [(quick_id, quick_lease - timedelta(seconds=1))], "cpu") == 0  # another lease
    assert stored_rows(database, quick_id)[0]["resend_after"] is not None
    assert messages_sent(url, [(quick_id, quick_lease)], "cpu") == 0
    assert stored_rows(database, quick_id)[0]["resend_after"] is None

    # A reaper takes an owed debt under its own lease, which messages_sent then clears.
    with database.session_scope() as session:
        reapers_lease = take_message_debt(session=session, job_id=orm_id, owed_since=due[orm_id])
    assert reapers_lease is not None
    assert messages_sent(url, [(orm_id, reapers_lease)], "cpu") == 0
    assert stored_rows(database, orm_id)[0]["resend_after"] is None


def test_messages_sent_counts_the_live_consumers_as_the_registry_does(env, database):
    from shared.registry import live_workers
    from shared.settings import get_settings

    url = get_settings().database
    env.cli("list")
    register_some_workers(database)
    for queue in ("default", "gpu", "cpu", "nobody"):
        with database.session_scope() as session:
            counted = len(live_workers(session=session, queue=queue))
        assert messages_sent(url, [], queue) == counted, queue
    assert [messages_sent(url, [], queue) for queue in ("default", "gpu", "nobody")] == [1, 1, 0]


def test_where_the_quick_write_cannot_answer_it_writes_nothing(env, database, tmp_path):
    from shared.settings import get_settings

    url = get_settings().database
    args = dict(kind=JobKind.train, params=TrainConfig().model_dump(), queue="default", lease_seconds=LEASE)
    assert insert_queued_job("mysql://somewhere/db", **args) is None
    assert messages_sent("mysql://somewhere/db", [], "default") is None
    if url.startswith("sqlite"):
        missing = tmp_path / "new" / "cifarq.db"
        assert insert_queued_job(f"sqlite:///{missing}", **args) is None
        assert not missing.exists() and not missing.parent.exists()  # the ORM's way creates and migrates
    else:
        assert insert_queued_job(url.replace("127.0.0.1:5432", "127.0.0.1:1"), **args) is None  # away
    env.cli("list")
    with database.get_engine().begin() as connection:  # a schema behind the code's: the ORM's way explains
        connection.execute(text("UPDATE alembic_version SET version_num = '0005'"))
    assert insert_queued_job(url, **args) is None
    with database.get_engine().begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '0006'"))
    with database.session_scope() as session:
        assert session.query(Job).count() == 0


# A submit, run as a user runs it, and which libraries it imported.
PROBE = ("import sys\nsys.argv = ['cifarq', 'submit', 'train', '--epochs', '1', '--json']\n"
         "from api_cli.main import main\ntry:\n    main()\nexcept SystemExit as exit:\n"
         "    print('IMPORTED', sorted(m for m in ('sqlalchemy', 'celery', 'kombu', 'redis') if m in sys.modules),"
         " 'EXIT', exit.code, file=sys.stderr)\n")


def test_submit_imports_neither_the_orm_nor_celery_where_it_need_not(env):
    env.cli("list")
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env.vars, cwd=REPO,
                            timeout=60)
    if "CIFARQ_BROKER_URL" in env.vars:  # PostgreSQL + Redis: neither
        assert "IMPORTED [] EXIT 0" in result.stderr, result.stderr
    else:  # the embedded broker is kombu's filesystem transport: Celery sends
        assert "IMPORTED ['celery', 'kombu'] EXIT 0" in result.stderr, result.stderr
    job = env.cli_json("status", result.stdout.split('"id": "')[1].split('"')[0])
    assert job["status"] == "queued" and job["params"]["epochs"] == 1
    # Its debt was cleared once the message was sent: no reaper sends it a second time.
    from tests.conftest import query

    assert query(env, "SELECT resend_after FROM jobs WHERE id = :j", job["id"]) == [(None,)]

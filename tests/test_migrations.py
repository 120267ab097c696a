"""The schema comes from Alembic; the code knows which revision is the newest."""
from __future__ import annotations

from pathlib import Path

from alembic.config import Config
from alembic.script import ScriptDirectory

import shared.db
from tests.conftest import drop_postgres_database, make_env, make_postgres_database


def test_head_revision_constant_matches_alembic():
    config = Config()
    config.set_main_option("script_location", str(Path(shared.db.__file__).parent / "migrations"))
    assert ScriptDirectory.from_config(config).get_current_head() == shared.db.HEAD_REVISION


def test_upgrade_is_idempotent_and_required_on_postgres(tmp_path, small_cifar):
    env, _ = make_env("sqlite", tmp_path / "home", small_cifar)
    database = make_postgres_database()
    try:
        pg = {"CIFARQ_DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}"}
        before = env.cli("list", check=False, extra_env=pg)
        assert before.returncode == 1
        assert before.stderr == (f"error: database schema is at nothing, not {shared.db.HEAD_REVISION}: "
                                 "run `cifarq db upgrade`\n")
        for _ in range(2):
            upgraded = env.cli("db", "upgrade", extra_env=pg)
            assert f"is at revision {shared.db.HEAD_REVISION}" in upgraded.stderr
        assert env.cli("list", "--json", extra_env=pg).stdout.strip() == "[]"
    finally:
        drop_postgres_database(database)


def test_sqlite_migrates_itself_on_first_use(tmp_path, small_cifar):
    env, _ = make_env("sqlite", tmp_path / "home", small_cifar)
    assert not (env.home / "cifarq.db").exists()
    assert env.cli("list", "--json").stdout.strip() == "[]"
    assert (env.home / "cifarq.db").exists()

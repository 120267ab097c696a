"""Property: whatever flags and values a user throws at the CLI, it ends with a valid job or one
clear line on stderr, never a traceback, never a half-written row or a message without a row."""
from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

COMMANDS = {
    ("submit", "train"): ["--epochs", "--batch-size", "--lr", "--momentum", "--width", "--seed", "--log-every",
                          "--device", "--queue"],
    ("submit", "evaluate"): ["--checkpoint", "--weights", "--device"],
    ("status",): [], ("results",): [], ("logs",): [], ("cancel",): [], ("list",): ["--status", "--kind", "--limit"],
    ("wait",): ["--timeout"], ("checkpoint", "list"): [], ("checkpoint", "export"): [],
}
NEEDS_ID = {("status",), ("results",), ("logs",), ("cancel",), ("wait",), ("checkpoint", "list"), ("checkpoint", "export")}

values = st.one_of(
    st.integers(min_value=-10**12, max_value=10**12).map(str),
    st.sampled_from(["nan", "inf", "-inf", "0", "-1", "1e309", "1e-320", "", " ", "cuda:99", "cpu", "auto",
                     "cuda", "tpu", "queued", "train", "x:1", ":", "../../etc/passwd", "0x10", "1_000", "💥"]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=12),
)


@pytest.fixture(scope="module")
def runner_env(tmp_path_factory):
    home = tmp_path_factory.mktemp("fuzz-home")
    mp = pytest.MonkeyPatch()
    for key in ("CIFARQ_DATABASE_URL", "CIFARQ_BROKER_URL", "CIFARQ_DEBUG"):
        mp.delenv(key, raising=False)
    mp.setenv("CIFARQ_HOME", str(home))
    forget_this_process_s_installation()
    yield home
    forget_this_process_s_installation()
    mp.undo()


def forget_this_process_s_installation():
    """Settings, engine and Celery app are made once per process: an earlier test in this
    process (one that imports worker.tasks, say) must not leave its broker or database here."""
    from shared import celery_app, db
    from shared.settings import get_settings

    get_settings.cache_clear()
    celery_app.get_app.cache_clear()
    if db.get_engine.cache_info().currsize:
        db.get_engine().dispose()
    db.get_engine.cache_clear()
    db._sessionmaker.cache_clear()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(command=st.sampled_from(sorted(COMMANDS)), data=st.data())
def test_any_input_gives_a_job_or_one_clear_line(runner_env, command, data):
    from api_cli.main import app

    args = list(command)
    if command in NEEDS_ID:
        args.append(data.draw(st.one_of(st.text(max_size=10), st.sampled_from(["abcd", "0000000000000000"]))))
    if command == ("checkpoint", "export"):
        args.append(str(runner_env / "out.pt"))
    for _ in range(data.draw(st.integers(0, 4))):
        flag = data.draw(st.sampled_from(COMMANDS[command] + ["--json", "--bogus"]))
        args.append(flag)
        if flag not in ("--json",):
            args.append(data.draw(values))
    if command == ("wait",):
        args += ["--timeout", "0"]

    messages_before, jobs_before = count_messages(runner_env), count_jobs(app)
    result = CliRunner().invoke(app, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.stderr
    if result.exit_code != 0:
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, (args, result.stderr)
    created = count_jobs(app) - jobs_before
    sent = count_messages(runner_env) - messages_before
    assert created == sent, f"{created} rows but {sent} messages after {args}"
    if command[0] == "submit" and result.exit_code == 0:
        assert created == 1
    elif command[0] != "submit":
        assert created == 0


def count_messages(home) -> int:
    folder = home / "broker" / "messages"
    return len(list(folder.iterdir())) if folder.exists() else 0


def count_jobs(app) -> int:
    result = CliRunner().invoke(app, ["list", "--json", "--limit", "100000"])
    assert result.exit_code == 0, result.stderr
    return len(json.loads(result.stdout))

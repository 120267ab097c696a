"""Bad input: one line on stderr, a non-zero exit, nothing queued, nothing written."""
from __future__ import annotations

import pytest

BAD_SUBMITS = [
    (["--epochs", "0"], "invalid --epochs 0"),
    (["--epochs", "x"], "Invalid value for '--epochs'"),
    (["--lr", "-1"], "invalid --lr -1.0"),
    (["--lr", "nan"], "invalid --lr nan"),
    (["--lr", "inf"], "invalid --lr inf"),
    (["--batch-size", "0"], "invalid --batch-size 0"),
    (["--momentum", "1.5"], "invalid --momentum 1.5"),
    (["--width", "-3"], "invalid --width -3"),
    (["--device", "tpu"], "invalid --device 'tpu'"),
    (["--device", "cuda:x"], "invalid --device 'cuda:x'"),
    (["--no-such-flag"], "No such option: --no-such-flag"),
]


def assert_one_line_error(result, expected: str, code: int | None = None):
    assert result.returncode != 0 and (code is None or result.returncode == code)
    assert result.stderr.startswith("error: ") and expected in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1, f"not one line: {result.stderr!r}"
    assert "Traceback" not in result.stderr and result.stdout == ""


@pytest.mark.parametrize("flags,expected", BAD_SUBMITS)
def test_bad_train_flags_queue_nothing(sqlite_env, flags, expected):
    assert_one_line_error(sqlite_env.cli("submit", "train", *flags, check=False), expected)
    assert sqlite_env.cli_json("list") == []
    messages = sqlite_env.home / "broker" / "messages"
    assert not messages.exists() or not any(messages.iterdir()), "a message was sent"


def test_unknown_job_id_everywhere(sqlite_env):
    for command in (["status"], ["wait"], ["results"], ["logs"], ["cancel"], ["checkpoint", "list"]):
        assert_one_line_error(sqlite_env.cli(*command, "feedbeef", check=False), "no job with id 'feedbeef'", 1)


def test_evaluate_needs_a_checkpoint_that_exists(sqlite_env, tmp_path):
    cli = sqlite_env.cli
    assert_one_line_error(cli("submit", "evaluate", check=False), "give exactly one of --checkpoint")
    assert_one_line_error(cli("submit", "evaluate", "--checkpoint", "nope", check=False), "no job with id 'nope'")
    queued = sqlite_env.submit_train("--epochs", "1")  # no worker runs here: it has no checkpoint
    assert_one_line_error(cli("submit", "evaluate", "--checkpoint", queued, check=False),
                          f"job {queued} has no checkpoint at all")
    assert_one_line_error(cli("submit", "evaluate", "--checkpoint", f"{queued}:x", check=False),
                          "EPOCH must be a whole number")
    assert_one_line_error(cli("checkpoint", "export", queued, str(tmp_path / "x.pt"), check=False),
                          f"job {queued} has no checkpoint at all")
    assert not (tmp_path / "x.pt").exists()
    missing = tmp_path / "missing.pth"
    assert_one_line_error(cli("submit", "evaluate", "--weights", str(missing), check=False), "does not exist")
    truncated = tmp_path / "truncated.pth"
    import io

    import torch

    buffer = io.BytesIO()
    torch.save({"conv1.weight": torch.zeros(6, 3, 5, 5)}, buffer)
    truncated.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    assert_one_line_error(cli("submit", "evaluate", "--weights", str(truncated), check=False),
                          "is not a file written by torch.save")
    assert [job["id"] for job in sqlite_env.cli_json("list")] == [queued], "only the valid job was written"


def test_debug_switch_shows_the_traceback(sqlite_env):
    plain = sqlite_env.cli("status", "feedbeef", check=False)
    debug = sqlite_env.cli("--debug", "status", "feedbeef", check=False)
    assert "Traceback" not in plain.stderr and "Traceback" in debug.stderr
    assert debug.stderr.rstrip().endswith("error: no job with id 'feedbeef'")


def test_unreachable_database_is_one_line(sqlite_env):
    result = sqlite_env.cli("status", "feedbeef", check=False,
                            extra_env={"CIFARQ_DATABASE_URL": "postgresql+psycopg://nobody:secret@127.0.0.1:1/x"})
    assert_one_line_error(result, "database unreachable at postgresql+psycopg://nobody:***@127.0.0.1:1/x", 1)
    assert "secret" not in result.stderr


def test_unreachable_broker_leaves_no_row(sqlite_env):
    result = sqlite_env.cli("submit", "train", check=False, extra_env={"CIFARQ_BROKER_URL": "redis://127.0.0.1:1/0"})
    assert_one_line_error(result, "broker unreachable at redis://127.0.0.1:1/0", 1)
    assert "nothing was queued" in result.stderr
    assert sqlite_env.cli_json("list") == []

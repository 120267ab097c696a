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
    (["--recipe", "fast", "--width", "1024"], "invalid --width 1024: a fast net this wide has a 1.9 GiB checkpoint"),
    (["--device", "tpu"], "invalid --device 'tpu'"),
    (["--device", "cuda:x"], "invalid --device 'cuda:x'"),
    (["--device", "cpu\n"], "invalid --device 'cpu\\n'"),  # "$" would match before the newline
    (["--device", "cuda:\u0663"], "invalid --device"),  # an Arabic-Indic three: \d would admit it
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
    assert_one_line_error(cli("submit", "evaluate", "--checkpoint", f"{queued}:\u00b2", check=False),
                          "EPOCH must be a whole number")  # "²".isdigit(), yet not a number
    assert_one_line_error(cli("checkpoint", "export", queued, str(tmp_path / "x.pt"), check=False),
                          f"job {queued} has no checkpoint at all")
    assert not (tmp_path / "x.pt").exists()
    missing = tmp_path / "missing.pth"
    assert_one_line_error(cli("submit", "evaluate", "--weights", str(missing), check=False), "does not exist")
    # A newline in a value that the message repeats stays on the one line, escaped (found by
    # tests/test_cli_fuzz.py: "weights file \n does not exist" took two lines).
    assert_one_line_error(cli("submit", "evaluate", "--weights", "\n", check=False), "weights file \\n does not")
    truncated = tmp_path / "truncated.pth"
    import io

    import torch

    buffer = io.BytesIO()
    torch.save({"conv1.weight": torch.zeros(6, 3, 5, 5)}, buffer)
    truncated.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    assert_one_line_error(cli("submit", "evaluate", "--weights", str(truncated), check=False),
                          "is not a file written by torch.save")
    long_name = tmp_path / ("w" * 300 + ".pth")
    assert_one_line_error(cli("submit", "evaluate", "--weights", str(long_name), check=False), "File name too long")
    from tests.tutorial_net import TutorialNet

    seven_classes = TutorialNet().state_dict()
    seven_classes["fc3.weight"], seven_classes["fc3.bias"] = torch.zeros(7, 84), torch.zeros(7)
    torch.save(seven_classes, tmp_path / "seven.pth")
    assert_one_line_error(cli("submit", "evaluate", "--weights", str(tmp_path / "seven.pth"), check=False),
                          "has 7 output classes (fc3.weight is [7, 84]); CIFAR-10 has 10")
    assert [job["id"] for job in sqlite_env.cli_json("list")] == [queued], "only the valid job was written"


def test_odd_ids_and_queues_get_one_short_line(sqlite_env):
    huge = "a" * 100_000
    result = sqlite_env.cli("status", huge, check=False)
    assert_one_line_error(result, "no job with id 'aaaaaaaaaaaaaaaa'... (100000 characters)", 1)
    assert len(result.stderr) < 200
    for queue, expected in (("q" * 65, "invalid --queue 'qqqqqqqqqqqqqqqq'... (65 characters)"),
                            ("-rf", "invalid --queue '-rf'"), ("a b", "invalid --queue 'a b'")):
        assert_one_line_error(sqlite_env.cli("submit", "train", "--queue", queue, check=False), expected)
    assert sqlite_env.cli_json("list") == []


def test_a_queue_nobody_consumes_is_said_at_submit(backend_env):
    # backend_env's worker consumes default and cpu: a queue of one's own naming has no consumer.
    lonely = backend_env.cli("submit", "train", "--epochs", "1", "--queue", "nobody-home")
    assert "warning: no live worker consumes queue 'nobody-home'" in lonely.stderr
    assert "cifarq worker --queues nobody-home" in lonely.stderr
    served = backend_env.cli("submit", "train", "--epochs", "1", "--queue", "cpu")
    assert "warning" not in served.stderr
    backend_env.cli("cancel", lonely.stdout.strip())
    assert backend_env.cli("wait", served.stdout.strip(), "--timeout", "120").returncode == 0


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


@pytest.mark.parametrize("variable,url,shown", [
    ("CIFARQ_DATABASE_URL", "postgresql+psycopg://nobody:raw@secret@127.0.0.1:1/x",
     "invalid CIFARQ_DATABASE_URL 'postgresql+psycopg://nobody:***@127.0.0.1:1/x': expected a database URL"),
    ("CIFARQ_DATABASE_URL", "postgresql+psycopg://nobody@127.0.0.1:1/x?password=secret",
     "postgresql+psycopg://nobody@127.0.0.1:1/x?password=***"),
    ("CIFARQ_BROKER_URL", "redis://127.0.0.1:1/0?password=secret", "redis://127.0.0.1:1/0?password=***"),
    ("CIFARQ_BROKER_URL", "redis://:raw@secret@127.0.0.1:1/0", "redis://:***@127.0.0.1:1/0"),
    ("CIFARQ_BROKER_URL", "redis://:secret1@127.0.0.1:1/0;redis://:secret2@127.0.0.1:2/0",
     "redis://:***@127.0.0.1:1/0;redis://:***@127.0.0.1:2/0"),
])
def test_no_password_is_ever_printed(sqlite_env, variable, url, shown):
    command = ("submit", "train") if variable == "CIFARQ_BROKER_URL" else ("status", "feedbeef")
    result = sqlite_env.cli(*command, check=False, extra_env={variable: url})
    assert result.returncode == 1 and shown in result.stderr, result.stderr
    assert "secret" not in result.stderr and result.stderr.count("\n") == 1


def test_unreachable_broker_leaves_no_row(sqlite_env):
    result = sqlite_env.cli("submit", "train", check=False, extra_env={"CIFARQ_BROKER_URL": "redis://127.0.0.1:1/0"})
    assert_one_line_error(result, "broker unreachable at redis://127.0.0.1:1/0", 1)
    assert "nothing was queued" in result.stderr
    assert sqlite_env.cli_json("list") == []


def test_the_small_texts_a_newcomer_reads(sqlite_env):
    cli = sqlite_env.cli
    # `cifarq` or a group alone: the help, on stdout, and no empty "error:" line after it.
    for args in ([], ["submit"], ["checkpoint"]):
        shown = cli(*args, check=False)
        assert shown.returncode == 0 and shown.stderr == "" and "Usage:" in shown.stdout, (args, shown)
    # Flags are flags: no "<bool>" type beside them.
    for args in (["status", "--help"], ["submit", "train", "--help"], ["--help"]):
        assert "<bool>" not in cli(*args).stdout
    assert "--follow" in cli("status", "--help").stdout
    # An id too short to be meant says how long it must be.
    assert_one_line_error(cli("status", "abc", check=False), "job id 'abc' is too short: give at least 4 characters", 1)
    # A job that ended cannot be cancelled, in words that read.
    job_id = sqlite_env.submit_train("--epochs", "1")
    cli("cancel", job_id)
    assert_one_line_error(cli("cancel", job_id, check=False),
                          f"job {job_id} has already ended (cancelled): nothing to cancel", 1)
    # `wait` on a cancelled job: its error once, not "cancelled: cancelled: ...".
    waited = cli("wait", job_id, check=False)
    assert waited.returncode == 1 and waited.stderr.strip().splitlines()[-1] == "cancelled before it started"

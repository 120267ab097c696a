"""A job that no live worker can take says so at once: `submit` warns, `status` and `wait` say it
while the job waits, and `run` never claims a worker that cannot take the job (nothing is
queued then, and a local worker started for it is stopped again)."""
from __future__ import annotations

import shutil

import pytest

pytestmark = pytest.mark.skipif(shutil.which("nvidia-smi") is not None,
                                reason="this host has a GPU: its local worker can take a cuda job")

ONE_EPOCH = ["--epochs", "1", "--log-every", "10"]


def last_line(result) -> str:
    return result.stderr.strip().splitlines()[-1]


def test_submit_status_and_wait_say_when_no_live_worker_consumes_the_queue(env):
    warning = ("warning: no live worker consumes queue 'gpu': start `cifarq worker` on a host with an NVIDIA GPU; "
               "the job waits until one does")
    submitted = env.cli("submit", "train", "--device", "cuda", *ONE_EPOCH)
    job_id = submitted.stdout.strip()
    assert warning in submitted.stderr.splitlines()
    assert env.cli_json("status", job_id)["live_consumers"] == 0
    assert "waiting   no live worker consumes queue 'gpu'" in env.cli("status", job_id).stdout
    waited = env.cli("wait", job_id, "--timeout", "1", check=False)
    assert waited.returncode == 2
    assert f"{job_id} waits: no live worker consumes queue 'gpu'" in waited.stderr

    env.start_worker()  # a CPU worker: it serves default and cpu, and still not gpu
    served = env.cli("submit", "train", "--device", "cpu", *ONE_EPOCH)
    assert "warning" not in served.stderr, served.stderr
    assert env.cli("wait", served.stdout.strip(), "--timeout", "120").returncode == 0
    assert env.cli_json("status", served.stdout.strip())["live_consumers"] is None  # not waiting
    assert env.cli_json("status", job_id)["live_consumers"] == 0
    assert "warning: no live worker consumes queue 'gpu'" in env.cli("submit", "train", "--device", "cuda").stderr
    custom = env.cli("submit", "train", "--queue", "nightly", *ONE_EPOCH)
    assert "no live worker consumes queue 'nightly': start `cifarq worker --queues nightly`" in custom.stderr


def test_what_a_newcomer_reads_on_each_backend(env):
    # --recipe fast where every live worker is a CPU worker: what that costs, said at submit
    # (tests/test_fast_recipe.py has the estimate from a recorded job).
    env.start_worker()
    fast = env.cli("submit", "train", "--recipe", "fast", "--queue", "parked", "--device", "cpu")
    assert "warning: --recipe fast is built for a GPU; on a CPU it takes minutes per epoch" in fast.stderr
    job_id = fast.stdout.strip()
    assert last_line(env.cli("status", job_id[:3], check=False)) == \
        f"error: job id {job_id[:3]!r} is too short: give at least 4 characters of it"
    env.cli("cancel", job_id[:4])
    assert last_line(env.cli("cancel", job_id, check=False)) == \
        f"error: job {job_id} has already ended (cancelled): nothing to cancel"
    assert last_line(env.cli("wait", job_id, check=False)) == "cancelled before it started"


def test_run_never_claims_a_worker_that_cannot_take_the_job(env):
    # No worker at all: `run` starts the local one, sees that it has no GPU, stops it again.
    refused = env.cli("run", "train", "--device", "cuda", *ONE_EPOCH, check=False, timeout=300)
    assert refused.returncode == 1, refused.stderr
    assert last_line(refused).startswith("error: no live worker can take this job: it goes to queue 'gpu', and the "
                                         "local worker (pid ")
    assert ", now stopped) consumes default, cpu; start `cifarq worker` on a host with an NVIDIA GPU, or use " \
           "--device auto; nothing was queued" in last_line(refused)
    assert env.cli_json("list") == []
    assert env.cli("local", "status", check=False).returncode == 1, "the worker started for the job was left running"

    env.cli("local", "start", timeout=300)
    try:
        pid = env.cli_json("local", "status")["pid"]
        refused = env.cli("run", "train", "--device", "cuda", *ONE_EPOCH, check=False)
        assert refused.returncode == 1 and "using the local worker" not in refused.stderr
        assert f"the local worker (pid {pid}) consumes default, cpu" in last_line(refused)
        assert env.cli_json("list") == []
        assert env.cli_json("local", "status")["pid"] == pid, "a worker `run` did not start is left alone"
        ran = env.cli("run", "train", "--device", "cpu", *ONE_EPOCH, timeout=300)
        assert f"using the local worker (pid {pid})" in ran.stderr
        assert "Accuracy of the network on the" in ran.stdout
    finally:
        env.cli("local", "stop")

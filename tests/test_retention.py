"""Checkpoints are bounded: a retention policy while a job trains, `cifarq prune` for old jobs."""
from __future__ import annotations


def epochs_of(env, job_id: str) -> list[int]:
    return [c["epoch"] for c in env.cli_json("checkpoint", "list", job_id)]


def test_the_policy_keeps_the_last_n_and_the_best(env, database):
    from worker.records import claim_job, record_epoch

    job_id = env.submit_train("--epochs", "5")
    with database.session_scope() as session:
        claim = claim_job(session=session, job_id=job_id, worker="w1", stale_after=60, max_attempts=3)
    for epoch, loss in enumerate([2.0, 0.5, 1.0, 1.2, 1.1], start=1):  # epoch 2 is the best
        with database.session_scope() as session:
            record_epoch(session=session, claim=claim, epoch=epoch, loss=loss, seconds=1.0, images_per_second=1.0,
                         weights=f"weights {epoch}".encode(), train_state=b"state", config={}, keep_checkpoints=2)
    assert epochs_of(env, job_id) == [2, 4, 5]


def test_a_worker_applies_the_policy_and_prune_thins_finished_jobs(env):
    env.vars["CIFARQ_KEEP_CHECKPOINTS"] = "2"
    env.start_worker()
    kept = env.submit_train("--epochs", "4", "--batch-size", "16", "--lr", "0.01")
    assert env.cli("wait", kept, "--timeout", "300").returncode == 0
    assert len(epochs_of(env, kept)) <= 3 and epochs_of(env, kept)[-2:] == [3, 4]

    env.stop_workers()
    env.vars["CIFARQ_KEEP_CHECKPOINTS"] = "0"
    env.start_worker()
    every = env.submit_train("--epochs", "4", "--batch-size", "16", "--lr", "0.01")
    assert env.cli("wait", every, "--timeout", "300").returncode == 0
    assert epochs_of(env, every) == [1, 2, 3, 4]

    assert env.cli_json("prune", "--older-than", "1")["jobs"] == [], "nothing finished a day ago"
    planned = env.cli_json("prune", "--older-than", "0", "--keep-last", "1", "--dry-run")
    assert planned["dry_run"] and every in [row["job"] for row in planned["jobs"]]
    assert epochs_of(env, every) == [1, 2, 3, 4], "a dry run deletes nothing"
    done = env.cli("prune", "--older-than", "0", "--keep-last", "1")
    assert done.returncode == 0 and "deleted" in done.stderr
    left = epochs_of(env, every)
    assert 4 in left and len(left) <= 2, left  # the last (its results came from it) and the best
    assert env.cli_json("results", every)["accuracy"] is not None
    evaluation = env.cli_json("submit", "evaluate", "--checkpoint", every)["id"]
    assert env.cli("wait", evaluation, "--timeout", "120").returncode == 0

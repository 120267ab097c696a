"""`cifarq submit sweep`: the grid queued as one sweep, validated whole before any row is written;
`list --sweep` and `compare --sweep` rank its jobs by accuracy once a real worker ran them."""
from __future__ import annotations

import itertools

import pytest

from tests.conftest import env_with_worker


def test_the_grid_is_the_cartesian_product_of_the_lists(sqlite_env):
    env = sqlite_env
    data = env.cli_json("submit", "sweep", "--lr", "0.01,0.001", "--width", "6,32", "--seed", "0,1",
                        "--epochs", "5", "--device", "cuda")  # the gpu queue: nothing here runs them
    assert len(data["sweep"]) == 16 and len(data["jobs"]) == 8
    assert all(job["status"] == "queued" for job in data["jobs"])
    listed = env.cli_json("list", "--sweep", data["sweep"], "--limit", "100")
    assert {job["id"] for job in listed} == {job["id"] for job in data["jobs"]}
    assert all(job["sweep_id"] == data["sweep"] and job["status"] == "queued" for job in listed)
    grid = {(j["params"]["lr"], j["params"]["width"], j["params"]["seed"]) for j in listed}
    assert grid == set(itertools.product([0.01, 0.001], [6, 32], [0, 1]))
    assert {(j["params"]["epochs"], j["params"]["batch_size"], j["params"]["momentum"]) for j in listed} == {(5, 4, 0.9)}
    assert env.cli_json("status", data["jobs"][0]["id"])["sweep_id"] == data["sweep"]
    # A prefix of the sweep id works like a job id prefix; an unknown one is an error.
    assert len(env.cli_json("list", "--sweep", data["sweep"][:6], "--limit", "100")) == 8
    unknown = env.cli("list", "--sweep", "ffffffff", check=False)
    assert unknown.returncode == 1 and unknown.stderr == "error: no sweep with id 'ffffffff'\n"

    text = env.cli("submit", "sweep", "--batch-size", "8,16", "--device", "cuda")
    assert len(text.stdout.splitlines()) == 3 and text.stdout.split()[:2] == ["id", "batch_size"]
    assert "2 jobs queued; rank them with: cifarq compare --sweep" in text.stderr


@pytest.mark.parametrize("flags, message", [
    (["--lr", "0.01,-1"], "error: invalid --lr -1.0: Input should be greater than 0\n"),
    (["--lr", "0.01,abc"], "error: invalid --lr '0.01,abc': expected comma-separated numbers, got 'abc'\n"),
    (["--width", "6,2.5"], "error: invalid --width '6,2.5': expected comma-separated whole numbers, got '2.5'\n"),
    (["--seed", "1,1"], "error: invalid --seed '1,1': a value is repeated\n"),
    (["--epochs", "2", "--lr", "0.1,0.2", "--momentum", "0.5,1.0"],
     "error: invalid --momentum 1.0: Input should be less than 1\n"),
    ([], "error: a sweep needs at least one list, e.g. --lr 0.01,0.001\n"),
    (["--seed", ",".join(map(str, range(40))), "--lr", ",".join(f"0.0{i}" for i in range(1, 10)),
      "--width", "1,2,3"], "error: the grid has 1080 combinations; at most 1000 jobs per sweep\n"),
])
def test_one_bad_combination_queues_nothing(sqlite_env, flags, message):
    result = sqlite_env.cli("submit", "sweep", *flags, check=False)
    assert result.returncode == 1 and result.stderr == message
    assert sqlite_env.cli_json("list") == []


@pytest.fixture(scope="module")
def worker_env(tmp_path_factory, small_cifar):
    with env_with_worker("sqlite", tmp_path_factory.mktemp("sweeps"), small_cifar) as env:
        yield env


def test_a_finished_sweep_is_ranked_by_accuracy(worker_env):
    env = worker_env
    data = env.cli_json("submit", "sweep", "--lr", "0.01,0.0001", "--epochs", "2", "--batch-size", "4",
                        "--log-every", "25", "--seed", "1")
    ids = [job["id"] for job in data["jobs"]]
    for job_id in ids:
        assert env.cli("wait", job_id, "--timeout", "180").returncode == 0
    accuracy = {job_id: env.cli_json("results", job_id)["accuracy"] for job_id in ids}
    best_first = sorted(ids, key=lambda i: -accuracy[i])
    assert accuracy[ids[0]] > accuracy[ids[1]], "lr 0.01 learns the easy fake classes, 0.0001 barely moves"

    listed = env.cli_json("list", "--sweep", data["sweep"])
    assert [job["id"] for job in listed] == best_first
    ranked = env.cli_json("compare", "--sweep", data["sweep"])
    assert ranked["sweep"] == data["sweep"]
    assert [(j["rank"], j["id"]) for j in ranked["jobs"]] == [(1, best_first[0]), (2, best_first[1])]
    assert [j["accuracy"] for j in ranked["jobs"]] == [accuracy[i] for i in best_first]

    table = env.cli("compare", "--sweep", data["sweep"]).stdout.splitlines()
    assert table[0].split() == ["rank", "id", "status", "lr", "accuracy", "vs", "best"]
    assert table[1].split()[:4] == ["1", best_first[0], "succeeded", "0.01"]
    listed_text = env.cli("list", "--sweep", data["sweep"]).stdout.splitlines()
    assert listed_text[1].split()[:2] == ["1", best_first[0]]


def test_packs_by_device_default_and_by_pack_size(sqlite_env):
    env = sqlite_env  # no worker: what the submitter decides on its own

    def pack_ids(data: dict) -> list:
        listed = {job["id"]: job for job in env.cli_json("list", "--sweep", data["sweep"], "--limit", "100")}
        return [listed[job["id"]]["pack_id"] for job in data["jobs"]]

    # --device auto with no GPU worker, and --device cpu: a CPU's default pack size is 1, not packed
    # (measured: docs/benchmarks.md, "Packed sweeps").
    for device in ("auto", "cpu"):
        data = env.cli_json("submit", "sweep", "--lr", "0.01,0.001", "--seed", "0,1", "--device", device)
        assert pack_ids(data) == [None] * 4
    # --device cuda: packed by default; 9 points at --pack-size 4 are cut 3, 3, 3 (not 4, 4, 1).
    text = env.cli("submit", "sweep", "--lr", "0.01,0.001", "--seed", "0,1", "--device", "cuda")
    assert "4 jobs queued, 4 of them in 1 pack trained together" in text.stderr
    data = env.cli_json("submit", "sweep", "--lr", "0.01,0.002,0.001", "--seed", "0,1,2", "--device", "cuda",
                        "--pack-size", "4")
    packs = pack_ids(data)
    assert None not in packs and sorted(packs.count(p) for p in set(packs)) == [3, 3, 3]
    # Different shapes never share a pack: two widths, two packs.
    data = env.cli_json("submit", "sweep", "--width", "6,8", "--seed", "0,1", "--device", "cuda")
    listed = env.cli_json("list", "--sweep", data["sweep"], "--limit", "100")
    by_pack = {}
    for job in listed:
        by_pack.setdefault(job["pack_id"], set()).add(job["params"]["width"])
    assert len(by_pack) == 2 and all(len(widths) == 1 for widths in by_pack.values())
    # --no-pack: one delivery a job, whatever the device.
    data = env.cli_json("submit", "sweep", "--lr", "0.01,0.001", "--device", "cuda", "--no-pack")
    assert pack_ids(data) == [None, None]
    status = env.cli("status", listed[0]["id"]).stdout
    assert f"pack      {listed[0]['pack_id']} (queued packed)" in status

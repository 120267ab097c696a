"""The deployment, run for real: images built, `docker compose up`, jobs through the containers.

One compose project (its own name, its own env file, image tag `e2e`, so that a developer's own
stack is left alone) goes through what an ops team does with it, in order: start with two CPU
worker replicas, train and export, SIGKILL a worker mid-job, `stop` workers mid-job, restart
Redis with jobs queued, `down` and `up` again, add workers from a second project through the
`*_ADDR` variables, open Flower, and finally `down -v`. The tests of this module share that
stack and run in file order; each says which state it leaves.

Needs a Docker engine and Docker Compose v2, mmdebstrap and a Debian mirror (for the stand-in
base images, docker/base-images/build.sh), and the pip index (for the wheelhouse, filled once
per checkout). `.ci/run` installs and starts all of that. Elsewhere the module skips and says
what is missing; under CI=true it fails instead, so that CI can never skip it silently.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import urllib.error
import urllib.request
from base64 import b64encode

import pytest

from tests.compose_stack import (Stack, build_base_images, cifar_archive, clean_environment, copy_checkout,
                                 fill_wheelhouse, write_env_file)
from tests.fakedata import CLASSES

pytestmark = [pytest.mark.slow, pytest.mark.containers]

PROJECT = "cifarqe2e"
REMOTE_PROJECT = "cifarqe2e-remote"
TAG = "e2e"
# Long enough to be interrupted (an epoch is a few seconds), short enough for CI.
TRAIN = ["--epochs", "4", "--lr", "0.003", "--seed", "3", "--log-every", "500"]
TEST_IMAGES = 200


def _unavailable(reason: str):
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI must run the container tests, but {reason}")
    pytest.skip(reason)


def _docker() -> str:
    docker = shutil.which("docker")
    if docker is None:
        _unavailable("there is no docker command (.ci/install-docker.sh installs the engine and compose)")
    for probe, what in ((["info"], "the Docker engine does not answer (start dockerd)"),
                        (["compose", "version"], "Docker Compose v2 is missing (`docker compose`)")):
        if subprocess.run([docker, *probe], capture_output=True, timeout=60).returncode != 0:
            _unavailable(what)
    if shutil.which("mmdebstrap") is None:
        _unavailable("mmdebstrap is missing (apt-get install mmdebstrap), needed for the stand-in base images")
    return docker


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    docker = _docker()
    base_images = build_base_images(docker)
    fill_wheelhouse(docker, base_images["CIFARQ_PYTHON_IMAGE"])
    folder = tmp_path_factory.mktemp("compose")
    values = {
        # Distinctive, so that the secret checks below can find where they ended up.
        "POSTGRES_PASSWORD": f"pgsecret{secrets.token_hex(8)}",
        "REDIS_PASSWORD": f"rdsecret{secrets.token_hex(8)}",
        "FLOWER_PASSWORD": f"flsecret{secrets.token_hex(8)}",
        **base_images,
        "CIFARQ_TAG": TAG,
        # Fast fault detection, passed through to every cifarq container.
        "CIFARQ_HEARTBEAT_SECONDS": "1",
        "CIFARQ_STALE_AFTER_SECONDS": "8",
        "CIFARQ_REAP_INTERVAL_SECONDS": "2",
        # Flower on a free loopback port, in case something on this host holds 5555.
        "CIFARQ_FLOWER_PUBLISH": "127.0.0.1:",
    }
    env_file = folder / "stack.env"
    write_env_file(env_file, values)
    stack = Stack(docker, PROJECT, env_file, values)
    everything = ["--profile", "monitoring", "--profile", "cli", "down", "-v", "--remove-orphans"]
    stack.compose(*everything, check=False)  # what a failed earlier run left
    stack.data = cifar_archive(folder / "seed", train_per_batch=2400, test=TEST_IMAGES, signal=0.4)
    yield stack
    for project in (REMOTE_PROJECT, PROJECT):
        Stack(docker, project, env_file, values).compose(*everything, check=False)


def _status_of(stack: Stack) -> dict[str, dict]:
    """Each container of the project, by name: its state, health and exit code."""
    states = {}
    for container in stack.containers(all_states=True):
        info = stack.inspect(container)
        states[info["Name"].lstrip("/")] = {
            "service": info["Config"]["Labels"]["com.docker.compose.service"],
            "status": info["State"]["Status"], "exit": info["State"]["ExitCode"],
            "health": (info["State"].get("Health") or {}).get("Status"),
            "started": info["State"]["StartedAt"], "finished": info["State"]["FinishedAt"]}
    return states


def test_the_stack_builds_and_every_service_turns_healthy(stack):
    stack.compose("--profile", "monitoring", "--profile", "cli", "build")
    stack.compose("up", "-d", "--scale", "worker=2", "--wait", "--wait-timeout", "300")
    states = _status_of(stack)
    by_service: dict[str, list[dict]] = {}
    for state in states.values():
        by_service.setdefault(state["service"], []).append(state)
    assert sorted(by_service) == ["beat", "migrate", "postgres", "redis", "worker"]
    assert len(by_service["worker"]) == 2
    migrate = by_service["migrate"][0]
    assert (migrate["status"], migrate["exit"]) == ("exited", 0)
    for service in ("redis", "postgres", "worker", "beat"):
        for state in by_service[service]:
            assert (state["status"], state["health"]) == ("running", "healthy"), (service, state)
    # The schema was in place before anything that uses it started.
    for service in ("worker", "beat"):
        for state in by_service[service]:
            assert state["started"] > migrate["finished"], f"{service} started before migrate finished"
    stack.copy_data_in(stack.data)
    # The image was built with the default CPU step compiled for this host's CPU and timed
    # (docker/worker.Dockerfile): each new worker container's warm-up finds it and builds nothing.
    warm_ups = stack.worker_warm_ups(2)
    assert all("the default step is in the compile cache already" in line for line in warm_ups), warm_ups


def test_a_job_trains_in_the_containers_and_its_checkpoint_loads_in_plain_torch(stack, tmp_path):
    job_id = stack.submit("--epochs", "2")
    status = stack.finish(job_id)
    assert status["status"] == "succeeded" and status["device"] == "cpu"
    # A new container's first job: the step the image carries, loaded, or eager because the
    # image's figures say loading it would not pay for 6,000 steps; never built in the job.
    log = stack.cli("logs", job_id).stdout
    assert "step compiled ahead of time, loaded in" in log or "(this worker's warm-up figures)" in log, log
    assert "step compiled in" not in log and "no C++ compiler" not in log, log
    results = json.loads(stack.cli("results", job_id, "--json").stdout)
    assert [row["class"] for row in results["per_class"]] == CLASSES
    assert sum(row["total"] for row in results["per_class"]) == TEST_IMAGES
    assert 0 < results["accuracy"] <= 1

    out = tmp_path / "export"
    out.mkdir()
    out.chmod(0o777)  # the container writes as uid 10001
    stack.cli("checkpoint", "export", job_id, "/out/cifar_net.pth", volumes=(f"{out}:/out",))

    import torch

    from tests.tutorial_net import TutorialNet

    net = TutorialNet()
    net.load_state_dict(torch.load(out / "cifar_net.pth"))
    assert net(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


def test_a_sigkilled_worker_container_s_job_resumes_on_the_other_replica(stack):
    reference = stack.submit(*TRAIN)
    assert stack.finish(reference)["status"] == "succeeded"

    job_id = stack.submit(*TRAIN)
    running = stack.wait_for(job_id, lambda s: s["status"] == "running" and s["progress"]["epoch"] >= 1,
                             what="epoch 1 checkpointed")
    killed = stack.container_of_worker(running["worker"])
    stack.docker_cmd("kill", killed)  # SIGKILL: no hand-back, no goodbye
    # Running, or already re-queued by the other replica's reaper: not finished before the kill.
    assert stack.host_cli_json("status", job_id)["status"] in ("running", "queued"), "it finished before the kill"

    status = stack.finish(job_id)
    assert status["status"] == "succeeded" and status["attempts"] == 2
    assert status["worker"] != running["worker"]
    assert stack.container_of_worker(status["worker"]) != killed
    log = stack.cli("logs", job_id).stdout
    assert re.search(r"resuming after epoch [123] from its checkpoint", log), log
    assert log.count("Finished Training") == 1
    # Same seed, same batches after the resume: the same model as the uninterrupted run, to
    # the bit (the weights' sha256), and so the same confusion matrix.
    final = lambda job: json.loads(stack.cli("checkpoint", "list", job, "--json").stdout)[-1]  # noqa: E731
    assert final(job_id)["epoch"] == 4 and final(job_id)["sha256"] == final(reference)["sha256"]
    matrix = json.loads(stack.cli("results", job_id, "--json").stdout)["confusion_matrix"]
    assert matrix == json.loads(stack.cli("results", reference, "--json").stdout)["confusion_matrix"]

    stack.docker_cmd("start", killed)  # back to two replicas
    stack.compose("up", "-d", "--scale", "worker=2", "--wait", "--wait-timeout", "120")


def test_compose_stop_hands_the_job_back_without_using_an_attempt(stack):
    job_id = stack.submit(*TRAIN)
    stack.wait_for(job_id, lambda s: s["status"] == "running" and s["progress"]["epoch"] >= 1, what="epoch 1")
    stack.compose("stop", "worker")
    status = stack.host_cli_json("status", job_id)
    assert status["status"] == "queued" and status["error"] == "the worker stopped; handed back to the queue"

    stack.compose("up", "-d", "worker")
    status = stack.finish(job_id)
    assert status["status"] == "succeeded" and status["attempts"] == 1
    log = stack.cli("logs", job_id).stdout
    assert "handed back to the queue" in log and "resuming after epoch" in log
    stack.compose("up", "-d", "--scale", "worker=2", "--wait", "--wait-timeout", "120")


def test_restarting_redis_with_jobs_queued_loses_none_and_runs_each_once(stack):
    stack.compose("stop", "worker")  # the jobs stay queued, their messages in Redis
    jobs = [stack.submit("--epochs", "1", "--seed", str(seed)) for seed in range(3)]
    stack.compose("restart", "redis")
    stack.compose("up", "-d", "--scale", "worker=2", "--wait", "--wait-timeout", "120")
    for job_id in jobs:
        status = stack.finish(job_id)
        assert status["status"] == "succeeded" and status["attempts"] == 1
        assert stack.cli("logs", job_id).stdout.count("Finished Training") == 1


def test_down_then_up_keeps_every_record_and_down_v_would_not(stack):
    before = json.loads(stack.cli("list", "--limit", "100", "--json").stdout)
    assert len(before) >= 7 and all(job["status"] == "succeeded" for job in before)
    checkpoints = {job["id"]: stack.cli("checkpoint", "list", job["id"], "--json").stdout for job in before[:2]}
    results = {job["id"]: stack.cli("results", job["id"], "--json").stdout for job in before[:2]}

    stack.compose("down")
    assert stack.containers(all_states=True) == []
    stack.compose("up", "-d", "--scale", "worker=2", "--wait", "--wait-timeout", "300")

    assert json.loads(stack.cli("list", "--limit", "100", "--json").stdout) == before
    for job_id, listing in checkpoints.items():
        assert stack.cli("checkpoint", "list", job_id, "--json").stdout == listing
        assert stack.cli("results", job_id, "--json").stdout == results[job_id]
    # ...and the data set is still in its volume: a new job trains.
    assert stack.finish(stack.submit("--epochs", "1"))["status"] == "succeeded"


def test_no_container_runs_as_root_no_secret_leaks_ports_on_loopback(stack):
    for container in stack.containers():
        info = stack.inspect(container)
        name = info["Name"]
        assert info["Config"]["User"] not in ("", "0", "root", "0:0"), f"{name} runs as root"
        rows = stack.docker_cmd("top", container, "-o", "pid,uid").stdout.splitlines()[1:]
        uids = [row.split()[1] for row in rows]
        assert uids and "0" not in uids, f"{name} has a process of root: {uids}"
        for bindings in (info["NetworkSettings"]["Ports"] or {}).values():
            for binding in bindings or []:
                assert binding["HostIp"] == "127.0.0.1", f"{name} publishes on {binding['HostIp']}"

    passwords = [stack.values[k] for k in ("POSTGRES_PASSWORD", "REDIS_PASSWORD", "FLOWER_PASSWORD")]
    for image in ("cifarq-cli", "cifarq-worker", "cifarq-flower"):
        history = stack.docker_cmd("history", "--no-trunc", f"{image}:{TAG}").stdout
        config = stack.docker_cmd("image", "inspect", f"{image}:{TAG}").stdout
        for password in passwords:
            assert password not in history and password not in config, f"a password is in {image}'s image"
    logs = stack.compose("logs", "--no-color").stdout
    assert "Finished Training" in logs or "succeeded" in logs  # the logs are really there
    for text in [logs, *stack.outputs]:
        for password in passwords:
            assert password not in text, "a password appeared in the stack's output"


def test_flower_lists_the_workers_and_refuses_anyone_without_the_password(stack):
    refused = stack.compose("run", "--rm", "--no-deps", "-T", "-e", "FLOWER_PASSWORD=", "flower", check=False)
    assert refused.returncode != 0 and "set FLOWER_PASSWORD" in refused.stderr

    stack.compose("--profile", "monitoring", "up", "-d", "--wait", "--wait-timeout", "120", "flower")
    url = f"http://{stack.published('flower', 5555)}/api/workers?refresh=1"
    with pytest.raises(urllib.error.HTTPError) as anonymous:
        urllib.request.urlopen(url, timeout=30)
    assert anonymous.value.code == 401
    credentials = b64encode(f"cifarq:{stack.values['FLOWER_PASSWORD']}".encode()).decode()
    request = urllib.request.Request(url, headers={"Authorization": f"Basic {credentials}"})
    body = urllib.request.urlopen(request, timeout=60).read().decode()
    registered = {w["name"] for w in json.loads(stack.cli("workers", "--json").stdout)}
    assert len(registered) == 2 and registered == set(json.loads(body))
    for key in ("POSTGRES_PASSWORD", "REDIS_PASSWORD"):
        assert stack.values[key] not in body
    stack.compose("--profile", "monitoring", "rm", "--stop", "--force", "flower")


def _host_address() -> str:
    """This host's address on its own network: reachable from any container, unlike loopback."""
    route = subprocess.run(["ip", "-4", "route", "get", "1.1.1.1"], capture_output=True, text=True).stdout
    match = re.search(r"\bsrc (\S+)", route)
    assert match, f"no source address in {route!r}"
    return match.group(1)


def test_workers_of_a_second_project_join_through_the_addr_variables(stack, tmp_path):
    # The main host publishes Redis and PostgreSQL on its own address (docs/deployment.md,
    # "Workers on several hosts"); its workers stop, so that the new ones must take the job.
    address = _host_address()
    values = {**stack.values, "CIFARQ_REDIS_PUBLISH": f"{address}:", "CIFARQ_POSTGRES_PUBLISH": f"{address}:"}
    main_env = tmp_path / "main.env"
    write_env_file(main_env, values)
    main = Stack(stack.docker, PROJECT, main_env, values)
    main.compose("stop", "worker")
    main.compose("up", "-d", "--wait", "--wait-timeout", "120", "redis", "postgres")

    remote_values = {**stack.values, "CIFARQ_REDIS_ADDR": main.published("redis", 6379),
                     "CIFARQ_POSTGRES_ADDR": main.published("postgres", 5432)}
    remote_env = tmp_path / "remote.env"
    write_env_file(remote_env, remote_values)
    remote = Stack(stack.docker, REMOTE_PROJECT, remote_env, remote_values)
    try:
        remote.copy_data_in(stack.data)  # each host has its own data volume
        remote.compose("up", "-d", "--no-deps", "--scale", "worker=2", "--wait", "--wait-timeout", "180", "worker")
        remote_containers = remote.containers("worker")
        assert len(remote_containers) == 2

        job_id = main.submit("--epochs", "1")
        status = main.finish(job_id)
        assert status["status"] == "succeeded"
        assert any(c.startswith(status["worker"].rsplit("@", 1)[1]) for c in remote_containers)
        hosts = {w["host"] for w in json.loads(main.cli("workers", "--json").stdout)}
        assert hosts == {c[:12] for c in remote_containers}
    finally:
        remote.compose("down", "-v", check=False)
        stack.compose("up", "-d", "--scale", "worker=2", "--wait", "--wait-timeout", "180")


def test_down_v_removes_every_volume(stack):
    volumes = lambda: stack.docker_cmd(  # noqa: E731
        "volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}").stdout.split()
    assert len(volumes()) == 4
    stack.compose("down", "-v")
    assert volumes() == [] and stack.containers(all_states=True) == []


def test_the_client_image_builds_from_the_index_with_the_proxy_ca_as_a_build_secret(stack, tmp_path):
    """The other way to build: no wheelhouse, pip through the package index; behind this host's
    TLS-intercepting proxy, its CA goes in as the build secret pip_ca and stays out of the image."""
    checkout = copy_checkout(tmp_path / "checkout")  # with an empty wheelhouse
    ca = os.environ.get("PIP_CERT")
    values = {**stack.values, "CIFARQ_TAG": f"{TAG}-index", "CIFARQ_BUILD_NETWORK": "host",
              **({"CIFARQ_PIP_CA": ca} if ca else {})}
    env_file = tmp_path / "index.env"
    write_env_file(env_file, values)
    command = [stack.docker, "compose", "--progress", "plain", "-p", f"{PROJECT}-index",
               "--env-file", str(env_file), "--profile", "cli", "build", "--no-cache", "cli"]
    built = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=checkout,
                           env=clean_environment(), stdin=subprocess.DEVNULL)
    assert built.returncode == 0, built.stderr[-3000:]
    # --no-cache: every install step really goes to the index (plain progress is on stdout).
    expected = "trusting the CA of the build secret pip_ca" if ca else "pip: from the package index"
    assert built.stdout.count(expected) == 2, built.stdout[-3000:]
    image = f"cifarq-cli:{TAG}-index"
    probe = stack.docker_cmd("run", "--rm", "--entrypoint", "sh", image, "-c",
                             'test ! -e /run/secrets/pip_ca && env | grep -c PIP_CERT || true')
    assert probe.stdout.strip() == "0", "the CA or PIP_CERT stayed in the image"
    assert stack.docker_cmd("run", "--rm", image, "--version").stdout.startswith("cifarq ")
    stack.docker_cmd("rmi", image)


def test_the_worker_image_builds_without_the_compiled_step_where_asked_and_refuses_other_values(stack, tmp_path):
    """CIFARQ_WORKER_CPU_STEP=eager: no g++ and no step in the image (GPU-only deployments, a
    build host without a Debian mirror); a value it does not know fails the build and says why."""
    def build(value: str, tag: str) -> subprocess.CompletedProcess:
        values = {**stack.values, "CIFARQ_TAG": tag, "CIFARQ_WORKER_CPU_STEP": value}
        env_file = tmp_path / f"{tag}.env"
        write_env_file(env_file, values)
        return Stack(stack.docker, f"{PROJECT}-{tag}", env_file, values).compose(
            "--progress", "plain", "build", "worker", check=False)

    eager = build("eager", f"{TAG}-eager")
    assert eager.returncode == 0, eager.stderr[-3000:]
    image = f"cifarq-worker:{TAG}-eager"
    probe = stack.docker_cmd("run", "--rm", "--entrypoint", "sh", image, "-c",
                             "command -v g++ || echo no-g++; find /home/cifarq/.cifarq -name '*.pt2' | wc -l")
    assert probe.stdout.split() == ["no-g++", "0"], probe.stdout
    assert stack.docker_cmd("run", "--rm", image, "--version").stdout.startswith("cifarq ")
    stack.docker_cmd("rmi", image)

    wrong = build("sometimes", f"{TAG}-wrong")
    assert wrong.returncode != 0
    assert "CPU_STEP must be compiled or eager, not 'sometimes'" in wrong.stdout + wrong.stderr, wrong.stderr[-3000:]

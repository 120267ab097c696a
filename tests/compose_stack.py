"""A compose project driven as its operator drives it: the container tests and the container
benchmark (bench/compose_stack.py) share it."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The CPU variant: this machine, and CI, have no NVIDIA GPU.
COMPOSE_FILES = ("docker-compose.yml", "docker-compose.cpu.yml")


def clean_environment() -> dict[str, str]:
    """Only what docker needs: compose lets the shell's variables win over the env file, so a
    developer's POSTGRES_PASSWORD or CIFARQ_* must not leak in."""
    return {k: v for k, v in os.environ.items()
            if k in ("PATH", "HOME", "LANG", "DOCKER_HOST", "DOCKER_CONFIG", "PIP_CERT", "PIP_CONFIG_FILE")
            or k.startswith("PIP_")}


class Stack:
    """One compose project, driven as its operator would, plus a host-side `cifarq` client
    reaching it through the published loopback ports (the README's way for a host client)."""

    def __init__(self, docker: str, project: str, env_file: Path, values: dict[str, str], root: Path = REPO):
        self.docker, self.project, self.env_file, self.values, self.root = docker, project, env_file, values, root
        self.outputs: list[str] = []  # everything the containers printed to us, checked for secrets

    def compose(self, *args: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
        files = [part for name in COMPOSE_FILES for part in ("-f", str(self.root / name))]
        command = [self.docker, "compose", "-p", self.project, "--env-file", str(self.env_file), *files, *args]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=self.root,
                                env=clean_environment(), stdin=subprocess.DEVNULL)
        self.outputs += [result.stdout, result.stderr]
        if check and result.returncode != 0:
            raise AssertionError(f"docker compose {' '.join(args)} exited {result.returncode}:\n"
                                 f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        return result

    def cli(self, *args: str, check: bool = True, volumes: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
        """`docker compose run --rm cli ...`: the README's client, in its own container."""
        mounts = [part for volume in volumes for part in ("-v", volume)]
        return self.compose("run", "--rm", "--no-deps", "-T", *mounts, "cli", *args, check=check)

    def docker_cmd(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([self.docker, *args], capture_output=True, text=True, timeout=300,
                                env=clean_environment())
        if check and result.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} exited {result.returncode}: {result.stderr}")
        return result

    def published(self, service: str, port: int) -> str:
        return self.compose("port", service, str(port)).stdout.strip()

    def host_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CIFARQ_")}
        env.update(
            CIFARQ_DATABASE_URL=f"postgresql+psycopg://cifarq:{self.values['POSTGRES_PASSWORD']}"
                                f"@{self.published('postgres', 5432)}/cifarq",
            CIFARQ_BROKER_URL=f"redis://:{self.values['REDIS_PASSWORD']}@{self.published('redis', 6379)}/0",
            PYTHONPATH=str(REPO))
        return env

    def host_cli_json(self, *args: str):
        result = subprocess.run([sys.executable, "-m", "api_cli.main", *args, "--json"], capture_output=True,
                                text=True, env=self.host_env(), cwd=REPO, timeout=60)
        assert result.returncode == 0, f"cifarq {' '.join(args)}: {result.stderr}"
        return json.loads(result.stdout)

    def worker_warm_ups(self, count: int, timeout: float = 120) -> list[str]:
        """The `cifarq warm-up:` lines of the worker containers' logs, once there are `count` of
        them (a worker's warm-up reports a few seconds after its start)."""
        deadline = time.monotonic() + timeout
        while len(lines := re.findall(r"cifarq warm-up: [^\n]*", self.compose("logs", "worker").stdout)) < count:
            assert time.monotonic() < deadline, f"the workers' warm-ups said only {lines}"
            time.sleep(1)
        return lines

    def wait_for(self, job_id: str, predicate, *, what: str, timeout: float = 300) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            status = self.host_cli_json("status", job_id)
            if predicate(status):
                return status
            assert time.monotonic() < deadline, f"job {job_id}: timed out waiting for {what}; last status {status}"
            time.sleep(0.5)

    def submit(self, *flags: str) -> str:
        return json.loads(self.cli("submit", "train", *flags, "--json").stdout)["id"]

    def finish(self, job_id: str) -> dict:
        self.cli("wait", job_id, "--timeout", "600")
        return json.loads(self.cli("status", job_id, "--json").stdout)

    def containers(self, service: str | None = None, *, all_states: bool = False) -> list[str]:
        args = ["ps", "-q", *(["-a"] if all_states else []), *([service] if service else [])]
        return self.compose(*args).stdout.split()

    def inspect(self, container: str) -> dict:
        return json.loads(self.docker_cmd("inspect", container).stdout)[0]

    def container_of_worker(self, worker_name: str) -> str:
        """A worker is named cifarq-cpu-<pid>@<hostname>; a container's hostname is its short id."""
        hostname = worker_name.rsplit("@", 1)[1]
        matches = [c for c in self.containers("worker", all_states=True) if c.startswith(hostname)]
        assert len(matches) == 1, f"no single worker container for {worker_name}: {matches}"
        return matches[0]

    def copy_data_in(self, archive: Path) -> None:
        """CIFAR-10's archive into the workers' volume, as docs/deployment.md shows for an offline
        host; the first job extracts it."""
        self.compose("run", "--rm", "--no-deps", "-T", "-v", f"{archive}:/seed/{archive.name}:ro",
                     "--entrypoint", "cp", "worker", f"/seed/{archive.name}", "/data/")


def build_base_images(docker: str) -> dict[str, str]:
    """docker/base-images/build.sh prints the CIFARQ_*_IMAGE lines (it rebuilds only what changed)."""
    result = subprocess.run(["bash", str(REPO / "docker/base-images/build.sh")], capture_output=True, text=True,
                            timeout=1800, env={**clean_environment(), "DOCKER": docker})
    assert result.returncode == 0, f"docker/base-images/build.sh failed:\n{result.stderr[-3000:]}"
    return dict(line.split("=", 1) for line in result.stdout.split())


def fill_wheelhouse(docker: str, python_image: str) -> None:
    result = subprocess.run(["bash", str(REPO / "docker/wheelhouse.sh")], capture_output=True, text=True, timeout=1800,
                            env={**clean_environment(), "DOCKER": docker, "CIFARQ_PYTHON_IMAGE": python_image})
    assert result.returncode == 0, f"docker/wheelhouse.sh failed:\n{result.stderr[-3000:]}"


def write_env_file(path: Path, values: dict[str, str]) -> None:
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))


def copy_checkout(destination: Path, *, wheelhouse: bool = False) -> Path:
    """What the images are built from, copied: a place to build with other inputs (an empty
    wheelhouse, a changed source file) without touching this checkout."""
    destination.mkdir(parents=True)
    for name in ("docker-compose.yml", "docker-compose.cpu.yml", "pyproject.toml", "README.md", ".dockerignore"):
        shutil.copy(REPO / name, destination / name)
    for name in ("shared", "worker", "api_cli"):
        shutil.copytree(REPO / name, destination / name, ignore=shutil.ignore_patterns("__pycache__"))
    (destination / "docker").mkdir()
    for path in (REPO / "docker").glob("*"):
        if path.is_file():
            shutil.copy(path, destination / "docker" / path.name)
    if wheelhouse:
        shutil.copytree(REPO / "docker" / "wheelhouse", destination / "docker" / "wheelhouse", copy_function=os.link)
    else:
        (destination / "docker" / "wheelhouse").mkdir()
    return destination


def cifar_archive(folder: Path, **fake) -> Path:
    """A generated CIFAR-10 (tests/fakedata.py) packed as the official cifar-10-python.tar.gz,
    readable by the containers' user."""
    import tarfile

    from tests.fakedata import write_cifar10

    data = write_cifar10(folder / "layout", **fake)
    archive = folder / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(data / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    archive.chmod(0o644)  # a bind-mounted file is checked by its own mode, not its host folders'
    return archive

"""What the real stack run (tests/test_containers.py) cannot see in docker-compose.yml, the
Dockerfiles and .dockerignore: policies on the files themselves, the GPU path that no CPU
machine starts, defaults that the stack run overrides, and what a build context must keep out.

Everything else (the images build, the services start in order and turn healthy, the
commands exist, nothing runs as root, no secret in an image) is proven by running it.
Compose itself is the real `docker compose` (v2); its checks skip without it, except under CI.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml", reason="needs PyYAML: pip install pyyaml")
dockerfile = pytest.importorskip("dockerfile", reason="needs BuildKit's Dockerfile parser: pip install dockerfile")

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
CPU_FILE = ROOT / "docker-compose.cpu.yml"
SECRETS = ("POSTGRES_PASSWORD", "REDIS_PASSWORD")
SECRET_VALUES = {"POSTGRES_PASSWORD": "pg0secret0test", "REDIS_PASSWORD": "rd0secret0test"}


# --------------------------------------------------------------------------- compose, raw text

def interpolations(text: str) -> list[tuple[str, str, str]]:
    """Every `$NAME` / `${NAME<op><arg>}` in text as (name, op, arg); `$$` is a literal `$`."""
    found = []
    for m in re.finditer(r"\$(\$|\{([^}]*)\}|([A-Za-z_][A-Za-z0-9_]*))", text):
        if m.group(1) == "$":
            continue
        if m.group(3):
            found.append((m.group(3), "", ""))
            continue
        parts = re.match(r"([A-Za-z_][A-Za-z0-9_]*)(:?[-?])?(.*)$", m.group(2), re.S)
        assert parts, f"not a variable reference: ${{{m.group(2)}}}"
        found.append((parts.group(1), parts.group(2) or "", parts.group(3)))
    return found


def test_interpolation_scanner_sees_what_compose_sees():
    assert interpolations("a $$HOME ${X:-1} ${Y:?say Y} $Z ${W}") == [
        ("X", ":-", "1"), ("Y", ":?", "say Y"), ("Z", "", ""), ("W", "", ""),
    ]


def test_every_variable_has_a_default_or_fails_fast():
    refs = interpolations(COMPOSE_FILE.read_text())
    assert set(SECRETS) <= {name for name, _, _ in refs}, "the passwords must come from the environment"
    for name, op, arg in refs:
        if re.search(r"PASSWORD|SECRET|TOKEN", name):
            # ':?' and not '?': an empty password must stop compose too.
            assert op == ":?", f"${{{name}}} is a secret: write ${{{name}:?message}}, no default"
            assert name in arg, f"the message for ${{{name}}} must name the variable: {arg!r}"
        else:
            assert op in (":-", ":?"), (
                f"${{{name}}} has neither a default (:-) nor a clear error (:?): "
                "an unset variable would silently become an empty string")


def test_the_ops_guide_documents_every_variable():
    guide = (ROOT / "docs" / "deployment.md").read_text()
    text = COMPOSE_FILE.read_text()
    in_compose = {name for name, _, _ in interpolations(text)}
    # Variables passed through with no value (`NAME:` in an environment map) count too.
    in_compose |= set(re.findall(r"^\s+((?:CIFARQ|FLOWER)_[A-Z_]+):\s*$", text, re.M))
    in_guide = set(re.findall(r"`((?:CIFARQ|POSTGRES|REDIS|FLOWER)_[A-Z_]+)", guide))
    assert in_compose <= in_guide, f"undocumented in docs/deployment.md: {sorted(in_compose - in_guide)}"


# --------------------------------------------------------------------- compose, real parser

def compose(*args: str, env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess:
    """`docker compose` on our files with exactly `env` and no .env file."""
    docker = shutil.which("docker")
    found = docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0
    if not found:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI must check the compose files, but `docker compose` is missing")
        pytest.skip("needs Docker Compose v2 (`docker compose`): .ci/install-docker.sh installs it")
    empty = tmp_path / "empty.env"
    empty.write_text("")
    base_env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}
    return subprocess.run([docker, "compose", "--env-file", str(empty), *args], cwd=ROOT,
                          env={**base_env, **env}, capture_output=True, text=True, timeout=60)


def resolve(tmp_path: Path, *files: Path, **extra: str) -> dict:
    flags = [part for f in (files or (COMPOSE_FILE,)) for part in ("-f", str(f))]
    proc = compose(*flags, "--profile", "monitoring", "--profile", "cli", "config",
                   env={**SECRET_VALUES, **extra}, tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    return yaml.safe_load(proc.stdout)


@pytest.mark.parametrize("missing", SECRETS)
def test_a_missing_password_stops_compose_with_its_name(missing, tmp_path):
    env = {k: v for k, v in SECRET_VALUES.items() if k != missing}
    proc = compose("config", env=env, tmp_path=tmp_path)
    assert proc.returncode != 0
    assert f"set {missing}" in proc.stderr, proc.stderr


def test_nothing_is_published_beyond_loopback_by_default(tmp_path):
    # The stack run moves Flower to a free port; the defaults themselves are checked here.
    config = resolve(tmp_path)
    published = {}
    for name, service in config["services"].items():
        for port in service.get("ports", ()):
            assert port["host_ip"] == "127.0.0.1", f"{name} publishes {port} beyond loopback"
            published[name] = port.get("published")
    # Redis and PostgreSQL on a port Docker picks (no clash with the host's own servers).
    assert published == {"redis": None, "postgres": None, "flower": "5555"}


def test_gpu_workers_by_default_and_none_with_the_cpu_file(tmp_path):
    # No GPU here to start them on: the GPU path is checked as configuration.
    worker = resolve(tmp_path)["services"]["worker"]
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    # Every GPU of the host to every replica; each replica leases one (--gpu auto).
    assert device["count"] in ("all", -1)  # compose prints `all` as -1
    assert worker["command"] == ["worker", "--gpu", "auto"]

    cpu_worker = resolve(tmp_path, COMPOSE_FILE, CPU_FILE)["services"]["worker"]
    assert not cpu_worker.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices")
    assert cpu_worker["command"] == ["worker", "--gpu", "none"]
    # Everything else about the worker is the same.
    strip = lambda s: {k: v for k, v in s.items() if k not in ("deploy", "command")}  # noqa: E731
    assert strip(cpu_worker) == strip(worker)


def test_every_setting_reaches_every_cifarq_container(tmp_path):
    """Each CIFARQ_* setting that shared/settings.py reads, and CIFARQ_GPU (`cifarq worker`),
    set in .env or the shell, reaches every container that runs cifarq; unset, it stays unset
    there (cifarq's own default). The compose file sets the paths, URLs and liveness file itself."""
    import dataclasses

    from shared.settings import Settings

    names = [f"CIFARQ_{field.name.upper()}" for field in dataclasses.fields(Settings)] + ["CIFARQ_GPU"]
    set_by_compose = {"CIFARQ_HOME", "CIFARQ_DATABASE_URL", "CIFARQ_BROKER_URL", "CIFARQ_DATA_DIR",
                      "CIFARQ_ARTIFACTS_DIR", "CIFARQ_LIVENESS_FILE"}
    passed = {name: f"value-of-{name.lower()}" for name in names if name not in set_by_compose}
    cifarq_services = ("migrate", "worker", "beat", "flower", "cli")
    given = resolve(tmp_path, **passed)["services"]
    unset = resolve(tmp_path)["services"]
    for service in cifarq_services:
        environment = given[service]["environment"]
        missing = {name for name, value in passed.items() if environment.get(name) != value}
        assert not missing, f"{service} does not get {sorted(missing)} from .env or the shell"
        # `config` prints a variable passed through from nowhere as null: not set in the container.
        given_anyway = {name for name in passed if unset[service]["environment"].get(name) is not None}
        assert not given_anyway, f"{service} sets {sorted(given_anyway)} that nobody gave"
    # The ones compose sets are set for every cifarq service (the liveness file: where a healthcheck reads it).
    for name in set_by_compose - {"CIFARQ_LIVENESS_FILE"}:
        assert all(name in given[service]["environment"] for service in cifarq_services), name


def test_build_options_reach_every_built_image(tmp_path):
    config = resolve(tmp_path, CIFARQ_PYTHON_IMAGE="local/python:3.11", CIFARQ_PIP_CA="/etc/hostname",
                     CIFARQ_BUILD_NETWORK="host")
    built = {name: s["build"] for name, s in config["services"].items() if "build" in s}
    assert set(built) == {"migrate", "worker", "beat", "flower", "cli"}
    for name, build in built.items():
        assert build["args"]["PYTHON_IMAGE"] == "local/python:3.11", name
        assert build["network"] == "host", name
        assert [s["source"] for s in build["secrets"]] == ["pip_ca"], name
    assert config["secrets"]["pip_ca"]["file"] == "/etc/hostname"


# ------------------------------------------------------------------------------ Dockerfiles

@pytest.mark.parametrize("name", ["worker.Dockerfile", "cli.Dockerfile"])
def test_dependencies_are_installed_before_the_source_is_copied(name):
    """A source or README change rebuilds in seconds; only pyproject.toml reinstalls torch.
    (A build cannot fail on this, so it is checked here; docs/benchmarks.md has the times.)"""
    commands = list(dockerfile.parse_file(str(ROOT / "docker" / name)))
    copies = [(i, c.value[:-1]) for i, c in enumerate(commands) if c.cmd == "COPY"]
    first_index, first_sources = copies[0]
    assert set(first_sources) == {"pyproject.toml", "docker/pip-install.sh"}
    deps = next(i for i, c in enumerate(commands) if c.cmd == "RUN" and "pip-install.sh --deps" in " ".join(c.value))
    source = min(i for i, sources in copies if {"shared", "worker", "api_cli"} & set(sources))
    assert first_index < deps < source


# ---------------------------------------------------------------------------- .dockerignore

def dockerignore_patterns() -> list[tuple[bool, re.Pattern]]:
    out = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = os.path.normpath((line[1:] if negate else line).strip("/"))
        regex, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                regex, i = regex + pattern[i:end + 1], end + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        out.append((negate, re.compile(regex + r"\Z")))
    return out


def dockerignored(path: str) -> bool:
    """Whether docker leaves `path` out of the build context (last matching pattern wins; a
    pattern that matches a parent folder matches what is inside it)."""
    parts = Path(path).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for negate, regex in dockerignore_patterns():
        if any(regex.match(c) for c in candidates):
            excluded = not negate
    return excluded


@pytest.mark.parametrize(
    "path",
    [".env", ".git/config", ".venv/bin/python", "tests/test_compose.py", "docker-compose.yml",
     "shared/__pycache__/db.cpython-311.pyc", "data/cifar-10-batches-py/data_batch_1",
     "worker/ckpt.pt", "api_cli/.env", "cifarq.egg-info/PKG-INFO", "bench/run.py",
     "docker/base-images/build.sh", ".device/data/cifar10-jpeg.tar.gz"],
)
def test_dockerignore_keeps_out(path):
    # The stack run would still pass with these in the context: a password in .env or the data
    # set would simply travel into the build. Hence this check.
    assert dockerignored(path)


def test_dockerignore_keeps_every_file_the_images_need():
    files = ["pyproject.toml", "README.md", "docker/pip-install.sh", "docker/flower-entrypoint.sh",
             "docker/wheelhouse/torch-2.14.1-cp311-cp311-manylinux_2_28_x86_64.whl"]
    for package in ("shared", "worker", "api_cli"):
        files += [str(p.relative_to(ROOT)) for p in (ROOT / package).rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts]
    assert [f for f in files if dockerignored(f)] == []

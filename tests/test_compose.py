"""docker-compose.yml, the Dockerfiles and .dockerignore, checked without a Docker engine.

The compose file goes through a real compose parser (`docker-compose config`: schema validation,
`${VAR:?message}` interpolation, anchors, depends_on checks), and the assertions run on what it
resolved. The Dockerfiles go through BuildKit's own parser (the `dockerfile` package) and are
checked against the repository: the files they copy, the console scripts they start, the
requirements they install (the very command in the Dockerfile is run on pyproject.toml here).

Needs the PyPI packages `pyyaml` and `dockerfile` (without them the module skips) and the
`docker-compose` command, Debian's 1.29 (`apt-get install docker-compose`; without it the tests
that run it skip). Each skip says what to install.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml", reason="needs PyYAML: pip install pyyaml")
dockerfile = pytest.importorskip(
    "dockerfile", reason="needs BuildKit's Dockerfile parser: pip install dockerfile"
)

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

ALL_SERVICES = {"redis", "postgres", "migrate", "worker", "beat", "flower", "cli"}
SECRETS = ("POSTGRES_PASSWORD", "REDIS_PASSWORD")
# URL-safe, distinctive values, so that a test can find where they ended up.
SECRET_VALUES = {"POSTGRES_PASSWORD": "pg0secret0test", "REDIS_PASSWORD": "rd0secret0test"}
# Processes that use the queue and the records: they wait for both servers and the schema.
NEEDS_BACKENDS = ("worker", "beat", "cli")


# --------------------------------------------------------------------------- compose, raw text

def raw_compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def interpolations(text: str) -> list[tuple[str, str, str]]:
    """Every `$NAME` / `${NAME<op><arg>}` in text as (name, op, arg); `$$` is a literal `$`."""
    found = []
    for m in re.finditer(r"\$(\$|\{([^}]*)\}|([A-Za-z_][A-Za-z0-9_]*))", text):
        if m.group(1) == "$":
            continue
        if m.group(3):
            found.append((m.group(3), "", ""))
            continue
        inner = m.group(2)
        parts = re.match(r"([A-Za-z_][A-Za-z0-9_]*)(:?[-?])?(.*)$", inner, re.S)
        assert parts, f"not a variable reference: ${{{inner}}}"
        found.append((parts.group(1), parts.group(2) or "", parts.group(3)))
    return found


def test_compose_file_names_its_project():
    # A fixed project name gives the same volume names (cifarq_postgres-data, ...) on every
    # host, whatever the checkout folder is called: docs/deployment.md relies on it.
    assert raw_compose()["name"] == "cifarq"


def test_every_variable_has_a_default_or_fails_fast():
    refs = interpolations(COMPOSE_FILE.read_text())
    names = {name for name, _, _ in refs}
    assert set(SECRETS) <= names, "the passwords must come from the environment"
    for name, op, arg in refs:
        if name in SECRETS or re.search(r"PASSWORD|SECRET|TOKEN", name):
            # ':?' and not '?': an empty password must stop compose too.
            assert op == ":?", f"${{{name}}} is a secret: write ${{{name}:?message}}, no default"
            assert name in arg, f"the message for ${{{name}}} must name the variable: {arg!r}"
        else:
            assert op in (":-", ":?"), (
                f"${{{name}}} has neither a default (:-) nor a clear error (:?): "
                "an unset variable would silently become an empty string"
            )


def test_the_ops_guide_documents_every_variable():
    guide = (ROOT / "docs" / "deployment.md").read_text()
    in_compose = {name for name, _, _ in interpolations(COMPOSE_FILE.read_text())}
    in_guide = set(re.findall(r"`((?:CIFARQ|POSTGRES|REDIS)_[A-Z_]+)", guide))
    assert in_compose <= in_guide, f"undocumented: {sorted(in_compose - in_guide)}"
    stale = {v for v in in_guide - in_compose
             if v.endswith(("_PUBLISH", "_ADDR", "_REGISTRY", "_TAG"))}
    assert not stale, f"documented but not in docker-compose.yml: {sorted(stale)}"


def test_interpolation_scanner_sees_what_compose_sees():
    assert interpolations("a $$HOME ${X:-1} ${Y:?say Y} $Z ${W}") == [
        ("X", ":-", "1"), ("Y", ":?", "say Y"), ("Z", "", ""), ("W", "", ""),
    ]


# --------------------------------------------------------------------- compose, real parser

def compose_command() -> list[str]:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("needs a compose parser: apt-get install docker-compose")
    return [exe]


def run_compose_config(
    env: dict[str, str], tmp_path: Path, text: str | None = None
) -> subprocess.CompletedProcess:
    """`docker-compose config` on our file (or `text`), with exactly `env` and no .env file.

    The legacy docker-compose 1.29 validates against the compose spec of 2021, which predates
    the top-level `name`: that one line goes, the project name is passed with -p instead, and
    everything else is parsed as written (from stdin, with the repository as working folder so
    that build contexts resolve as they would).
    """
    text = COMPOSE_FILE.read_text() if text is None else text
    project = raw_compose()["name"]
    stripped, n = re.subn(r"(?m)^name:.*\n", "", text)
    assert n == 1
    empty_env_file = tmp_path / "empty.env"
    empty_env_file.write_text("")
    base_env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}
    return subprocess.run(
        [*compose_command(), "--env-file", str(empty_env_file), "-p", project, "-f", "-",
         "config"],
        input=stripped, cwd=ROOT, env={**base_env, **env},
        capture_output=True, text=True, timeout=60,
    )


def resolve(tmp_path: Path, **extra: str) -> dict:
    proc = run_compose_config({**SECRET_VALUES, **extra}, tmp_path)
    assert proc.returncode == 0, proc.stderr
    return yaml.safe_load(proc.stdout)


@pytest.fixture(scope="module")
def resolved(tmp_path_factory) -> dict:
    return resolve(tmp_path_factory.mktemp("compose"))


def published(port) -> tuple[str, str, str]:
    """(host_ip, published, target) from the short or the long port syntax."""
    if isinstance(port, dict):
        return (port.get("host_ip", ""), str(port.get("published", "")), str(port["target"]))
    parts = str(port).split("/")[0].rsplit(":", 2)
    if len(parts) == 3:
        return parts[0], parts[1], parts[2]
    if len(parts) == 2:
        return "", parts[0], parts[1]
    return "", "", parts[0]


def mounts(service: dict) -> dict[str, str]:
    """{container path: volume or host path} from the short or the long volume syntax."""
    out = {}
    for volume in service.get("volumes", ()):
        if isinstance(volume, dict):
            out[volume["target"]] = volume.get("source", "")
        else:
            source, target = str(volume).split(":")[:2]
            out[target] = source
    return out


def seconds(duration) -> float:
    if isinstance(duration, (int, float)):
        return float(duration)
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    total = 0.0
    for value, unit in re.findall(r"([\d.]+)(ms|h|m|s)", str(duration)):
        total += float(value) * units[unit]
    return total


@pytest.mark.parametrize("missing", SECRETS)
def test_a_missing_password_stops_compose_with_its_name(missing, tmp_path):
    env = {k: v for k, v in SECRET_VALUES.items() if k != missing}
    proc = run_compose_config(env, tmp_path)
    assert proc.returncode != 0
    assert f"set {missing}" in proc.stderr, proc.stderr


BREAKAGES = [  # (what the file says, a mistake, what the parser must complain about)
    ("stop_grace_period:", "stop_grace_periodd:", "stop_grace_periodd"),
    ("service_completed_successfully", "service_completed_succesfully", "service_completed_succesfully"),
    ("capabilities: [gpu]", "capabilities: gpu", "capabilities"),
]


def test_the_parser_rejects_a_broken_file(tmp_path):
    # The assertions below are only worth something if the parser is strict: prove it is.
    text = COMPOSE_FILE.read_text()
    for before, after, _ in BREAKAGES:
        assert before in text
        text = text.replace(before, after)
    proc = run_compose_config(dict(SECRET_VALUES), tmp_path, text)
    assert proc.returncode != 0
    for _, _, complaint in BREAKAGES:
        assert complaint in proc.stderr, proc.stderr


def test_services_and_profiles(resolved):
    services = resolved["services"]
    assert set(services) == ALL_SERVICES
    profiles = {name: tuple(svc.get("profiles", ())) for name, svc in services.items()}
    assert profiles["flower"] == ("monitoring",)
    assert profiles["cli"] == ("cli",)
    # `docker compose up` starts the servers, the migration, workers and beat.
    for name in ("redis", "postgres", "migrate", "worker", "beat"):
        assert profiles[name] == (), name


def test_passwords_and_addresses_reach_every_cifarq_process(resolved):
    pg, rd = SECRET_VALUES["POSTGRES_PASSWORD"], SECRET_VALUES["REDIS_PASSWORD"]
    for name in ("migrate", "worker", "beat", "flower", "cli"):
        env = resolved["services"][name]["environment"]
        assert env["CIFARQ_DATABASE_URL"] == (
            f"postgresql+psycopg://cifarq:{pg}@postgres:5432/cifarq"
        ), name
        assert env["CIFARQ_BROKER_URL"] == f"redis://:{rd}@redis:6379/0", name
        assert env["CIFARQ_DATA_DIR"] == "/data"
        assert env["CIFARQ_ARTIFACTS_DIR"] == "/artifacts"
        assert env["CIFARQ_HOME"]
    assert resolved["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"] == pg
    assert resolved["services"]["redis"]["environment"]["REDISCLI_AUTH"] == rd


def test_other_hosts_can_reach_the_main_one(tmp_path):
    # Workers on a second host point at the main host; the main host publishes on a private
    # address instead of loopback.
    config = resolve(
        tmp_path, CIFARQ_POSTGRES_ADDR="10.1.2.3:5432", CIFARQ_REDIS_ADDR="10.1.2.3:6379",
        CIFARQ_REDIS_PUBLISH="10.1.2.3:6379", CIFARQ_POSTGRES_PUBLISH="10.1.2.3:5432",
    )
    env = config["services"]["worker"]["environment"]
    assert "@10.1.2.3:5432/cifarq" in env["CIFARQ_DATABASE_URL"]
    assert "@10.1.2.3:6379/0" in env["CIFARQ_BROKER_URL"]
    assert [published(p) for p in config["services"]["redis"]["ports"]] == [
        ("10.1.2.3", "6379", "6379")
    ]
    assert [published(p) for p in config["services"]["postgres"]["ports"]] == [
        ("10.1.2.3", "5432", "5432")
    ]


def test_nothing_is_published_beyond_loopback_by_default(resolved):
    for name, svc in resolved["services"].items():
        for port in svc.get("ports", ()):
            host_ip, _, _ = published(port)
            assert host_ip == "127.0.0.1", f"{name} publishes {port} beyond loopback"
    ports = {name: [published(p) for p in svc.get("ports", ())]
             for name, svc in resolved["services"].items()}
    assert ports["redis"] == [("127.0.0.1", "6379", "6379")]
    assert ports["postgres"] == [("127.0.0.1", "5432", "5432")]


def test_redis_persists_and_requires_its_password(resolved):
    # The command stays unresolved: redis reads the password from its own environment.
    redis = resolved["services"]["redis"]
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command
    assert "--requirepass" in command
    assert SECRET_VALUES["REDIS_PASSWORD"] not in command, "the password belongs in the env"
    assert mounts(redis)["/data"] in resolved["volumes"]
    assert "redis-cli" in " ".join(redis["healthcheck"]["test"])


def test_postgres_keeps_its_data_in_a_named_volume(resolved):
    pg = resolved["services"]["postgres"]
    assert mounts(pg)["/var/lib/postgresql/data"] in resolved["volumes"]
    assert "pg_isready" in pg["healthcheck"]["test"]


def test_migrate_runs_once_before_everything_that_uses_the_records(resolved):
    services = resolved["services"]
    migrate = services["migrate"]
    assert migrate["command"] == ["db", "upgrade"]
    assert str(migrate.get("restart", "no")).lower() in ("no", "false")
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in NEEDS_BACKENDS:
        deps = services[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully", name
        assert deps["redis"]["condition"] == "service_healthy", name
        assert deps["postgres"]["condition"] == "service_healthy", name


def test_every_healthy_condition_has_a_healthcheck(resolved):
    services = resolved["services"]
    for name, svc in services.items():
        for dep, spec in (svc.get("depends_on") or {}).items():
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits on {dep}'s health"


def test_worker_gets_gpus_volumes_and_time_to_hand_its_job_back(resolved):
    worker = resolved["services"]["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert len(devices) == 1
    assert devices[0]["driver"] == "nvidia"
    assert "gpu" in devices[0]["capabilities"]
    # All GPUs of the host to every replica: the worker leases one itself (--gpu auto).
    assert devices[0]["count"] in ("all", -1)  # compose v2 prints `all` as -1
    assert worker["command"][:3] == ["worker", "--gpu", "auto"]
    assert mounts(worker)["/data"] in resolved["volumes"]
    assert mounts(worker)["/artifacts"] in resolved["volumes"]
    assert worker["stop_signal"] == "SIGTERM"
    assert seconds(worker["stop_grace_period"]) >= 60
    assert worker.get("init") is True, "an init as PID 1 passes SIGTERM on and reaps children"


def test_cli_service_is_the_light_client(resolved):
    cli = resolved["services"]["cli"]
    assert cli["entrypoint"] == ["cifarq"]
    assert cli["build"]["dockerfile"] == "docker/cli.Dockerfile"
    assert cli["build"]["target"] == "client"
    assert "deploy" not in cli, "the client needs no GPU"


# ------------------------------------------------------------------------------ Dockerfiles

def built_services() -> dict[str, dict]:
    """Services with a build section, from the raw file (anchors resolved by YAML)."""
    return {name: svc for name, svc in raw_compose()["services"].items() if "build" in svc}


def parse_dockerfile(path: Path) -> list:
    return list(dockerfile.parse_file(str(path)))


def stages(commands: list) -> dict[str, list]:
    """Commands of each stage by name (unnamed stages by index), FROM included."""
    out: dict[str, list] = {}
    current: list = []
    n = 0
    for cmd in commands:
        if cmd.cmd == "FROM":
            value = cmd.value
            name = value[2] if len(value) >= 3 and value[1].upper() == "AS" else str(n)
            n += 1
            current = []
            out[name] = current
        current.append(cmd)
    return out


def stage_chain(all_stages: dict[str, list], target: str) -> list:
    """The commands that make `target`, following FROM <earlier stage> back to a base image."""
    commands = all_stages[target]
    base = commands[0].value[0]
    if base in all_stages:
        return stage_chain(all_stages, base) + commands[1:]
    return commands


def image_for(service: str) -> tuple[Path, list]:
    build = built_services()[service]["build"]
    context = ROOT / build.get("context", ".")
    path = context / build.get("dockerfile", "Dockerfile")
    all_stages = stages(parse_dockerfile(path))
    target = build.get("target", list(all_stages)[-1])
    return context, stage_chain(all_stages, target)


def shell_of(cmd) -> str:
    return " ".join(cmd.value)


def pip_installs(chain: list) -> list[str]:
    return [shell_of(c) for c in chain if c.cmd == "RUN" and "pip install" in shell_of(c)]


def requirements_from_dockerfile(chain: list) -> list[str]:
    """Run the Dockerfile's own `python -c` that turns pyproject.toml into requirements."""
    runs = [shell_of(c) for c in chain if c.cmd == "RUN" and "tomllib" in shell_of(c)]
    assert len(runs) == 1, "one RUN reads the requirements from pyproject.toml"
    words = shlex.split(runs[0].split(">")[0])
    code = words[words.index("-c") + 1]
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def requirement_name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower()


def test_every_build_points_at_an_existing_dockerfile_and_stage():
    assert set(built_services()) == {"migrate", "worker", "beat", "flower", "cli"}
    for name, svc in built_services().items():
        build = svc["build"]
        path = ROOT / build.get("context", ".") / build["dockerfile"]
        assert path.is_file(), f"{name}: {path} is missing"
        if "target" in build:
            assert build["target"] in stages(parse_dockerfile(path)), name


def test_services_sharing_an_image_name_build_the_same_thing():
    by_image: dict[str, dict] = {}
    for name, svc in built_services().items():
        first = by_image.setdefault(svc["image"], svc["build"])
        assert first == svc["build"], f"{name} builds {svc['image']} differently"


@pytest.mark.parametrize("service", ["worker", "cli", "flower"])
def test_copy_sources_exist_and_pass_dockerignore(service):
    context, chain = image_for(service)
    for cmd in chain:
        if cmd.cmd in ("COPY", "ADD"):
            assert not any(f.startswith("--from") for f in cmd.flags)
            for source in cmd.value[:-1]:
                assert (context / source).exists(), f"COPY {source}: not in the repository"
                assert not dockerignored(source), f"COPY {source}: .dockerignore drops it"


@pytest.mark.parametrize("service", ["worker", "cli"])
def test_files_the_build_reads_are_copied_before_the_project_install(service):
    _, chain = image_for(service)
    project_install = next(
        i for i, c in enumerate(chain)
        if c.cmd == "RUN" and re.search(r"pip install '?\.(\[|'|\s|$)", shell_of(c))
    )
    copied = {source for c in chain[:project_install] if c.cmd == "COPY" for source in c.value[:-1]}
    needed = {"pyproject.toml", "shared", "worker", "api_cli"}
    if PYPROJECT["project"].get("readme"):
        needed.add(PYPROJECT["project"]["readme"])  # setuptools reads it while building
    assert needed <= copied, f"missing before `pip install .`: {sorted(needed - copied)}"


@pytest.mark.parametrize("service", ["worker", "cli"])
def test_dependencies_are_installed_before_the_source_is_copied(service):
    _, chain = image_for(service)
    kinds = [(c.cmd, c.value) for c in chain]
    first_copy = next(i for i, (cmd, _) in enumerate(kinds) if cmd == "COPY")
    # Only pyproject.toml: a README or source change must not reinstall torch.
    assert kinds[first_copy][1][:-1] == ("pyproject.toml",)
    deps_install = next(i for i, c in enumerate(chain)
                        if c.cmd == "RUN" and "pip install -r" in shell_of(c))
    source_copies = [i for i, (cmd, value) in enumerate(kinds)
                     if cmd == "COPY" and {"shared", "worker", "api_cli"} & set(value[:-1])]
    assert source_copies and first_copy < deps_install < min(source_copies)


def test_worker_image_installs_the_worker_extra():
    _, chain = image_for("worker")
    requirements = requirements_from_dockerfile(chain)
    project = PYPROJECT["project"]
    assert requirements == project["dependencies"] + project["optional-dependencies"]["worker"]
    assert "torch" in {requirement_name(r) for r in requirements}
    assert any(".[worker]" in line for line in pip_installs(chain))


@pytest.mark.parametrize("service", ["cli", "flower", "migrate", "beat"])
def test_client_images_have_no_torch(service):
    _, chain = image_for(service)
    requirements = requirements_from_dockerfile(chain)
    assert requirements == PYPROJECT["project"]["dependencies"]
    names = {requirement_name(r) for r in requirements}
    assert not names & {"torch", "torchvision"}
    for line in pip_installs(chain):
        assert "[worker]" not in line and "torch" not in line, line


def entrypoint_of(chain: list) -> list[str]:
    entry = [c for c in chain if c.cmd == "ENTRYPOINT"]
    assert entry and entry[-1].json, "an exec-form ENTRYPOINT, so that signals reach it"
    return list(entry[-1].value)


@pytest.mark.parametrize("service", sorted({"migrate", "worker", "beat", "flower", "cli"}))
def test_entrypoints_are_installed_console_scripts(service):
    svc = built_services()[service]
    _, chain = image_for(service)
    entrypoint = svc.get("entrypoint") or entrypoint_of(chain)
    program = entrypoint[0]
    scripts = set(PYPROJECT["project"]["scripts"])
    # celery's own console script comes with the celery dependency.
    from_dependencies = {"celery"} if any(
        requirement_name(r) == "celery" for r in PYPROJECT["project"]["dependencies"]
    ) else set()
    assert program in scripts | from_dependencies, f"{service} starts {program!r}"


@pytest.mark.parametrize("service", ["worker", "cli", "flower"])
def test_images_run_as_a_non_root_user(service):
    _, chain = image_for(service)
    users = [c.value[0] for c in chain if c.cmd == "USER"]
    assert users, "no USER: the image would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    assert user == "10001", "a numeric uid, the one that owns /data and /artifacts"
    runs = " ".join(shell_of(c) for c in chain if c.cmd == "RUN")
    assert "--uid 10001" in runs


def test_worker_image_gives_data_and_artifacts_to_its_user():
    _, chain = image_for("worker")
    runs = " ".join(shell_of(c) for c in chain if c.cmd == "RUN")
    assert re.search(r"chown \S*cifarq\S* /data /artifacts", runs)


@pytest.mark.parametrize("path", sorted((ROOT / "docker").glob("*Dockerfile")),
                         ids=lambda p: p.name)
def test_no_secret_is_baked_into_an_image(path):
    for cmd in parse_dockerfile(path):
        if cmd.cmd in ("ENV", "ARG", "LABEL"):
            text = " ".join(cmd.value)
            assert not re.search(r"PASSWORD|SECRET|TOKEN", text, re.I), cmd.original
            assert not re.search(r"://[^/\s]*:[^/\s]*@", text), cmd.original
        assert "CIFARQ_DATABASE_URL" not in cmd.original
        assert "CIFARQ_BROKER_URL" not in cmd.original


# ---------------------------------------------------------------------------- .dockerignore

def dockerignore_patterns() -> list[tuple[bool, re.Pattern]]:
    out = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:] if negate else line
        pattern = os.path.normpath(pattern.strip("/"))
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex += "(.*/)?"
                i += 3
            elif pattern.startswith("**", i):
                regex += ".*"
                i += 2
            elif pattern[i] == "*":
                regex += "[^/]*"
                i += 1
            elif pattern[i] == "?":
                regex += "[^/]"
                i += 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                regex += pattern[i:end + 1]
                i = end + 1
            else:
                regex += re.escape(pattern[i])
                i += 1
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
     "worker/ckpt.pt", "api_cli/.env", "cifarq.egg-info/PKG-INFO", "bench/run.py"],
)
def test_dockerignore_keeps_out(path):
    assert dockerignored(path)


def test_dockerignore_keeps_every_package_file():
    files = ["pyproject.toml", "README.md"]
    for package in ("shared", "worker", "api_cli"):
        for p in (ROOT / package).rglob("*"):
            if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc",):
                files.append(str(p.relative_to(ROOT)))
    kept_out = [f for f in files if dockerignored(f)]
    assert not kept_out


# ------------------------------------------------------------- the commands the images run

# Runs in a fresh interpreter: each command line as the container would run it, with --help
# added. Click handles --help before running anything, but only after every word before it
# parsed, so an unknown subcommand or option fails here as it would in the container. Then the
# app that `celery -A` names is looked up the way Celery does, and must come without torch.
PROBE = """
import contextlib, io, json, sys
from api_cli.main import main
commands, targets = json.loads(sys.argv[1]), json.loads(sys.argv[2])
codes = {}
for args in commands:
    sys.argv = ["cifarq", *args, "--help"]
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            main()
        codes[" ".join(args)] = [0, ""]
    except SystemExit as exc:
        codes[" ".join(args)] = [exc.code or 0, out.getvalue()[-500:]]
from celery import Celery
from celery.app.utils import find_app
apps = {target: isinstance(find_app(target), Celery) for target in targets}
print(json.dumps({"codes": codes, "apps": apps, "torch": "torch" in sys.modules}))
"""


def test_commands_that_compose_runs_exist(tmp_path):
    if not (ROOT / "api_cli" / "main.py").is_file():
        pytest.skip("api_cli/main.py is not written yet")
    services = built_services()
    cifarq_commands, celery_apps = [], []
    for name, svc in services.items():
        _, chain = image_for(name)
        entrypoint = svc.get("entrypoint") or entrypoint_of(chain)
        command = svc.get("command") or []
        if entrypoint[0] == "cifarq":
            cifarq_commands.append(command)
        elif entrypoint[0] == "celery":
            celery_apps.append((entrypoint + command)[(entrypoint + command).index("-A") + 1])
    assert ["db", "upgrade"] in cifarq_commands and celery_apps
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(cifarq_commands), json.dumps(celery_apps)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "CIFARQ_HOME": str(tmp_path)},
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    for command, (code, output) in report["codes"].items():
        assert code == 0, f"cifarq {command} --help: {output}"
    for target, is_app in report["apps"].items():
        assert is_app, f"celery -A {target}: not a Celery app"
    assert not report["torch"], "the client image has no torch: the CLI must not import it"

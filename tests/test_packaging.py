"""What the packaging promises and nothing else checks: the dependency floors the code needs,
and a Celery configuration that names only tasks that exist."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def floor(requirement_name: str) -> tuple[int, ...]:
    (requirement,) = [r for r in PROJECT["dependencies"] if re.match(rf"{requirement_name}\b", r)]
    return tuple(int(part) for part in re.search(r">=([\d.]+)", requirement).group(1).split("."))


def test_typer_floor_has_what_the_cli_imports():
    # api_cli/main.py catches typer.exceptions.TyperException, which came with typer 0.29.
    assert "from typer.exceptions import" in (REPO / "api_cli" / "main.py").read_text()
    assert floor("typer") >= (0, 29)


def test_the_celery_config_names_only_registered_tasks():
    from worker.tasks import app

    registered = set(app.tasks)
    scheduled = {entry["task"] for entry in (app.conf.beat_schedule or {}).values()}
    routed = set(app.conf.task_routes or {})
    assert scheduled <= registered and routed <= registered
    assert "cifarq.run_job" in registered


def test_the_client_image_carries_no_worker_code():
    dockerfile = (REPO / "docker" / "cli.Dockerfile").read_text()
    copied = re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile, re.M)
    assert not any("worker" in sources.split() for sources in copied), copied

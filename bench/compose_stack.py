"""The containers as an operator meets them: image sizes, build times, `up` to healthy, and a
job's way through the containers.

usage: python bench/compose_stack.py [--jobs 5] [--rows build,tiny-jobs,real-job] [--data DIR] [--epochs 2]
                                    [--out FILE.json]

Runs on the CPU variant of the stack (docker-compose.cpu.yml), built from the stand-in base
images (docker/base-images/build.sh) and the wheelhouse (docker/wheelhouse.sh), both made first
if missing, in a copy of the checkout under a temporary folder and a compose project of its own
(`cifarqbench`), which it removes at the end, volumes included.

- build, cold: `docker compose build --no-cache` of every image (pip from the wheelhouse, so no
  download is timed); cached, nothing changed; cached after a one-line change in shared/;
- sizes: `docker image inspect`, uncompressed, as `docker images` shows them;
- `up -d --wait` to healthy (2 workers), from no containers and no volumes;
- a tiny job (200 images, 1 epoch): `docker compose run --rm cli submit` wall time, then
  queue-to-start (the job row's started_at - created_at) and submit to succeeded, --jobs times;
- `docker compose run --rm --no-deps cli status ID` wall time, --jobs times;
- "real-job" (not by default: ~3 minutes): the real CIFAR-10 (--data, laid out from
  ../shared/datasets when absent) copied into a new stack, and `submit train --epochs N` as the
  first job of its new worker containers, then the same job again, each from the job row's
  created_at to its finished_at; the tutorial's script on the host in the same run
  (bench/end_to_end.py's tutorial row); and what the workers' warm-ups and the jobs' logs said.
"""
from __future__ import annotations

import argparse
import json
import re
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.common import machine, real_cifar10, write_results  # noqa: E402
from tests.compose_stack import (Stack, build_base_images, cifar_archive, copy_checkout,  # noqa: E402
                                 fill_wheelhouse, write_env_file)

IMAGES = ("cifarq-cli", "cifarq-flower", "cifarq-worker")


def timed(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5)
    parser.add_argument("--rows", default="build,tiny-jobs", help="of build, tiny-jobs, real-job")
    parser.add_argument("--data", type=Path, default=Path("bench/data"), help="real CIFAR-10, for real-job")
    parser.add_argument("--epochs", type=int, default=2, help="of the real job")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rows = args.rows.split(",")
    if unknown := set(rows) - {"build", "tiny-jobs", "real-job"}:
        sys.exit(f"unknown rows: {', '.join(sorted(unknown))}")
    if {"real-job", "tiny-jobs"} <= set(rows):  # one CIFAR-10 per stack: the first archive's stays extracted
        sys.exit("real-job and tiny-jobs need a stack each: run them apart")
    docker = shutil.which("docker") or sys.exit("no docker command")

    figures: dict = {"machine": machine(), "date": datetime.now().isoformat(timespec="seconds")}
    base_images = build_base_images(docker)
    fill_wheelhouse(docker, base_images["CIFARQ_PYTHON_IMAGE"])
    with tempfile.TemporaryDirectory(prefix="cifarq-bench-") as tmp:
        folder = Path(tmp)
        checkout = copy_checkout(folder / "checkout", wheelhouse=True)
        values = {"POSTGRES_PASSWORD": secrets.token_hex(16), "REDIS_PASSWORD": secrets.token_hex(16),
                  **base_images, "CIFARQ_TAG": "bench"}
        env_file = folder / "bench.env"
        write_env_file(env_file, values)
        stack = Stack(docker, "cifarqbench", env_file, values, root=checkout)
        everything = ["--profile", "monitoring", "--profile", "cli", "down", "-v", "--remove-orphans"]
        stack.compose(*everything, check=False)
        build = ["--profile", "monitoring", "--profile", "cli", "build"]
        try:
            if "build" in rows:
                figures["build_cold_s"] = timed(lambda: stack.compose(*build, "--no-cache"))
                figures["build_cached_s"] = timed(lambda: stack.compose(*build))
                with open(checkout / "shared" / "__init__.py", "a") as f:
                    f.write("# a change\n")
                figures["build_after_source_change_s"] = timed(lambda: stack.compose(*build))
            else:
                stack.compose(*build)
            figures["image_mb"] = {
                image: int(stack.docker_cmd("image", "inspect", "-f", "{{.Size}}", f"{image}:bench").stdout) / 1e6
                for image in IMAGES}

            figures["up_to_healthy_s"] = timed(lambda: stack.compose(
                "up", "-d", "--scale", "worker=2", "--wait", "--wait-timeout", "300"))
            if "real-job" in rows:
                figures["real_job"] = real_job(stack, real_cifar10(args.data), folder, args.epochs)
            if "tiny-jobs" in rows:
                figures.update(tiny_jobs(stack, folder, args.jobs))
        finally:
            stack.compose(*everything, check=False)
            for image in IMAGES:
                stack.docker_cmd("rmi", f"{image}:bench", check=False)

    print(json.dumps(figures, indent=2))
    if args.out:
        write_results(args.out, figures)


def tiny_jobs(stack: Stack, folder: Path, jobs: int) -> dict:
    """--jobs tiny jobs (200 images, 1 epoch) through the containers, one after another."""
    stack.copy_data_in(cifar_archive(folder / "data", test=100))

    submit_s, queue_to_start_s, to_succeeded_s, status_s = [], [], [], []
    for _ in range(jobs):
        started = time.perf_counter()
        job_id = json.loads(stack.cli("submit", "train", "--epochs", "1", "--json").stdout)["id"]
        submit_s.append(time.perf_counter() - started)
        status = stack.wait_for(job_id, lambda s: s["status"] == "succeeded", what="succeeded")
        to_succeeded_s.append(time.perf_counter() - started)
        queue_to_start_s.append((datetime.fromisoformat(status["started_at"])
                                 - datetime.fromisoformat(status["created_at"])).total_seconds())
        status_s.append(timed(lambda: stack.cli("status", job_id)))
    median = statistics.median
    return dict(jobs=jobs, submit_wall_s=median(submit_s), queue_to_start_s=median(queue_to_start_s),
                submit_to_succeeded_s=median(to_succeeded_s), status_wall_s=median(status_s))


def real_job(stack: Stack, data: Path, folder: Path, epochs: int) -> dict:
    """The first job of new worker containers on the real CIFAR-10, the same job again, and the
    tutorial's script on the host, in this run."""
    import tarfile

    from bench.end_to_end import tutorial_row

    archive = folder / "real" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
        tar.add(data / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    archive.chmod(0o644)
    stack.copy_data_in(archive)
    result: dict = {"epochs": epochs, "workers_warm_ups": stack.worker_warm_ups(2)}
    for name in ("first", "second"):
        job_id = stack.submit("--epochs", str(epochs))
        status = stack.finish(job_id)
        assert status["status"] == "succeeded", status
        log = stack.cli("logs", job_id).stdout
        result[name] = {
            "seconds": (datetime.fromisoformat(status["finished_at"])
                        - datetime.fromisoformat(status["created_at"])).total_seconds(),
            "accuracy": status["metrics"]["test_accuracy"],
            "log": [line for line in log.splitlines() if re.search(r"step compiled|runs eagerly|images/s", line)]}
    result["tutorial"] = tutorial_row(data, epochs, "cpu")
    for name in ("first", "second"):
        result[name]["x_tutorial"] = round(result["tutorial"]["seconds"] / result[name]["seconds"], 2)
    return result


if __name__ == "__main__":
    main()

"""What a job ran with: the record each attempt writes on the job's row (`Job.provenance`), and
how `status`, `compare` and `report` show it. No torch here: the worker passes torch's versions in.

    {"cifarq": "0.1.0", "git_commit": "8d18582-dirty",   # None when not run from a git checkout
     "python": "3.11.7", "torch": "2.5.1+cpu", "cuda": None,   # torch.version.cuda: None on a CPU build
     "device": "cpu",                                      # or "cuda:0 (NVIDIA H200)"
     "data": {"sha256": "…", "files": ["batches.meta", "data_batch_1", …, "test_batch"]}}

The data digest is the sha256 of sha256sum's own output over the files the job read, in name
order, so anyone can check a copy of the data against a job without cifarq. In
cifar-10-batches-py/, a train job's is `sha256sum batches.meta data_batch_? test_batch | sha256sum`
and an evaluate job's `sha256sum batches.meta test_batch | sha256sum`.
"""
from __future__ import annotations

import functools
import hashlib
import platform
import subprocess
from pathlib import Path
from typing import Any, Optional

# The package root: the checkout's top when cifarq runs from a git checkout.
_ROOT = Path(__file__).resolve().parents[1]
GIT_TIMEOUT_SECONDS = 5.0


def collect(*, torch_version: str, cuda: Optional[str], device: str, data_folder: Path,
            data_files: list[str]) -> dict[str, Any]:
    cifarq, git_commit = code_version()
    files = sorted(data_files)
    return {"cifarq": cifarq, "git_commit": git_commit, "python": platform.python_version(),
            "torch": torch_version, "cuda": cuda, "device": device,
            "data": {"sha256": data_digest(data_folder, files), "files": files}}


@functools.cache
def code_version() -> tuple[str, Optional[str]]:
    """(cifarq's version, the git commit): once per process, since a process runs the code it
    imported when it started, whatever the checkout holds later."""
    # Here, not at the top: the client imports this module for provenance_rows, and
    # importlib.metadata is 10 ms of `cifarq status`.
    from importlib.metadata import PackageNotFoundError, version

    try:
        installed = version("cifarq")
    except PackageNotFoundError:
        installed = "unknown"
    return installed, _git_commit(_ROOT)


def _git_commit(root: Path) -> Optional[str]:
    """The short commit, with "-dirty" when tracked files differ from it (untracked files are
    not counted, as with `git describe --dirty`), or "?" appended when that could not be told.
    None when the code is not a checkout's own: an installed wheel, a container image, or a
    site-packages that merely lies inside some repository (a venv in a checkout)."""
    def git(*args: str) -> str:
        # --no-optional-locks: never take the index lock from under someone working in the checkout.
        return subprocess.run(["git", "--no-optional-locks", "-C", str(root), *args], capture_output=True,
                              text=True, timeout=GIT_TIMEOUT_SECONDS, check=True).stdout.strip()

    try:
        top, commit = git("rev-parse", "--show-toplevel", "--short", "HEAD").splitlines()
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    if Path(top).resolve() != root:
        return None
    try:
        return commit + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.SubprocessError):
        return commit + "?"


# sha256 of each file by (path, size, mtime): a worker process hashes its data set once, not per
# job. Measured on the real CIFAR-10 (185 MB, 7 files, in the page cache) on this project's
# 2-core machine (a CPU with SHA extensions): 0.13 s for a train job's files, 0.02 s for an
# evaluate job's. A CPU worker's process runs up to 100 jobs; a GPU job gets a fresh process
# (worker/launcher.py) and so pays it each time, small beside starting CUDA.
_file_digests: dict[tuple[str, int, int], str] = {}


def data_digest(folder: Path, files: list[str]) -> str:
    lines = []
    for name in sorted(files):
        path = folder / name
        stat = path.stat()
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        if key not in _file_digests:
            with open(path, "rb") as file:
                _file_digests[key] = hashlib.file_digest(file, "sha256").hexdigest()
        lines.append(f"{_file_digests[key]}  {name}\n")  # one line of sha256sum's output
    return hashlib.sha256("".join(lines).encode()).hexdigest()


# -- how it is shown

def provenance_rows(provenance: Optional[dict[str, Any]], *, short: bool = True,
                    device: bool = True) -> list[tuple[str, str]]:
    """(label, value) rows for `status`, `compare` and the report; none for a job no worker has
    started (or one run before cifarq recorded provenance). `short` cuts the digest to 12 digits;
    `device=False` leaves out the device, for a view that shows the job's own already."""
    if not provenance:
        return []
    git = provenance.get("git_commit")
    data = provenance.get("data") or {}
    digest, files = data.get("sha256") or "-", data.get("files") or []
    if short:
        data_text = f"sha256 {digest[:12]}… ({len(files)} files)"
    else:
        data_text = f"sha256 {digest} of {', '.join(files)}"
    rows = [("cifarq", provenance.get("cifarq", "unknown") + (f" (git {git})" if git else "")),
            ("python", provenance.get("python") or "-"),
            ("torch", f"{provenance.get('torch') or '-'} (CUDA {provenance.get('cuda') or 'none'})"),
            ("data", data_text)]
    if device:
        rows.insert(3, ("ran on", provenance.get("device") or "-"))
    return rows

"""Checks on a weights file that a client can make without torch, before anything is queued.

The worker loads it weights-only in any case; these checks only turn the common mistakes into a
clear error at submit time.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

from shared.errors import CifarqError

MAX_WEIGHTS_BYTES = 256 * 1024 * 1024


def read_weights_file(path: Path) -> bytes:
    """The checks a client can make without torch; the worker loads it weights-only."""
    if not path.is_file():
        raise CifarqError(f"weights file {path} does not exist")
    size = path.stat().st_size
    if size == 0 or size > MAX_WEIGHTS_BYTES:
        raise CifarqError(f"weights file {path} is {size} bytes: not a state dict of the tutorial's Net")
    if not zipfile.is_zipfile(path):
        raise CifarqError(f"weights file {path} is not a file written by torch.save (not a zip archive)")
    with zipfile.ZipFile(path) as archive:
        bad = archive.testzip()
        if bad is not None or not any(name.endswith("/data.pkl") for name in archive.namelist()):
            raise CifarqError(f"weights file {path} is truncated or not written by torch.save")
    return path.read_bytes()

"""Reading checkpoints back: hash checked first, then a weights-only load (no pickled code runs).

A missing or corrupt checkpoint is an error with a clear message, never a silent fresh start.
"""
from __future__ import annotations

import io

import torch
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.errors import CifarqError
from shared.jobs import find_checkpoint
from shared.jobspec import EvaluateConfig
from shared.models import Checkpoint
from worker.model import model_from_state_dict
from worker.records import sha256
from worker.train import Resume


class CheckpointError(CifarqError):
    pass


def load_bytes(data: bytes, *, expected_sha256: str | None, what: str) -> dict:
    if expected_sha256 is not None and sha256(data) != expected_sha256:
        raise CheckpointError(f"{what} is corrupt: its sha256 does not match the stored hash")
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{what} cannot be loaded weights-only: {first_line}") from exc
    if not isinstance(obj, dict):
        raise CheckpointError(f"{what} is not a state dict (it holds a {type(obj).__name__})")
    return obj


def load_resume(checkpoint: Checkpoint) -> Resume:
    what = f"checkpoint {checkpoint.id} (job {checkpoint.job_id}, epoch {checkpoint.epoch})"
    if checkpoint.train_state is None:
        raise CheckpointError(f"{what} has no training state to resume from")
    model_state = load_bytes(checkpoint.weights, expected_sha256=checkpoint.sha256, what=what)
    state = load_bytes(checkpoint.train_state, expected_sha256=checkpoint.train_state_sha256, what=what)
    return Resume(model_state=model_state, optimizer_state=state["optimizer"], epochs_done=int(state["epochs_done"]))


def load_weights_for_evaluation(*, session: Session, job_id: str, config: EvaluateConfig) -> tuple[torch.nn.Module, int, str]:
    """The model an evaluate job tests: a train job's checkpoint, or the state dict uploaded with it."""
    if config.source_job is not None:
        checkpoint = find_checkpoint(session=session, job_id=config.source_job, epoch=config.source_epoch)
        what = f"checkpoint of job {checkpoint.job_id} after epoch {checkpoint.epoch}"
    else:
        checkpoint = session.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id)).first()
        if checkpoint is None:
            raise CheckpointError(f"evaluate job {job_id} has no uploaded weights")
        what = f"uploaded weights {config.weights_file or ''}".strip()
    state_dict = load_bytes(checkpoint.weights, expected_sha256=checkpoint.sha256, what=what)
    try:
        model = model_from_state_dict(state_dict, recipe=(checkpoint.config or {}).get("recipe", "tutorial"))
    except ValueError as exc:
        raise CheckpointError(f"{what} does not fit cifarq's Net: {exc}") from exc
    return model, checkpoint.id, what

"""Reading checkpoints back: hash checked first, then a weights-only load (no pickled code runs).

A missing or corrupt checkpoint is an error with a clear message, never a silent fresh start.
"""
from __future__ import annotations

import hashlib
import io

import torch
from sqlalchemy.orm import Session

from shared.errors import CifarqError, first_line
from shared.jobs import find_checkpoint, latest_checkpoint
from shared.jobspec import EvaluateConfig
from shared.models import Checkpoint
from worker.loop import Resume
from worker.model import model_from_state_dict


class CheckpointError(CifarqError):
    pass


def load_bytes(data: bytes, *, expected_sha256: str | None, what: str) -> dict:
    if expected_sha256 is not None and hashlib.sha256(data).hexdigest() != expected_sha256:
        raise CheckpointError(f"{what} is corrupt: its sha256 does not match the stored hash")
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{what} cannot be loaded weights-only: {first_line(exc)}") from exc
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
        checkpoint = latest_checkpoint(session=session, job_id=job_id)  # the one uploaded with it
        if checkpoint is None:
            raise CheckpointError(f"evaluate job {job_id} has no uploaded weights")
        what = f"uploaded weights {config.weights_file or ''}".strip()
    state_dict = load_bytes(checkpoint.weights, expected_sha256=checkpoint.sha256, what=what)
    trained_with = checkpoint.config or {}  # the train job's config, saved with its checkpoint
    recipe = trained_with.get("recipe", "tutorial")
    try:
        # Evaluated as its own job evaluated it: the same test-time augmentation.
        model = model_from_state_dict(state_dict, recipe=recipe, tta_level=trained_with.get("tta_level"))
    except ValueError as exc:
        network = "the fast recipe's network" if recipe == "fast" else "cifarq's Net"
        raise CheckpointError(f"{what} does not fit {network}: {exc}") from exc
    return model, checkpoint.id, what

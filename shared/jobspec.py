"""One config object per job: validated before any row is written, stored as JSON on the
job row and inside every checkpoint, and read back by the worker."""
from __future__ import annotations

import re
from typing import Literal, Optional

from pydantic import (BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator,
                      model_serializer, model_validator)

from shared.errors import CifarqError
from shared.recipes import (DEFAULT_RECIPE, DEFAULT_SEED, FAST_ONLY, MAX_CHECKPOINT_BYTES, RECIPE_DEFAULTS,
                            checkpoint_bytes, widest_that_fits)

_TUTORIAL = RECIPE_DEFAULTS[DEFAULT_RECIPE]

# \Z, not $: "$" also matches before a trailing newline; [0-9], not \d: \d admits any script's digits.
DEVICE_PATTERN = re.compile(r"(auto|cpu|cuda|cuda:[0-9]{1,2})\Z")


class _Config(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    device: str = "auto"

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if not DEVICE_PATTERN.match(value):
            raise ValueError("must be auto, cpu, cuda or cuda:N")
        return value




class TrainConfig(_Config):
    """The tutorial's recipe by default; `recipe="fast"` is airbench-style. Defaults come from
    shared/recipes.py, each recipe's own."""

    recipe: Literal["tutorial", "fast"] = DEFAULT_RECIPE
    epochs: int = Field(_TUTORIAL["epochs"], ge=1, le=1000)
    batch_size: int = Field(_TUTORIAL["batch_size"], ge=1, le=65536)
    lr: float = Field(_TUTORIAL["lr"], gt=0, le=100, allow_inf_nan=False)
    momentum: float = Field(_TUTORIAL["momentum"], ge=0, lt=1, allow_inf_nan=False)
    width: int = Field(_TUTORIAL["width"], ge=1, le=1024)  # tutorial: channels of the first conv; fast: of the first block
    seed: int = Field(DEFAULT_SEED, ge=0, le=2**32 - 1)
    log_every: int = Field(_TUTORIAL["log_every"], ge=1)  # mini-batches between log lines
    label_smoothing: Optional[float] = Field(None, ge=0, lt=1, allow_inf_nan=False)  # fast only
    tta_level: Optional[int] = Field(None, ge=0, le=2)  # fast only: 0 none, 1 mirror, 2 mirror + shifts

    @model_validator(mode="before")
    @classmethod
    def _recipe_defaults(cls, values):
        if not isinstance(values, dict):
            return values
        recipe = values.get("recipe") or DEFAULT_RECIPE
        filled = {k: v for k, v in values.items() if v is not None}
        for key, value in RECIPE_DEFAULTS.get(recipe, {}).items():
            filled.setdefault(key, value)
        return filled

    @model_serializer(mode="wrap")
    def _without_unused(self, handler):
        """A tutorial job's params read as before: the fast-only knobs are left out, not None."""
        return {k: v for k, v in handler(self).items() if not (k in FAST_ONLY and v is None)}

    @field_validator("width")
    @classmethod
    def _checkpoint_fits_the_database(cls, value: int, info: ValidationInfo):
        recipe = info.data.get("recipe", DEFAULT_RECIPE)
        size = checkpoint_bytes(recipe, value)
        if size > MAX_CHECKPOINT_BYTES:
            raise ValueError(f"a {recipe} net this wide has a {size / 2**30:.1f} GiB checkpoint, over the "
                             f"{MAX_CHECKPOINT_BYTES // 2**20} MiB that cifarq stores (shared/recipes.py); "
                             f"--width {widest_that_fits(recipe)} is the widest that fits")
        return value

    @field_validator(*FAST_ONLY)
    @classmethod
    def _fast_only(cls, value, info: ValidationInfo):
        if value is not None and info.data.get("recipe") != "fast":
            raise ValueError("only --recipe fast has it")
        return value


def pack_shape(config: TrainConfig) -> Optional[tuple]:
    """What the points of one pack share (packed sweeps: worker/recipes/packed.py); lr, momentum,
    seed and log_every may differ from point to point. None: a recipe that is never packed."""
    if config.recipe != "tutorial":
        return None
    return (config.recipe, config.width, config.batch_size, config.epochs, config.device)


class EvaluateConfig(_Config):
    """Test-set evaluation of a stored checkpoint or of an uploaded state dict."""

    source_job: Optional[str] = None  # a train job whose checkpoint is evaluated
    source_epoch: Optional[int] = Field(None, ge=0)  # None: its latest
    weights_file: Optional[str] = None  # name of the uploaded file, for the record
    batch_size: int = Field(1000, ge=1, le=65536)


def parse_config(cls: type[_Config], values: dict) -> _Config:
    """Validate, turning pydantic's report into one line that names the flag."""
    try:
        return cls(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else "value"
        message = first["msg"].removeprefix("Value error, ")
        raise CifarqError(f"invalid --{field.replace('_', '-')} {values.get(field)!r}: {message}") from None

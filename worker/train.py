"""Training, whichever the recipe: `train()` hands the job's config to its recipe's loop.

- tutorial (the default): worker/recipes/tutorial.py, the tutorial's loop without its overhead;
- fast: worker/recipes/fast.py, an airbench94-style recipe.

The layers of worker/, each importing only from those below it: the networks (model.py) <- what
every loop shares (loop.py) <- each recipe (recipes/) <- this dispatch <- the job's run (run.py)
<- the Celery task (tasks.py).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

from shared.jobspec import TrainConfig
from worker.data import Split
from worker.loop import Resume, TrainHooks, cpu_threads
from worker.recipes.fast import train_fast
from worker.recipes.tutorial import train_tutorial


def train(config: TrainConfig, *, data_dir: Path, device: torch.device, hooks: TrainHooks,
          resume: Optional[Resume] = None, train_set: Optional[Split] = None, cpu_compile: str = "auto") -> nn.Module:
    """Train as `config` says; `cpu_compile` (auto|always|never) is CIFARQ_CPU_COMPILE, the worker's choice."""
    if config.recipe == "fast":
        return train_fast(config, data_dir=data_dir, device=device, hooks=hooks, resume=resume, train_set=train_set)
    # Batch-4 steps on the CPU run on one thread: the ops are far too small to split, and waking
    # a second thread (on a shared machine, one that is busy) costs more than it saves.
    with cpu_threads(1 if device.type == "cpu" and config.batch_size <= 64 else None):
        return train_tutorial(config, data_dir=data_dir, device=device, hooks=hooks, resume=resume,
                              train_set=train_set, cpu_compile=cpu_compile)

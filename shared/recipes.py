"""Each recipe's hyperparameters in one place, as plain data (airbench94's `hyp`): TrainConfig's
defaults (shared/jobspec.py), `submit train --help`, the fast recipe's code (worker/model.py,
worker/recipes/fast.py) and the README's flag table all read them from here. Plain data, so
that the CLI reads them without importing pydantic or torch."""

# What a user may set with a flag, per recipe, with the recipe's own value; a flag left out
# (or None) takes its recipe's.
RECIPE_DEFAULTS: dict[str, dict] = {
    # The tutorial's values.
    "tutorial": dict(epochs=2, batch_size=4, lr=0.001, momentum=0.9, width=6, log_every=2000),
    # airbench94's (KellerJordan/cifar10-airbench): lr is per 1024 examples, width the first block's.
    "fast": dict(epochs=10, batch_size=1024, lr=11.5, momentum=0.85, width=64, log_every=10,
                 label_smoothing=0.2, tta_level=2),
}
FAST_ONLY = ("label_smoothing", "tta_level")
# Packed sweeps: the most points trained together as one batched model, per device (`submit sweep
# --pack-size` overrides). cpu: 1, i.e. not packed, by measurement: on 2 cores an 8-point pack
# took 204 s against 193 s for its points one by one (docs/benchmarks.md, "Packed sweeps"); the
# batch-4 step is bound by arithmetic there, not by per-op overhead. cuda: where packing pays,
# a step being bound by kernel launches; 64 is the size the design aims at, not yet measured.
PACK_SIZE = {"cpu": 1, "cuda": 64}
DEFAULT_RECIPE = "tutorial"
DEFAULT_SEED = 0

# The fast recipe's fixed hyperparameters (no flags), airbench94's values.
FAST_HYP: dict = dict(
    weight_decay=0.0153,  # per 1024 examples
    bias_lr_scale=64.0,  # BatchNorm biases learn this much faster (weight decay unchanged)
    whiten_bias_epochs=3,  # the whitening conv's bias trains this many epochs, then freezes
    lookahead_every=5,  # steps between lookahead blends
    # The learning-rate multiplier: from `start` up to 1 at `peak_at` (a fraction of all
    # steps), then down to `end` at the last step.
    lr_schedule=dict(start=0.2, peak_at=0.23, end=0.07),
    batchnorm_momentum=0.6,  # airbench's convention, (1 - torch's): torch momentum 0.4
    whiten_kernel=2,  # patch size of the whitening conv
    scale_out=1 / 9,  # the head's output scaling
)


# -- how big a job's checkpoint gets
#
# A checkpoint row holds the weights and, in a column of its own, the train state (the optimizer's
# momentum, and the fast recipe's lookahead copy: up to two more copies of the weights).
# PostgreSQL refuses a value over 1 GB and SQLite over 1e9 bytes, so the weights are held to
# MAX_CHECKPOINT_BYTES and a job that would exceed it is refused at submit, not after an epoch.
MAX_CHECKPOINT_BYTES = 400 * 2**20


def parameter_count(recipe: str, width: int, num_classes: int = 10) -> int:
    """Numbers in the network's state dict (weights and buffers) for `recipe` at `width`:
    worker/model.py's Net and FastNet, counted without torch (tests/test_recipes.py checks)."""
    if recipe == "tutorial":
        return (width * 3 * 25 + width) + (16 * width * 25 + 16) + (120 * 400 + 120) + (84 * 120 + 84) \
            + (num_classes * 84 + num_classes)
    whiten = 2 * 3 * FAST_HYP["whiten_kernel"] ** 2

    def group(c_in: int, c_out: int) -> int:  # two 3x3 convs, two BatchNorms (4 tensors + a counter each)
        return c_out * c_in * 9 + c_out * c_out * 9 + 2 * (4 * c_out + 1)

    return (whiten * 3 * FAST_HYP["whiten_kernel"] ** 2 + whiten) + group(whiten, width) \
        + group(width, 4 * width) + group(4 * width, 4 * width) + 4 * width * num_classes + 2 * 3


def checkpoint_bytes(recipe: str, width: int) -> int:
    return 4 * parameter_count(recipe, width)  # float32


def widest_that_fits(recipe: str) -> int:
    return max(w for w in range(1, 1025) if checkpoint_bytes(recipe, w) <= MAX_CHECKPOINT_BYTES)

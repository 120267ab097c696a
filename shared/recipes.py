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

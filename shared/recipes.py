"""Each recipe's defaults, as plain data: the CLI's --help reads them without pydantic."""

# Each recipe's defaults for the knobs it shares; a knob left out (or None) takes its recipe's.
RECIPE_DEFAULTS: dict[str, dict] = {
    # The tutorial's values (DESIGN.md, decision 9).
    "tutorial": dict(epochs=2, batch_size=4, lr=0.001, momentum=0.9, width=6, log_every=2000),
    # airbench94's (KellerJordan/cifar10-airbench): lr is per 1024 examples, width the first block's.
    "fast": dict(epochs=10, batch_size=1024, lr=11.5, momentum=0.85, width=64, log_every=10,
                 label_smoothing=0.2, tta_level=2),
}
FAST_ONLY = ("label_smoothing", "tta_level")
DEFAULT_RECIPE = "tutorial"
DEFAULT_SEED = 0

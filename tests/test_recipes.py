"""Each recipe's hyperparameters live in shared/recipes.py alone: the job config's defaults and
the README's flag table are checked against them, so neither can drift."""
from __future__ import annotations

import re
from pathlib import Path

from shared.jobspec import TrainConfig
from shared.recipes import DEFAULT_RECIPE, DEFAULT_SEED, FAST_ONLY, RECIPE_DEFAULTS

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def readme_defaults() -> dict[str, str]:
    """{flag: default column} of the README's `submit train` table."""
    return dict(re.findall(r"^\| `(--[a-z-]+)` \| ([^|]+?) \|", README, re.M))


def test_the_config_takes_its_defaults_from_the_recipe():
    for recipe, defaults in RECIPE_DEFAULTS.items():
        config = TrainConfig(recipe=recipe).model_dump()
        assert {key: config[key] for key in defaults} == defaults, recipe
    assert TrainConfig().recipe == DEFAULT_RECIPE and TrainConfig().seed == DEFAULT_SEED


def test_the_readme_table_shows_the_recipes_values():
    table = readme_defaults()
    for name, value in RECIPE_DEFAULTS[DEFAULT_RECIPE].items():
        assert table[flag(name)] == str(value), flag(name)
    assert table["--seed"] == str(DEFAULT_SEED) and table["--recipe"] == DEFAULT_RECIPE
    fast = RECIPE_DEFAULTS["fast"]
    for name in FAST_ONLY:
        assert table[flag(name)] == str(fast[name]), flag(name)
    shown = re.search(r"with its own defaults: `([^`]+)`", README).group(1)
    assert shown == " ".join(f"{flag(name)} {value}" for name, value in fast.items() if name not in FAST_ONLY)


def test_the_checkpoint_size_bound_counts_the_real_networks():
    torch = __import__("torch")
    from shared.recipes import MAX_CHECKPOINT_BYTES, checkpoint_bytes, parameter_count, widest_that_fits
    from worker.model import FastNet, Net

    for recipe, network in (("tutorial", Net), ("fast", FastNet)):
        for width in (1, 6, 64, 100):
            numbers = sum(t.numel() for t in network(width).state_dict().values() if isinstance(t, torch.Tensor))
            assert parameter_count(recipe, width) == numbers, (recipe, width)
    assert widest_that_fits("tutorial") == 1024  # the flag's own limit
    widest = widest_that_fits("fast")
    assert checkpoint_bytes("fast", widest) <= MAX_CHECKPOINT_BYTES < checkpoint_bytes("fast", widest + 1)

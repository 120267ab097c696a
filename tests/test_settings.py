"""The settings object: each variable converted explicitly, a bad value refused by name, and
every variable documented where users look for it."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from shared.errors import CifarqError
from shared.settings import Settings

REPO = Path(__file__).resolve().parents[1]

BAD = {  # variable: (a bad value, what the message says it expected)
    "CIFARQ_HEARTBEAT_SECONDS": ("0", "a positive number of seconds"),
    "CIFARQ_STALE_AFTER_SECONDS": ("inf", "a positive number of seconds"),
    "CIFARQ_REAP_INTERVAL_SECONDS": ("-3", "a positive number of seconds"),
    "CIFARQ_DB_RETRY_SECONDS": ("soon", "a positive number of seconds"),
    "CIFARQ_MAX_ATTEMPTS": ("0", "a whole number of at least 1"),
    "CIFARQ_VISIBILITY_TIMEOUT_SECONDS": ("1.5", "a whole number of at least 1"),
    "CIFARQ_BROKER_TRANSPORT_OPTIONS": ("[1, 2]", "a JSON object"),
    "CIFARQ_CPU_COMPILE": ("sometimes", "one of auto, always, never"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_a_bad_value_is_refused_naming_the_variable(name):
    raw, expected = BAD[name]
    with pytest.raises(CifarqError) as refused:
        Settings.from_env({name: raw})
    assert str(refused.value) == f"invalid {name} {raw!r}: expected {expected}"


def test_values_are_converted_and_paths_expanded():
    settings = Settings.from_env({"CIFARQ_MAX_ATTEMPTS": "5", "CIFARQ_STALE_AFTER_SECONDS": "7.5",
                                  "CIFARQ_DATA_DIR": "~/cifar", "CIFARQ_BROKER_TRANSPORT_OPTIONS": '{"a": 1}'})
    assert settings.max_attempts == 5 and settings.stale_after_seconds == 7.5
    assert settings.data_dir == Path("~/cifar").expanduser() and settings.broker_transport_options == {"a": 1}
    assert Settings.from_env({}).home == Path("~/.cifarq").expanduser()
    assert Settings.from_env({"CIFARQ_MAX_ATTEMPTS": ""}).max_attempts == 3  # empty: unset


def test_every_variable_has_a_converter_and_a_row_in_the_readme():
    readme = (REPO / "README.md").read_text()
    documented = set(re.findall(r"^\| `(CIFARQ_[A-Z_]+)` \|", readme, re.M))
    for field in dataclasses.fields(Settings):
        name = f"CIFARQ_{field.name.upper()}"
        assert callable(field.metadata.get("parse")) and field.metadata["parse"].expected, name
        assert name in documented, f"{name} is missing from the README's Configuration table"

"""Typed config from defaults, MX8_* env vars and --flags."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from mx8_common.config_fields import (
    config_reference_markdown,
    load_config,
    parse_bool,
    parse_size,
    setting,
)
from mx8_common.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class _DemoConfig:
    """A demo daemon's config."""

    listen: str = setting("127.0.0.1:1", env="MX8_T_LISTEN", help="address to bind")
    budget: int = setting(256 << 20, env="MX8_T_BUDGET", help="bytes", parse=parse_size)
    shuffle: bool = setting(False, env="MX8_T_SHUFFLE", help="shuffle")
    token: str | None = setting(None, env="MX8_T_TOKEN", help="auth token")
    epochs: int = setting(1, env="MX8_T_EPOCHS", help="epochs")


def test_config_fields_flags_override_env_override_defaults() -> None:
    env = {"MX8_T_LISTEN": "0.0.0.0:5", "MX8_T_BUDGET": "1GiB", "MX8_T_EPOCHS": "3"}
    cfg = load_config(_DemoConfig, ["--epochs", "4", "--shuffle"], environ=env)
    assert cfg.listen == "0.0.0.0:5"
    assert cfg.budget == 1 << 30
    assert cfg.epochs == 4 and cfg.shuffle is True and cfg.token is None
    assert load_config(_DemoConfig, [], environ={}) == _DemoConfig()


def test_config_fields_bad_env_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="MX8_T_EPOCHS"):
        load_config(_DemoConfig, None, environ={"MX8_T_EPOCHS": "many"})


@pytest.mark.parametrize(
    ("text", "value"),
    [("123", 123), ("1k", 1000), ("256MiB", 256 << 20), ("2GB", 2 * 10**9), ("1 KiB", 1024)],
)
def test_config_fields_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


def test_config_fields_rejects_bad_sizes_and_bools() -> None:
    with pytest.raises(ConfigError, match="byte size"):
        parse_size("lots")
    with pytest.raises(ConfigError, match="boolean"):
        parse_bool("maybe")


def test_config_fields_reference_lists_every_env_var() -> None:
    text = config_reference_markdown([_DemoConfig])
    for env in ("MX8_T_LISTEN", "MX8_T_BUDGET", "MX8_T_SHUFFLE", "MX8_T_TOKEN", "MX8_T_EPOCHS"):
        assert f"`{env}`" in text

"""Small helpers shared across mmkit (no model knowledge)."""

from mmkit.utils.config import (
    ConfigError,
    at_least,
    check_config,
    choice,
    config_from_dict,
    config_to_dict,
    fraction,
    load_config,
    parse_override,
    positive,
    replace_config,
)

__all__ = [
    "ConfigError",
    "at_least",
    "check_config",
    "choice",
    "config_from_dict",
    "config_to_dict",
    "fraction",
    "load_config",
    "parse_override",
    "positive",
    "replace_config",
]

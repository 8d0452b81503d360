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
from mmkit.utils.run_lock import RunDirInUseError, RunDirLock, file_lock

__all__ = [
    "ConfigError",
    "RunDirInUseError",
    "RunDirLock",
    "at_least",
    "check_config",
    "choice",
    "config_from_dict",
    "config_to_dict",
    "file_lock",
    "fraction",
    "load_config",
    "parse_override",
    "positive",
    "replace_config",
]

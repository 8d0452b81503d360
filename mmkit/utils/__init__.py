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
from mmkit.utils.errors import (
    USER_ERRORS,
    DataKeyError,
    InputError,
    MissingError,
    MMKitError,
    StateError,
    debug_requested,
    run_cli,
)
from mmkit.utils.run_lock import RunDirInUseError, RunDirLock, file_lock

__all__ = [
    "USER_ERRORS",
    "ConfigError",
    "DataKeyError",
    "InputError",
    "MMKitError",
    "MissingError",
    "RunDirInUseError",
    "RunDirLock",
    "StateError",
    "at_least",
    "check_config",
    "choice",
    "config_from_dict",
    "config_to_dict",
    "debug_requested",
    "file_lock",
    "fraction",
    "load_config",
    "parse_override",
    "positive",
    "replace_config",
    "run_cli",
]

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
from mmkit.utils.weights import CheckpointMismatchError, LoadReport, load_strict, read_weight_file, read_weights

__all__ = [
    "USER_ERRORS",
    "CheckpointMismatchError",
    "ConfigError",
    "DataKeyError",
    "InputError",
    "LoadReport",
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
    "load_strict",
    "parse_override",
    "positive",
    "read_weight_file",
    "read_weights",
    "replace_config",
    "run_cli",
]

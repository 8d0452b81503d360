"""Small helpers shared across mmkit (no model knowledge)."""

from mmkit.utils.bounded import MAX_SAMPLE_BYTES, UnreadableSample, read_sample, read_text_file, set_sample_limit
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
from mmkit.utils.config_json import check_config_json
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
from mmkit.utils.hub import resolve_checkpoint
from mmkit.utils.paths import OutsideRoot, check_name, inside_root
from mmkit.utils.run_lock import RunDirInUseError, RunDirLock, file_lock
from mmkit.utils.weights import CheckpointMismatchError, LoadReport, load_strict, read_weight_file, read_weights

__all__ = [
    "MAX_SAMPLE_BYTES",
    "USER_ERRORS",
    "CheckpointMismatchError",
    "ConfigError",
    "DataKeyError",
    "InputError",
    "LoadReport",
    "MMKitError",
    "MissingError",
    "OutsideRoot",
    "RunDirInUseError",
    "RunDirLock",
    "StateError",
    "UnreadableSample",
    "at_least",
    "check_config",
    "check_config_json",
    "check_name",
    "choice",
    "config_from_dict",
    "config_to_dict",
    "debug_requested",
    "file_lock",
    "fraction",
    "inside_root",
    "load_config",
    "load_strict",
    "parse_override",
    "positive",
    "read_sample",
    "read_text_file",
    "read_weight_file",
    "read_weights",
    "replace_config",
    "resolve_checkpoint",
    "run_cli",
    "set_sample_limit",
]

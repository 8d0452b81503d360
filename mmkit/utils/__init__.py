"""Small helpers shared across mmkit (no model knowledge)."""

from mmkit.utils.config import config_from_dict, config_to_dict, load_config, parse_override, replace_config

__all__ = ["config_from_dict", "config_to_dict", "load_config", "parse_override", "replace_config"]

"""What can be checked in a merge config without its models: syntax, types, the method, and
every value given for a parameter the method declares. The pipeline runs this on every step when
the workflow is parsed, so a bad value in a late step fails before the first job runs."""

from __future__ import annotations

from typing import Any

from mergeflow.engine import params as P
from mergeflow.engine.config import MergeConfig, did_you_mean, parse_config
from mergeflow.engine.errors import ConfigError
from mergeflow.engine.ranges import parameter_mappings
from mergeflow.methods import MethodSpec, Param, get_method, method_names


def method_of(config: MergeConfig) -> MethodSpec:
    try:
        return get_method(config.merge_method)
    except KeyError as err:
        raise ConfigError("merge_method", err.args[0] + did_you_mean(config.merge_method, method_names())) from None


def check_config(text: str) -> tuple[MergeConfig, MethodSpec]:
    """Parse ``text`` and type-check every parameter value; raises a one-line ConfigError."""
    config = parse_config(text)
    method = method_of(config)
    for key, mapping in parameter_mappings(config):
        for name, setting in mapping.items():
            if name in method.param_index:
                _check_setting(setting, method.param_index[name], f"{key}.{name}")
    return config, method


def _check_setting(setting: Any, param: Param, key: str) -> None:
    if isinstance(setting, list) and setting and isinstance(setting[0], dict):
        for i, entry in enumerate(setting):
            _check_setting(entry["value"], param, f"{key}[{i}].value")
    elif isinstance(setting, list):
        for value in setting:
            P.coerce(value, param, key)
    else:
        P.coerce(setting, param, key)

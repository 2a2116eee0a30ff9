"""Parameter values for one tensor: precedence, filters, gradients and typing (mergekit-semantics §3).

Gradients are interpolated in Python doubles, exactly as mergekit 0.1.5 does, because the rounded
result is what reaches the tensor math.
"""

from __future__ import annotations

from typing import Any, Sequence

from mergeflow.engine.errors import ConfigError
from mergeflow.methods import Param

# mergekit 0.1.5 validates parameter values with pydantic's lax rules; these are the strings those
# rules read as booleans (case-insensitive, not stripped).
_TRUE = {"true", "yes", "on", "1", "t", "y"}
_FALSE = {"false", "no", "off", "0", "f", "n"}


def coerce(value: Any, param: Param, key: str) -> Any:
    """Validate one value to the parameter's kind, accepting what mergekit 0.1.5 accepts: a float
    also from a bool or any numeric string ("1e-5", "inf"), an int also from a whole float or
    "5.0", a bool also from 0/1 and yes/no-style strings."""
    kind = param.kind
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, float)) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
    elif kind is int:
        if isinstance(value, int):
            return int(value)
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            digits, dot, zeros = value.strip().partition(".")
            if not dot or (zeros and not zeros.strip("0")):  # "5" or "5.00", not "5." or "5.5"
                try:
                    return int(digits)
                except ValueError:
                    pass
    elif kind is float:
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    raise ConfigError(key, f"expected a {kind.__name__} for parameter '{param.name}' (got {value!r})")


def evaluate(setting: Any, param: Param, t: float, tensor_name: str, key: str) -> Any:
    """The setting's value at layer position ``t`` for ``tensor_name``; None when no filter matches."""
    if isinstance(setting, list) and setting and isinstance(setting[0], dict):
        for entry in setting:
            pattern = entry["filter"]
            if pattern is None or pattern == "*" or pattern in tensor_name:
                return evaluate(entry["value"], param, t, tensor_name, key)
        return None
    if isinstance(setting, list):
        return _gradient([coerce(v, param, key) for v in setting], param, t, key)
    return coerce(setting, param, key)


def _gradient(values: list, param: Param, t: float, key: str) -> Any:
    n = len(values)
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values):
        return values[int(t * (n - 1))]
    scaled = t * (n - 1)
    lower = int(scaled)
    upper = min(n - 1, lower + 1)
    frac = scaled - lower
    return coerce((1 - frac) * values[lower] + frac * values[upper], param, key)


def resolve(
    param: Param,
    levels: Sequence[tuple[str, dict[str, Any]]],
    t: float,
    tensor_name: str,
    context: str,
) -> Any:
    """First level (highest precedence first) whose setting evaluates to a value, else the default.

    ``levels`` pairs each parameters mapping with its config key path, for error messages.
    """
    for key, mapping in levels:
        if param.name in mapping:
            value = evaluate(mapping[param.name], param, t, tensor_name, f"{key}.{param.name}")
            if value is not None:
                return value
    if param.required:
        where = levels[0][0] if levels else "parameters"
        raise ConfigError(f"{where}.{param.name}", f"missing required parameter '{param.name}' for {context}")
    return param.default

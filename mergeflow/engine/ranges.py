"""Parameter values outside their meaningful range, checked on the finished plan.

Where mergekit 0.1.5 still produces output (a ``density`` above 1 keeps everything, a slerp ``t``
of 1.5 extrapolates), the merge keeps mergekit's bits and a warning names the key. Where mergekit
crashes mid-merge (DARE's Bernoulli draw with a negative ``density``, DELLA's ``density ±
epsilon`` outside (0, 1), a NaN ``density``), the merge fails here, before any weight is read.
Checked against mergekit 0.1.5 on tiny models (tests/faults/test_values.py).
"""

from __future__ import annotations

import logging
import math
from typing import Any, Iterator

from mergeflow.engine.config import MergeConfig
from mergeflow.engine.errors import ConfigError
from mergeflow.engine.plan import MergePlan
from mergeflow.methods import MethodSpec

log = logging.getLogger("mergeflow")

SPARSIFYING = {"ties", "dare_ties", "dare_linear", "breadcrumbs", "breadcrumbs_ties", "della", "della_linear"}
BERNOULLI = {"dare_ties", "dare_linear"}
DELLA = {"della", "della_linear"}
FRACTIONS = {"density", "select_topk", "t"}
INTERPOLATING = {"nuslerp", "multislerp", "karcher"}


def parameter_mappings(config: MergeConfig) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every ``parameters:`` mapping of the config with its key path."""
    yield "parameters", config.parameters
    yield "modules.default.parameters", config.module_parameters
    for source in config.models or []:
        yield f"{source.key}.parameters", source.parameters
    for sl in config.slices or []:
        yield f"{sl.key}.parameters", sl.parameters
        for source in sl.sources:
            yield f"{source.key}.parameters", source.parameters


def check_values(config: MergeConfig, method: MethodSpec, plan: MergePlan) -> None:
    """Warn about out-of-range values mergekit accepts; fail on those it would crash on."""
    _warn_empty_filters(config)
    warned: set[str] = set()
    for task in plan.tasks:
        per_input = [mp for i, mp in enumerate(task.model_params) if i != task.base_index or not method.requires_base]
        for values in [task.params, *per_input]:
            for name, value in values.items():
                _check(config, method, name, value, f"tensor {task.output_name}", values, warned)
        weights = [mp["weight"] for mp in per_input if isinstance(mp.get("weight"), float)]
        normalized = task.params.get("normalize", task.params.get("normalize_weights", False))
        if normalized and weights and sum(weights) == 0 and "weight-sum" not in warned:
            warned.add("weight-sum")
            log.warning(
                "the weights of tensor %s sum to 0 and '%s' normalizes by their sum: its values will be "
                "NaN or inf (as in mergekit); set normalize: false or change %s",
                task.output_name, method.name, " / ".join(_keys(config, "weight")) or "the weights",
            )


def _check(config, method, name, value, context, values, warned) -> None:
    if not isinstance(value, float) or isinstance(value, bool):
        return
    key = next(iter(_keys(config, name)), f"parameters.{name}")
    if name == "density" and method.name in SPARSIFYING:
        if math.isnan(value):
            raise ConfigError(key, f"density is NaN for {context}; '{method.name}' needs a number (mergekit 0.1.5 crashes mid-merge)")
        if method.name in BERNOULLI and value < 0:
            raise ConfigError(key, f"density {value} for {context} is below 0; DARE keeps each element with probability density, so it must lie in [0, 1]")
        epsilon = values.get("epsilon")
        if method.name in DELLA and 0 < value < 1 and isinstance(epsilon, float) and not (0 < value - epsilon and value + epsilon < 1):
            raise ConfigError(key, f"density {value} with epsilon {epsilon} for {context}: DELLA needs 0 < density - epsilon and density + epsilon < 1")
    if name in FRACTIONS and name in method.param_index and not 0 <= value <= 1 and key not in warned:
        warned.add(key)
        log.warning("config key '%s': %s %s is outside [0, 1] (%s); merged as mergekit 0.1.5 does", key, name, value, context)
    if name == "weight" and method.name in INTERPOLATING and value < 0 and key not in warned:
        warned.add(key)
        log.warning("config key '%s': weight %s is negative; '%s' interpolates, so this extrapolates (as in mergekit)", key, value, method.name)


def _keys(config: MergeConfig, name: str) -> list[str]:
    return [f"{key}.{name}" for key, mapping in parameter_mappings(config) if name in mapping]


def _warn_empty_filters(config: MergeConfig) -> None:
    for key, mapping in parameter_mappings(config):
        for name, setting in mapping.items():
            if isinstance(setting, list):
                for i, entry in enumerate(setting):
                    if isinstance(entry, dict) and entry.get("filter") == "":
                        log.warning("config key '%s.%s[%d].filter': empty, so it matches every tensor (as in mergekit)", key, name, i)

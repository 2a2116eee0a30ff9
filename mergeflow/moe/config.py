"""Parse and validate a mergekit-moe config (mergekit-semantics §12.1).

The document is the one ``mergekit-moe`` reads; tutorials add ``merge_method: moe``, which we
accept. Every rule mergekit-moe enforces gives one line naming the key, before any weight is read.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any

import torch
import yaml

from mergeflow.engine.config import ModelRef, load_yaml_mapping, model_ref, parse_dtype, warn_unknown
from mergeflow.engine.errors import ConfigError

log = logging.getLogger("mergeflow")

GATE_MODES = ("hidden", "hidden_last", "hidden_avg", "cheap_embed", "random", "uniform_random")
RANDOM_GATE_MODES = ("random", "uniform_random")
TOP_LEVEL_KEYS = {
    "base_model", "experts", "gate_mode", "dtype", "experts_per_token", "shared_experts", "architecture",
    "merge_method",
}
EXPERT_KEYS = {"source_model", "positive_prompts", "negative_prompts", "noise_scale", "residual_scale"}


@dataclass(frozen=True)
class Expert:
    source_model: ModelRef
    positive_prompts: tuple[str, ...] | None
    negative_prompts: tuple[str, ...] | None
    noise_scale: float | None
    residual_scale: float | None
    key: str  # where it sits in the config, for messages


@dataclass
class MoEConfig:
    text: str
    base_model: ModelRef
    experts: list[Expert]
    shared_experts: list[Expert]
    gate_mode: str = "hidden"
    dtype: torch.dtype | None = None
    experts_per_token: int = 2
    architecture: str | None = None

    def referenced_models(self) -> list[ModelRef]:
        """Base first, then experts and shared experts in config order, without repeats."""
        refs = [self.base_model, *(e.source_model for e in self.experts + self.shared_experts)]
        return list(dict.fromkeys(refs))

    @property
    def canonical_sha256(self) -> str:
        canonical = json.dumps(yaml.safe_load(self.text), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    @property
    def shared_experts_routed(self) -> bool:
        """Shared experts get router rows (split off later) when they have prompts or gates are random."""
        return bool(self.shared_experts) and (
            bool(self.shared_experts[0].positive_prompts) or self.gate_mode in RANDOM_GATE_MODES
        )


def parse_moe_config(text: str, allow_all_same: bool = False) -> MoEConfig:
    doc = load_yaml_mapping(text, "MoE config")
    warn_unknown(doc, TOP_LEVEL_KEYS, "")
    if doc.get("merge_method", "moe") != "moe":
        raise ConfigError("merge_method", f"a config with experts is a MoE build: write 'merge_method: moe' or leave it out (got {doc['merge_method']!r})")
    if doc.get("base_model") is None:
        raise ConfigError("base_model", "is required: the model that donates attention, embeddings, tokenizer and config")
    config = MoEConfig(
        text=text,
        base_model=model_ref(doc["base_model"], "base_model"),
        experts=_experts(doc.get("experts"), "experts", required=True),
        shared_experts=_experts(doc.get("shared_experts"), "shared_experts", required=False),
        gate_mode=_gate_mode(doc.get("gate_mode", "hidden")),
        dtype=parse_dtype(doc.get("dtype"), "dtype"),
        experts_per_token=_integer(doc.get("experts_per_token", 2), "experts_per_token"),
        architecture=_architecture(doc.get("architecture")),
    )
    validate(config, allow_all_same)
    return config


def validate(config: MoEConfig, allow_all_same: bool) -> None:
    """mergekit-moe's rules (``is_bad_config``), in its order, each as one line naming the key."""
    if config.experts_per_token < 1:
        raise ConfigError("experts_per_token", f"must be at least 1 (got {config.experts_per_token})")
    if len(config.experts) < config.experts_per_token:
        raise ConfigError(
            "experts", f"has {len(config.experts)} expert(s), fewer than experts_per_token ({config.experts_per_token})"
        )
    if config.gate_mode != "random":
        for expert in config.experts:
            if not expert.positive_prompts:
                raise ConfigError(
                    f"{expert.key}.positive_prompts",
                    f"is required with gate_mode {config.gate_mode} (only gate_mode random needs no prompts)",
                )
        prompt_sets = {(e.positive_prompts, e.negative_prompts) for e in config.experts}
        if len(config.experts) > 1 and len(prompt_sets) == 1:
            raise ConfigError("experts", "every expert has the same prompts, so the router could not tell them apart")
    if len({e.source_model for e in config.experts}) == 1 and len(config.experts) > 1 and not allow_all_same:
        raise ConfigError(
            "experts",
            "every expert is the same model, which is not useful without training "
            "(pass --i-understand-this-is-not-useful-without-training to build it anyway)",
        )
    with_prompts = {bool(e.positive_prompts) for e in config.shared_experts}
    if len(with_prompts) > 1:
        raise ConfigError("shared_experts", "give prompts to every shared expert or to none")


def _experts(value: Any, key: str, required: bool) -> list[Expert]:
    if value is None and not required:
        return []
    if not isinstance(value, list) or (required and not value):
        raise ConfigError(key, f"expected a list of {{source_model, positive_prompts, ...}} entries (got {value!r})")
    return [_expert(item, f"{key}[{i}]") for i, item in enumerate(value)]


def _expert(item: Any, key: str) -> Expert:
    if not isinstance(item, dict):
        raise ConfigError(key, f"expected a mapping with source_model (got {item!r})")
    warn_unknown(item, EXPERT_KEYS, f"{key}.")
    if item.get("source_model") is None:
        raise ConfigError(f"{key}.source_model", "is required")
    return Expert(
        source_model=model_ref(item["source_model"], f"{key}.source_model"),
        positive_prompts=_prompts(item.get("positive_prompts"), f"{key}.positive_prompts"),
        negative_prompts=_prompts(item.get("negative_prompts"), f"{key}.negative_prompts"),
        noise_scale=_scale(item.get("noise_scale"), f"{key}.noise_scale"),
        residual_scale=_scale(item.get("residual_scale"), f"{key}.residual_scale"),
        key=key,
    )


def _prompts(value: Any, key: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        raise ConfigError(key, f"expected a list of prompts, not one string (write [{value!r}])")
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise ConfigError(key, f"expected a list of strings (got {value!r})")
    return tuple(value)


def _scale(value: Any, key: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(key, f"expected a number (got {value!r})")
    return float(value)


def _integer(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(key, f"expected an integer (got {value!r})")
    return value


def _gate_mode(value: Any) -> str:
    if value not in GATE_MODES:
        raise ConfigError("gate_mode", f"unknown gate mode {value!r}; use one of {', '.join(GATE_MODES)}")
    return value


def _architecture(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ConfigError("architecture", f"expected an output architecture name such as Mixtral (got {value!r})")
    return value

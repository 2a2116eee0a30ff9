"""Infer a model's layer structure from its tensor names and ``config.json``.

mergekit ships one JSON definition per architecture; we derive the same structure from the names
(``<prefix>.<layer>.<rest>``), so Llama, Mistral, Qwen, Gemma, Phi-3, GPT-2 (``h.N``) and GPT-NeoX
need no table. The only table left is which loose names are embeddings, since a name alone cannot
say whether a weight sits before or after the layers.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
# Loose weights whose name contains one of these come before the layers (embeddings) ...
EMBEDDING_MARKERS = ("embed_tokens", "wte", "wpe", "embed_in", "word_embeddings", "embeddings")
# ... and these index the vocabulary on axis 0 (input embeddings and output heads).
VOCABULARY_MARKERS = ("embed_tokens", "wte", "embed_in", "word_embeddings", "lm_head", "embed_out")
OUTPUT_HEAD_MARKERS = ("lm_head", "embed_out")

_LAYER_NAME = re.compile(r"^(?P<prefix>.+?)\.(?P<index>\d+)\.(?P<rest>.+)$")


@dataclass(frozen=True)
class Architecture:
    """Where a model's per-layer tensors live, and which loose tensors come before or after them."""

    layer_prefix: str | None
    layer_suffixes: tuple[str, ...]
    pre_weights: tuple[str, ...]
    post_weights: tuple[str, ...]
    num_layers: int

    def layer_tensor(self, index: int, suffix: str) -> str:
        return f"{self.layer_prefix}.{index}.{suffix}"


def split_layer_name(name: str) -> tuple[str, int, str] | None:
    match = _LAYER_NAME.match(name)
    if match is None:
        return None
    return match["prefix"], int(match["index"]), match["rest"]


def layer_count_key(config: dict) -> str | None:
    return next((k for k in LAYER_COUNT_KEYS if isinstance(config.get(k), int)), None)


def vocabulary_axis(name: str, ndim: int) -> int | None:
    """0 for 2-D embedding and output-head matrices, whose rows follow the tokenizer."""
    return 0 if ndim == 2 and any(m in name for m in VOCABULARY_MARKERS) else None


def tied_source(name: str, pre_weights: tuple[str, ...]) -> str | None:
    """The input embedding a tied output head reuses when the checkpoint has no head of its own."""
    if not any(m in name for m in OUTPUT_HEAD_MARKERS):
        return None
    return next((w for w in pre_weights if any(m in w for m in VOCABULARY_MARKERS)), None)


def infer_architecture(names: list[str], config: dict) -> Architecture:
    """Pick the layer stack (the prefix whose index count matches the config), classify the rest."""
    declared = config.get(layer_count_key(config)) if layer_count_key(config) else None
    indices: dict[str, set[int]] = {}
    for name in names:
        parts = split_layer_name(name)
        if parts:
            indices.setdefault(parts[0], set()).add(parts[1])
    prefix = None
    if indices:
        matching = [p for p, idx in indices.items() if declared is not None and max(idx) + 1 == declared]
        counts = Counter({p: len(idx) for p, idx in indices.items()})
        prefix = matching[0] if matching else counts.most_common(1)[0][0]
    suffixes: list[str] = []
    loose: list[str] = []
    for name in names:
        parts = split_layer_name(name)
        if parts and parts[0] == prefix:
            if parts[2] not in suffixes:
                suffixes.append(parts[2])
        else:
            loose.append(name)
    num_layers = declared if declared is not None else (max(indices[prefix]) + 1 if prefix else 0)
    pre = tuple(n for n in loose if any(m in n for m in EMBEDDING_MARKERS) and not any(m in n for m in OUTPUT_HEAD_MARKERS))
    post = tuple(n for n in loose if n not in pre)
    return Architecture(prefix, tuple(suffixes), pre, post, num_layers)

"""``ram`` and ``ramplus_tl``: Reinforced Agent Merging.

Entries changed by a single model are kept whole instead of being diluted by the others' zeros;
entries changed by several models are averaged. ``ramplus_tl`` also boosts each model's unique
entries by how much of its task vector it shares with the others.
"""

from __future__ import annotations

import torch

from .common import require_base
from .registry import MergeInputs, MethodSpec, Param, Scope, promoted_with_float32, register


def _merge(inputs: MergeInputs, boost_unique: bool) -> torch.Tensor:
    base = require_base(inputs)
    others = inputs.others
    if not others:
        return base
    epsilon = inputs.params["epsilon"]
    deltas = torch.stack([x - base for x in others], dim=0).reshape(len(others), -1)
    nonzero = deltas.abs() > epsilon
    count = nonzero.sum(dim=0, keepdim=True)
    overlap = count > 1
    unique = count == 1
    kept = deltas * nonzero

    unique_part = kept * unique
    if boost_unique:
        shared = (nonzero & overlap).sum(dim=1, keepdim=True)
        alone = (nonzero & unique).sum(dim=1, keepdim=True)
        ratio = shared / alone.clamp(min=epsilon)
        unique_part = unique_part * (
            1 + inputs.params["r"] * ratio.clamp(0, inputs.params["alpha"])
        )
    merged = (unique_part + kept * overlap / count.clamp(min=1)).sum(dim=0)
    return base + merged.reshape(base.shape)


def ram(inputs: MergeInputs) -> torch.Tensor:
    return _merge(inputs, boost_unique=False)


def ramplus_tl(inputs: MergeInputs) -> torch.Tensor:
    return _merge(inputs, boost_unique=True)


EPSILON = Param("epsilon", float, Scope.GLOBAL, default=1e-5)

RAM = register(
    MethodSpec(
        name="ram",
        merge=ram,
        params=(EPSILON,),
        requires_base=True,
        pretty_name="RAM",
    )
)

RAMPLUS_TL = register(
    MethodSpec(
        name="ramplus_tl",
        merge=ramplus_tl,
        params=(
            EPSILON,
            Param("r", float, Scope.GLOBAL, default=0.1),
            Param("alpha", float, Scope.GLOBAL, default=0.2),
        ),
        requires_base=True,
        result_dtype=promoted_with_float32,
        pretty_name="RAM+ (TL)",
    )
)

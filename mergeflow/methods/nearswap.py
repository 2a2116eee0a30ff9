"""``nearswap``: take the other model's value where it is close to the base, keep the base's
where they are far apart, with a smooth blend in between controlled by ``t``."""

from __future__ import annotations

import torch

from .common import fail, require_base
from .registry import MergeInputs, MethodSpec, Param, Scope, register


def merge(inputs: MergeInputs) -> torch.Tensor:
    base = require_base(inputs)
    if len(inputs.tensors) == 1:
        return base
    if len(inputs.tensors) != 2:
        raise fail(
            inputs, f"nearswap needs exactly one model besides the base, got {len(inputs.others)}"
        )
    other = inputs.others[0]
    weight = (inputs.params["t"] / (base - other).abs().clamp(min=1e-6)).clamp(0, 1)
    return weight * other + (1 - weight) * base


SPEC = register(
    MethodSpec(
        name="nearswap",
        merge=merge,
        params=(Param("t", float, Scope.GLOBAL, required=True),),
        requires_base=True,
        min_inputs=2,
        max_inputs=2,
        pretty_name="NearSwap",
    )
)

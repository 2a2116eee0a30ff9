"""``passthrough``: copy a single input unchanged, optionally scaled (frankenmerges, layer
stacking). Nothing is computed worth moving to an accelerator."""

from __future__ import annotations

import torch

from .common import fail
from .registry import MergeInputs, MethodSpec, Param, Scope, register


def merge(inputs: MergeInputs) -> torch.Tensor:
    if len(inputs.tensors) != 1:
        raise fail(inputs, f"passthrough takes exactly one input, got {len(inputs.tensors)}")
    scale = inputs.model_params[0]["scale"]
    tensor = inputs.tensors[0]
    return tensor if scale is None else tensor * scale


SPEC = register(
    MethodSpec(
        name="passthrough",
        merge=merge,
        params=(Param("scale", float, Scope.INPUT, default=None),),
        uses_accelerator=False,
        max_inputs=1,
        pretty_name="Passthrough",
    )
)

"""``model_stock``: interpolate between the base and the average of the fine-tunes by a ratio
derived from the angle between their task vectors (Model Stock).

The more the fine-tunes agree in direction, the further the merge moves from the base.
"""

from __future__ import annotations

import itertools

import torch

from .common import fail, require_base
from .registry import MergeInputs, MethodSpec, Param, Scope, register


def merge(inputs: MergeInputs) -> torch.Tensor:
    base = require_base(inputs)
    if len(inputs.tensors) == 1:
        return base
    if len(inputs.tensors) < 3:
        raise fail(inputs, f"model_stock needs at least 3 models, got {len(inputs.tensors)}")
    shape = base.shape
    if inputs.params["filter_wise"]:
        if base.dim() == 1:
            base = base.unsqueeze(0)
        others = [x.reshape(base.shape) for x in inputs.others]
    else:
        base = base.reshape(-1)
        others = [x.reshape(-1) for x in inputs.others]

    offsets = [x - base for x in others]
    cosines = []
    for a, b in itertools.combinations(offsets, 2):
        norms = torch.norm(a, dim=-1) * torch.norm(b, dim=-1)
        cosines.append(((a * b).sum(dim=-1) / norms.clamp(min=1e-6)).clamp(-1, 1))
    cos = torch.stack(cosines).mean(dim=0).unsqueeze(-1)

    n = len(others)
    denominator = 1 + (n - 1) * cos
    ratio = n * cos / denominator
    ratio = torch.where(denominator.abs() < 1e-6, torch.zeros_like(ratio), ratio)
    average = sum(others) / n
    return (ratio * average + (1 - ratio) * base).reshape(shape)


SPEC = register(
    MethodSpec(
        name="model_stock",
        merge=merge,
        params=(Param("filter_wise", bool, Scope.GLOBAL, default=False),),
        requires_base=True,
        min_inputs=3,
        pretty_name="Model Stock",
        reference_url="https://arxiv.org/abs/2403.19522",
    )
)

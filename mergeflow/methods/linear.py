"""``linear``: a weighted average of the inputs (model soup)."""

from __future__ import annotations

import torch

from .common import accumulator_dtype, elementwise_in_chunks
from .registry import MergeInputs, MethodSpec, Param, Scope, register


def merge(inputs: MergeInputs) -> torch.Tensor:
    """mergekit 0.1.5 accumulates in float32 (float64 for float64 inputs) with one ``addcmul_``
    per input in config order, so the weights are rounded to the accumulator, not to the input
    dtype, and the sum is rounded to the input dtype only once."""
    dtype = inputs.tensors[0].dtype
    acc = accumulator_dtype(dtype)
    device = inputs.tensors[0].device
    weights = torch.tensor([p["weight"] for p in inputs.model_params], dtype=acc, device=device)
    total = weights.sum() if inputs.params["normalize"] else None

    def average(tensors: list[torch.Tensor]) -> torch.Tensor:
        result = torch.zeros(tensors[0].shape, dtype=acc, device=device)
        for tensor, weight in zip(tensors, weights):
            result.addcmul_(tensor, weight)
        return result if total is None else result.div_(total)

    return elementwise_in_chunks(average, inputs.tensors, dtype)


SPEC = register(
    MethodSpec(
        name="linear",
        merge=merge,
        params=(
            Param("weight", float, Scope.INPUT, required=True),
            Param("normalize", bool, Scope.GLOBAL, default=True),
        ),
        pretty_name="Linear",
        reference_url="https://arxiv.org/abs/2203.05482",
    )
)

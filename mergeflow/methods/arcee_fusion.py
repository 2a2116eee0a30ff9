"""``arcee_fusion``: take the other model's change only where it is an outlier of importance
(|delta| times the KL divergence of the rows' softmaxes), above median + 1.5 IQR."""

from __future__ import annotations

import torch

from .common import fail, require_base
from .registry import MergeInputs, MethodSpec, promoted_with_float32, register

# Above this many elements mergekit estimates the quantiles from a random sample of this size.
MAX_QUANTILE_SAMPLES = 1_000_000


def _quantiles(inputs: MergeInputs, values: torch.Tensor, qs: tuple[float, ...]) -> list[torch.Tensor]:
    flat = values.flatten()
    if flat.numel() > MAX_QUANTILE_SAMPLES:
        with inputs.random_draws():
            sample = torch.randint(flat.numel(), (MAX_QUANTILE_SAMPLES,), device=flat.device)
        flat = flat[sample]
    ordered = torch.sort(flat).values
    last = torch.tensor(ordered.numel() - 1, dtype=torch.float32)
    return [ordered[int(last * q)] for q in qs]


def merge(inputs: MergeInputs) -> torch.Tensor:
    base = require_base(inputs)
    if len(inputs.tensors) == 1:
        return base
    if len(inputs.tensors) != 2:
        raise fail(inputs, f"arcee_fusion needs exactly 2 models, got {len(inputs.tensors)}")
    other = inputs.others[0]
    p = torch.softmax(other, dim=-1) + 1e-8
    q = torch.softmax(base, dim=-1) + 1e-8
    kl = torch.sum(p * torch.log(p / q), dim=-1, keepdim=True)
    importance = (other - base).abs() * kl
    median, q1, q3 = _quantiles(inputs, importance, (0.5, 0.25, 0.75))
    threshold = median + 1.5 * (q3 - q1)
    mask = (importance >= threshold).float()
    return base + (other - base) * mask


SPEC = register(
    MethodSpec(
        name="arcee_fusion",
        merge=merge,
        requires_base=True,
        min_inputs=2,
        max_inputs=2,
        result_dtype=promoted_with_float32,
        pretty_name="Arcee Fusion",
    )
)

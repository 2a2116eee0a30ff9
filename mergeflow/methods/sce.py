"""``sce``: Select, Calculate, Erase (FuseChat 2.0).

Keeps only the entries where the task vectors disagree most (highest variance across models),
weights each model by the energy of its task vector, and sums only sign-consistent entries.
"""

from __future__ import annotations

import torch

from .common import majority_sign_mask, require_base
from .registry import MergeInputs, MethodSpec, Param, Scope, register


def _variance_mask(deltas: torch.Tensor, select_topk: float) -> torch.Tensor:
    """1 at the ``select_topk`` fraction of non-zero-variance entries with the largest variance."""
    variance = torch.var(deltas, dim=0, unbiased=False)
    mask = torch.zeros_like(variance)
    if select_topk <= 0:
        return mask
    k = int(torch.count_nonzero(variance) * select_topk)
    if k == 0:
        return mask
    top = torch.topk(variance.abs().flatten(), k).indices
    mask.view(-1)[top] = 1
    return mask


def merge(inputs: MergeInputs) -> torch.Tensor:
    base = require_base(inputs)
    others = inputs.others
    if not others:
        return base
    deltas = torch.stack([x - base for x in others], dim=0)
    select_topk = inputs.params["select_topk"]
    if select_topk < 1:
        deltas = deltas * _variance_mask(deltas, select_topk)

    mask = majority_sign_mask(deltas, inputs.params["int8_mask"])
    energy = torch.mean(deltas**2, dim=tuple(range(1, deltas.dim())))
    total = energy.sum().item()
    if abs(total) < 1e-6:
        energy = torch.ones_like(energy) / len(others)
    else:
        energy = energy / total
    erase = energy.view((-1,) + (1,) * base.dim()) * mask
    merged = (deltas * erase).sum(dim=0) / erase.sum(dim=0).clamp(min=1e-6)
    return base + merged


SPEC = register(
    MethodSpec(
        name="sce",
        merge=merge,
        params=(
            Param("int8_mask", bool, Scope.GLOBAL, default=False),
            Param("select_topk", float, Scope.GLOBAL, default=1.0),
        ),
        requires_base=True,
        pretty_name="SCE",
        reference_url="https://arxiv.org/abs/2408.07990",
    )
)

"""Spherical interpolation: ``slerp`` (two models), ``nuslerp`` (weighted, row-wise or flat) and
``multislerp`` (any number of models on the hypersphere).

Interpolating along the great circle keeps the norm of the parameters from shrinking the way a
straight average does when two models point in different directions.
"""

from __future__ import annotations

import torch

from .common import accumulator_dtype, fail, require_base
from .registry import MergeInputs, MethodSpec, Param, Scope, register

# mergekit 0.1.5 streams slerp over chunks of this many elements; norms, the dot product and
# the output are therefore reduced and rounded chunk by chunk.
SLERP_CHUNK = 1 << 20
# Above this |cos| the two directions count as colinear and slerp falls back to lerp.
DOT_THRESHOLD = 0.9995


def _chunked_norm(flat: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    parts = [torch.linalg.vector_norm(c.to(acc), dim=-1) for c in flat.split(SLERP_CHUNK, dim=-1)]
    norm = torch.linalg.vector_norm(torch.stack(parts), dim=0)
    return torch.where(norm <= 1e-8, torch.ones_like(norm), norm)


def slerp(inputs: MergeInputs) -> torch.Tensor:
    if len(inputs.tensors) == 1:
        return inputs.tensors[0]
    base = require_base(inputs)
    if len(inputs.tensors) != 2:
        raise fail(inputs, f"slerp needs exactly 2 models, got {len(inputs.tensors)}")
    other = inputs.others[0]
    dtype = base.dtype
    acc = accumulator_dtype(dtype)
    a = base.reshape(1, -1)
    b = other.reshape(1, -1)
    t = torch.tensor(inputs.params["t"], dtype=acc, device=a.device)

    norm_a = _chunked_norm(a, acc)
    norm_b = _chunked_norm(b, acc)
    dot = torch.zeros((), dtype=acc, device=a.device)
    for ca, cb in zip(a.split(SLERP_CHUNK, dim=-1), b.split(SLERP_CHUNK, dim=-1)):
        dot = dot + ((ca.to(acc) / norm_a) * (cb.to(acc) / norm_b)).sum()
    dot = dot.clamp(-1.0, 1.0)

    linear = dot.abs() > DOT_THRESHOLD
    theta = torch.acos(torch.where(linear, torch.zeros_like(dot), dot))
    sin_theta = torch.sin(theta)
    coef_a = torch.where(linear, 1 - t, torch.sin((1 - t) * theta) / sin_theta)
    coef_b = torch.where(linear, t, torch.sin(t * theta) / sin_theta)

    result = torch.empty_like(a)
    for out, ca, cb in zip(
        result.split(SLERP_CHUNK, dim=-1),
        a.split(SLERP_CHUNK, dim=-1),
        b.split(SLERP_CHUNK, dim=-1),
    ):
        out.copy_(coef_a * ca.to(acc) + coef_b * cb.to(acc))
    return result.reshape(base.shape)


def _pair_weight(inputs: MergeInputs) -> float:
    """The interpolation point t = w1 / (w0 + w1), in Python doubles as mergekit computes it."""
    w0, w1 = (p["weight"] for p in inputs.other_params)
    total = w0 + w1
    return 0.5 if abs(total) < 1e-6 else w1 / total


def _nuslerp_pair(
    t: float, a: torch.Tensor, b: torch.Tensor, flatten: bool, row_wise: bool
) -> torch.Tensor:
    shape = a.shape
    if flatten:
        a, b = a.reshape(-1), b.reshape(-1)
    elif row_wise:
        a, b = a.transpose(0, -1), b.transpose(0, -1)

    def unit(x: torch.Tensor) -> torch.Tensor:
        return x / torch.norm(x, dim=-1, keepdim=True).clamp(min=1e-7)

    cos = (unit(a) * unit(b)).sum(dim=-1, keepdim=True).clamp(-1.0, 1.0)
    colinear = 1 - cos * cos <= 1e-16
    theta = torch.acos(torch.where(colinear, torch.zeros_like(cos), cos))
    lerp = (1 - t) * a + t * b
    slerped = (torch.sin((1 - t) * theta) * a + torch.sin(t * theta) * b) / torch.sin(theta)
    result = torch.where(colinear, lerp, slerped)
    if not flatten and row_wise:
        result = result.transpose(0, -1)
    return result.reshape(shape)


def nuslerp(inputs: MergeInputs) -> torch.Tensor:
    if len(inputs.tensors) == 1:
        return inputs.tensors[0]
    others = inputs.others
    if len(others) != 2:
        raise fail(inputs, f"nuslerp needs exactly 2 models besides the base, got {len(others)}")
    t = _pair_weight(inputs)
    flatten = inputs.params["nuslerp_flatten"]
    row_wise = inputs.params["nuslerp_row_wise"]
    base = inputs.base
    if base is None:
        return _nuslerp_pair(t, others[0], others[1], flatten, row_wise)
    return base + _nuslerp_pair(t, others[0] - base, others[1] - base, flatten, row_wise)


def multislerp(inputs: MergeInputs) -> torch.Tensor:
    if len(inputs.tensors) == 1:
        return inputs.tensors[0]
    others = inputs.others
    if len(others) == 1:
        # mergekit returns a lone fine-tune as is, rather than interpolating it with itself.
        return others[0]
    base = inputs.base
    eps = inputs.params["eps"]
    stacked = torch.stack(others, dim=0)
    if base is not None:
        stacked = stacked - base
    flat = stacked.reshape(len(others), -1)

    weights = torch.tensor(
        [p["weight"] for p in inputs.other_params], dtype=stacked.dtype, device=stacked.device
    )
    if inputs.params["normalize_weights"]:
        weights = weights / weights.sum()
    weights = weights.unsqueeze(-1)

    norms = torch.norm(flat, dim=-1, keepdim=True)
    units = flat / (norms + eps)
    mean = (units * weights).sum(dim=0)
    mean_norm = torch.norm(mean)
    if mean_norm < eps:
        if len(others) != 2:
            raise fail(inputs, "multislerp: the weighted mean direction is zero")
        result = stacked[0] * weights[0] + stacked[1] * weights[1]
    else:
        mean = mean / mean_norm
        dots = (units * mean).sum(dim=-1, keepdim=True)
        tangents = units - dots * mean
        tangent = (tangents * weights).sum(dim=0)
        tangent_norm = torch.norm(tangent) + eps
        result = mean * torch.cos(tangent_norm) + tangent * (torch.sin(tangent_norm) / tangent_norm)
        result = (result * (norms * weights).sum()).reshape(stacked.shape[1:])
    return result if base is None else result + base


SLERP = register(
    MethodSpec(
        name="slerp",
        merge=slerp,
        params=(Param("t", float, Scope.GLOBAL, required=True),),
        requires_base=True,
        min_inputs=2,
        max_inputs=2,
        pretty_name="SLERP",
        reference_url="https://en.wikipedia.org/wiki/Slerp",
    )
)

NUSLERP = register(
    MethodSpec(
        name="nuslerp",
        merge=nuslerp,
        params=(
            Param("weight", float, Scope.MODEL, required=True),
            Param("nuslerp_flatten", bool, Scope.GLOBAL, default=True),
            Param("nuslerp_row_wise", bool, Scope.GLOBAL, default=False),
        ),
        min_others=2,
        max_others=2,
        pretty_name="NuSLERP",
    )
)

MULTISLERP = register(
    MethodSpec(
        name="multislerp",
        merge=multislerp,
        params=(
            Param("weight", float, Scope.MODEL, required=True),
            Param("normalize_weights", bool, Scope.GLOBAL, default=True),
            Param("eps", float, Scope.GLOBAL, default=1e-8),
        ),
        min_others=1,
        pretty_name="Multi-SLERP",
    )
)

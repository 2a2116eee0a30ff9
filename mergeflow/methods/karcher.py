"""``karcher``: the Riemannian (Karcher) mean of the inputs' directions on the unit sphere,
scaled back by their mean norm.

Every input counts equally, the base included, so this is a symmetric average that, unlike a
straight mean, does not shrink when the models point in different directions.
"""

from __future__ import annotations

import torch

from .common import accumulator_dtype
from .registry import MergeInputs, MethodSpec, Param, Scope, register


def _norm(x: torch.Tensor) -> torch.Tensor:
    """A 0-d float32 (float64) norm. Dividing or scaling by it keeps the tensor's own dtype,
    since a 0-d tensor does not promote a dimensioned one: the rounding mergekit 0.1.5 has."""
    return torch.linalg.vector_norm(x.to(accumulator_dtype(x.dtype)))


def merge(inputs: MergeInputs) -> torch.Tensor:
    max_iter = inputs.params["max_iter"]
    tol = inputs.params["tol"]
    tensors = inputs.tensors
    if len(tensors) == 1:
        return tensors[0]  # mergekit returns a lone input as is, unscaled and unrounded
    alpha = 1.0 / len(tensors)

    norms = [_norm(x) for x in tensors]
    units = [torch.zeros_like(x) if n == 0 else x / n for x, n in zip(tensors, norms)]
    valid = [i for i, n in enumerate(norms) if n > tol]
    if not valid:
        return torch.zeros_like(tensors[0])
    weight = alpha / sum(alpha for _ in valid)  # renormalised over the valid inputs

    u = torch.zeros_like(tensors[0])
    for i in valid:
        u += weight * units[i]
    u_norm = _norm(u)
    u = units[valid[0]] if u_norm < tol else u / u_norm

    for _ in range(max_iter):
        tangent = torch.zeros_like(u)
        for i in valid:
            cos = torch.dot(u.flatten(), units[i].flatten()).clamp(-1.0, 1.0)
            theta = torch.arccos(cos)
            if theta < tol:
                continue
            tangent += weight * (theta / torch.sin(theta)) * (units[i] - cos * u)
        tangent_norm = _norm(tangent)
        if tangent_norm < tol:
            break
        step = torch.sin(tangent_norm) * (tangent / tangent_norm)
        u = torch.cos(tangent_norm) * u + step
        u_norm = _norm(u)
        if u_norm > tol:
            u = u / u_norm

    scale = sum(alpha * n for n in norms)
    return scale * u


SPEC = register(
    MethodSpec(
        name="karcher",
        merge=merge,
        params=(
            Param("max_iter", int, Scope.GLOBAL, default=10),
            Param("tol", float, Scope.GLOBAL, default=1e-5),
        ),
        pretty_name="Karcher Mean",
        reference_url="https://en.wikipedia.org/wiki/Karcher_mean",
    )
)

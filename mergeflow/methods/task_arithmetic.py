"""Generalised task arithmetic (mergekit-semantics §7.6): task_arithmetic, ties, dare_ties,
dare_linear, breadcrumbs, breadcrumbs_ties, della and della_linear.

All eight add a weighted sum of task vectors (model minus base) back onto the base. They differ
only in how each task vector is sparsified first and whether a TIES sign election decides which
entries may add up, so they share one implementation and differ by two knobs.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, Mapping

import torch

from . import sparsify
from .common import fail, majority_sign_mask, require_base
from .registry import MergeInputs, MethodSpec, Param, Scope, register

Sparsifier = Callable[[torch.Tensor, Mapping[str, Any], bool], torch.Tensor]


def _magnitude(delta: torch.Tensor, params: Mapping[str, Any], rescale: bool) -> torch.Tensor:
    return sparsify.magnitude(delta, params["density"], rescale)


def _outliers(delta: torch.Tensor, params: Mapping[str, Any], rescale: bool) -> torch.Tensor:
    return sparsify.magnitude_outliers(delta, params["density"], params["gamma"], rescale)


def _bernoulli(delta: torch.Tensor, params: Mapping[str, Any], rescale: bool) -> torch.Tensor:
    return sparsify.bernoulli(delta, params["density"], rescale)


def _della(delta: torch.Tensor, params: Mapping[str, Any], rescale: bool) -> torch.Tensor:
    return sparsify.della_magprune(delta, params["density"], params["epsilon"], rescale)


def merge(inputs: MergeInputs, sparsifier: Sparsifier | None, sign_consensus: bool) -> torch.Tensor:
    """Each delta is sparsified as soon as it is computed, in config order, which fixes the
    order of the random draws; the weights are rounded to the merge dtype, as in mergekit."""
    base = require_base(inputs)
    rescale = inputs.params["rescale"]
    deltas = []
    for tensor, params in zip(inputs.others, inputs.other_params):
        delta = tensor - base
        if sparsifier is not None:
            try:
                delta = sparsifier(delta, params, rescale)
            except ValueError as exc:
                raise fail(inputs, str(exc)) from exc
        deltas.append(delta)
    if not deltas:
        return base

    stacked = torch.stack(deltas, dim=0)
    weights = torch.tensor(
        [p["weight"] for p in inputs.other_params], dtype=stacked.dtype, device=stacked.device
    )
    weights = weights.view((-1,) + (1,) * base.dim())
    weighted = stacked * weights

    if sign_consensus:
        mask = majority_sign_mask(weighted, inputs.params["int8_mask"])
        mixed = (weighted * mask).sum(dim=0)
        divisor = (weights * mask).sum(dim=0)
        divisor[divisor == 0] = 1
    else:
        mixed = weighted.sum(dim=0)
        divisor = weights.sum(dim=0)
        divisor[divisor.abs() < 1e-8] = 1

    if inputs.params["normalize"]:
        mixed = mixed / divisor
    if inputs.params["lambda"] != 1:
        mixed = mixed * inputs.params["lambda"]
    return base + mixed


def _register(
    name: str,
    pretty_name: str,
    reference_url: str,
    *,
    sparsifier: Sparsifier | None = None,
    sign_consensus: bool = False,
    normalize: bool = False,
    rescale: bool = False,
    extra: tuple[Param, ...] = (),
) -> MethodSpec:
    params = (
        Param("weight", float, Scope.MODEL, required=True),
        Param("density", float, Scope.MODEL, default=1.0),
        *extra,
        Param("int8_mask", bool, Scope.GLOBAL, default=False),
        Param("normalize", bool, Scope.GLOBAL, default=normalize),
        Param("rescale", bool, Scope.GLOBAL, default=rescale),
        Param("lambda", float, Scope.GLOBAL, default=1.0),
    )
    return register(
        MethodSpec(
            name=name,
            merge=partial(merge, sparsifier=sparsifier, sign_consensus=sign_consensus),
            params=params,
            requires_base=True,
            draws_random=sparsifier in (_bernoulli, _della),
            pretty_name=pretty_name,
            reference_url=reference_url,
        )
    )


TASK_ARITHMETIC_URL = "https://arxiv.org/abs/2212.04089"
TIES_URL = "https://arxiv.org/abs/2306.01708"
DARE_URL = "https://arxiv.org/abs/2311.03099"
BREADCRUMBS_URL = "https://arxiv.org/abs/2312.06795"
DELLA_URL = "https://arxiv.org/abs/2406.11617"
GAMMA = (Param("gamma", float, Scope.MODEL, default=0.01),)
EPSILON = (Param("epsilon", float, Scope.MODEL, default=0.15),)

_register("task_arithmetic", "Task Arithmetic", TASK_ARITHMETIC_URL)
_register("ties", "TIES", TIES_URL, sparsifier=_magnitude, sign_consensus=True, normalize=True)
_register(
    "dare_ties", "DARE TIES", DARE_URL, sparsifier=_bernoulli, sign_consensus=True, rescale=True
)
_register("dare_linear", "Linear DARE", DARE_URL, sparsifier=_bernoulli, rescale=True)
_register("breadcrumbs", "Model Breadcrumbs", BREADCRUMBS_URL, sparsifier=_outliers, extra=GAMMA)
_register(
    "breadcrumbs_ties",
    "Model Breadcrumbs with TIES",
    BREADCRUMBS_URL,
    sparsifier=_outliers,
    sign_consensus=True,
    extra=GAMMA,
)
_register(
    "della",
    "DELLA",
    DELLA_URL,
    sparsifier=_della,
    sign_consensus=True,
    normalize=True,
    rescale=True,
    extra=EPSILON,
)
_register("della_linear", "Linear DELLA", DELLA_URL, sparsifier=_della, rescale=True, extra=EPSILON)

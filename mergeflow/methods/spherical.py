"""Spherical interpolation: ``slerp`` (two models), ``nuslerp`` (weighted, row-wise or flat) and
``multislerp`` (any number of models on the hypersphere).

Interpolating along the great circle keeps the norm of the parameters from shrinking the way a
straight average does when two models point in different directions.
"""

from __future__ import annotations

import functools
import logging

import torch

from .common import BIT_VIEWS, NATIVE_KINDS, accumulator_dtype, fail, probe_rows, require_base
from .registry import MergeInputs, MethodSpec, Param, Scope, register

try:
    from . import _elementwise
except ImportError:  # built optionally (setup.py): without a compiler, torch's operations
    _elementwise = None

log = logging.getLogger("mergeflow")

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
    kind = _native_kind(a, b)
    products = torch.empty((1, min(SLERP_CHUNK, a.shape[1])), dtype=acc) if kind is not None else None
    dot = torch.zeros((), dtype=acc, device=a.device)
    for ca, cb in zip(a.split(SLERP_CHUNK, dim=-1), b.split(SLERP_CHUNK, dim=-1)):
        dot = dot + _normalised_products(ca, cb, norm_a, norm_b, kind, products).sum()
    dot = dot.clamp(-1.0, 1.0)

    linear = dot.abs() > DOT_THRESHOLD
    theta = torch.acos(torch.where(linear, torch.zeros_like(dot), dot))
    sin_theta = torch.sin(theta)
    coef_a = torch.where(linear, 1 - t, torch.sin((1 - t) * theta) / sin_theta)
    coef_b = torch.where(linear, t, torch.sin(t * theta) / sin_theta)

    result = torch.empty_like(a)
    if kind is None or not _interpolate_natively(kind, a, b, coef_a, coef_b, result):
        for out, ca, cb in zip(
            result.split(SLERP_CHUNK, dim=-1),
            a.split(SLERP_CHUNK, dim=-1),
            b.split(SLERP_CHUNK, dim=-1),
        ):
            out.copy_(_interpolated(coef_a, ca, coef_b, cb))
    return result.reshape(base.shape)


def _scaled_products(ca: torch.Tensor, cb: torch.Tensor, norm_a: torch.Tensor, norm_b: torch.Tensor) -> torch.Tensor:
    """One chunk's terms of mergekit's dot product of the unit vectors."""
    acc = norm_a.dtype
    return (ca.to(acc) / norm_a) * (cb.to(acc) / norm_b)


def _interpolated(coef_a: torch.Tensor, ca: torch.Tensor, coef_b: torch.Tensor, cb: torch.Tensor) -> torch.Tensor:
    acc = coef_a.dtype
    return coef_a * ca.to(acc) + coef_b * cb.to(acc)


# The native passes (``_elementwise.c``) make the same float operations per element as the two
# functions above, in one pass and without temporaries; the sums over a chunk stay torch's.


def _native_kind(a: torch.Tensor, b: torch.Tensor) -> int | None:
    """The kernels' number for the inputs' dtype, or None where they do not apply (not built or
    not matching torch here, an accelerator, float64, mixed dtypes)."""
    kind = NATIVE_KINDS.get(a.dtype)
    if kind is None or b.dtype != a.dtype or a.device.type != "cpu" or not a.is_contiguous() or not b.is_contiguous():
        return None
    return kind if native_slerp_matches_torch() else None


def _normalised_products(ca, cb, norm_a, norm_b, kind: int | None, products: torch.Tensor | None) -> torch.Tensor:
    """:func:`_scaled_products`, natively into ``products`` where the kernel applies and every
    term is finite (a NaN's or inf's bits are torch's kernels' to decide). On one thread: torch's
    parallel sum runs between two chunks, and its OpenMP workers spin for a while after it, on the
    cores a split would want (on 2 cores a split made this pass 3-5x slower)."""
    if kind is not None:
        out = products[:, : ca.shape[1]]
        if _elementwise.scaled_products(kind, ca.numel(), ca.data_ptr(), cb.data_ptr(), norm_a.item(), norm_b.item(), out.data_ptr(), 1):
            return out
    return _scaled_products(ca, cb, norm_a, norm_b)


def _interpolate_natively(kind: int, a: torch.Tensor, b: torch.Tensor, coef_a: torch.Tensor, coef_b: torch.Tensor, out: torch.Tensor) -> bool:
    """:func:`_interpolated` of the whole tensors into ``out``; False when a result is not finite."""
    return _elementwise.interpolate(kind, a.numel(), a.data_ptr(), b.data_ptr(), coef_a.item(), coef_b.item(),
                                    out.data_ptr(), torch.get_num_threads())


@functools.cache
def native_slerp_matches_torch() -> bool:
    """Whether the kernels are built and give torch's bits on probes: zeros of both signs,
    subnormals, negative and zero factors, every dtype they read, and a tail shorter than a
    vector block."""
    if _elementwise is None:
        return False
    generator = torch.Generator().manual_seed(0)
    factors = [(0.25, 0.75), (-0.3, 1.7), (0.0, 1.0), (1.0, -0.0), (3.1e-5, 2.9)]  # finite in float16
    for dtype, kind in NATIVE_KINDS.items():
        a, b = probe_rows(generator, (2, 1, 4099), dtype)
        for x, y in factors:
            coef_a, coef_b = torch.tensor(x), torch.tensor(y)
            interpolated = torch.empty_like(a)
            products = torch.empty(a.shape)
            norm_a, norm_b = abs(coef_a) + 0.5, abs(coef_b) + 1.5
            if (not _interpolate_natively(kind, a, b, coef_a, coef_b, interpolated)
                    or not torch.equal(interpolated.view(BIT_VIEWS[dtype]), _interpolated(coef_a, a, coef_b, b).to(dtype).view(BIT_VIEWS[dtype]))
                    or not _elementwise.scaled_products(kind, a.numel(), a.data_ptr(), b.data_ptr(), norm_a.item(), norm_b.item(), products.data_ptr(), 1)
                    or not torch.equal(products.view(torch.int32), _scaled_products(a, b, norm_a, norm_b).view(torch.int32))):
                log.warning("the native slerp kernels do not match this torch; interpolating with torch (slower)")
                return False
    return True


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

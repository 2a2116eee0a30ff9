"""``linear``: a weighted average of the inputs (model soup)."""

from __future__ import annotations

import functools
import logging

import torch

from .common import BIT_VIEWS, NATIVE_KINDS, accumulator_dtype, elementwise_in_chunks, probe_rows
from .registry import MergeInputs, MethodSpec, Param, Scope, register

try:
    from . import _elementwise
except ImportError:  # built optionally (setup.py): without a compiler, torch's operations
    _elementwise = None

log = logging.getLogger("mergeflow")


def merge(inputs: MergeInputs) -> torch.Tensor:
    """mergekit 0.1.5 accumulates in float32 (float64 for float64 inputs) with one ``addcmul_``
    per input in config order, so the weights are rounded to the accumulator, not to the input
    dtype, and the sum is rounded to the input dtype only once. Natively in one pass where the
    kernel applies (:func:`_sum_natively`), else with those operations chunk by chunk."""
    dtype = inputs.tensors[0].dtype
    acc = accumulator_dtype(dtype)
    device = inputs.tensors[0].device
    weights = torch.tensor([p["weight"] for p in inputs.model_params], dtype=acc, device=device)
    total = weights.sum() if inputs.params["normalize"] else None
    summed = _sum_natively(inputs.tensors, weights, total)
    if summed is not None:
        return summed
    return elementwise_in_chunks(_mergekit_average(weights, total), inputs.tensors, dtype)


def _mergekit_average(weights: torch.Tensor, total: torch.Tensor | None):
    """mergekit's operations over equal slices of the inputs."""

    def average(tensors: list[torch.Tensor]) -> torch.Tensor:
        result = torch.zeros(tensors[0].shape, dtype=weights.dtype, device=weights.device)
        for tensor, weight in zip(tensors, weights):
            result.addcmul_(tensor, weight)
        return result if total is None else result.div_(total)

    return average


_MAX_NATIVE_INPUTS = 64


def _sum_natively(tensors, weights: torch.Tensor, total: torch.Tensor | None) -> torch.Tensor | None:
    """The average by the native kernel (``_elementwise.c``): each input's fused multiply-add in
    order, as ``addcmul_`` makes it, in one pass without temporaries. None where it does not apply
    (not built or not matching torch here, a CPU without FMA, an accelerator, float64, over 64
    inputs) or a result is not finite, whose bits only torch's own kernels decide."""
    first = tensors[0]
    kind = NATIVE_KINDS.get(first.dtype)
    if (kind is None or first.device.type != "cpu" or len(tensors) > _MAX_NATIVE_INPUTS
            or any(t.shape != first.shape or t.dtype != first.dtype for t in tensors) or not native_linear_matches_torch()):
        return None
    return _native(kind, tensors, weights, total)


def _native(kind: int, tensors, weights: torch.Tensor, total: torch.Tensor | None) -> torch.Tensor | None:
    """The kernel's call itself, without the checks of when it applies (the probe calls it too)."""
    tensors = [t.contiguous() for t in tensors]
    out = torch.empty_like(tensors[0])
    finite = _elementwise.weighted_sum(kind, out.numel(), tuple(t.data_ptr() for t in tensors), tuple(weights.tolist()),
                                       total is not None, 1.0 if total is None else total.item(), out.data_ptr(), torch.get_num_threads())
    return out if finite else None


@functools.cache
def native_linear_matches_torch() -> bool:
    """Whether the kernel is built, this CPU has fused multiply-adds, and it gives torch's bits on
    probes: sums over 1 to 6 inputs that cancel, zeros of both signs, subnormals, zero and negative
    weights, normalised or not, every dtype it reads, and a tail shorter than a vector block."""
    if _elementwise is None:
        return False
    generator = torch.Generator().manual_seed(0)
    for dtype, kind in NATIVE_KINDS.items():
        for count in range(1, 7):
            rows = probe_rows(generator, (count, 4099), dtype)
            weights = torch.tensor([0.3, -0.5, 1.0, 0.0, 0.7, 0.15][:count])
            for total in (weights.sum() if weights.sum() != 0 else None, None):
                expected = _mergekit_average(weights, total)(list(rows)).to(dtype)
                native = _native(kind, list(rows), weights, total)
                if native is None or not torch.equal(native.view(BIT_VIEWS[dtype]), expected.view(BIT_VIEWS[dtype])):
                    log.warning("the native linear kernel does not apply or does not match this torch; averaging with torch (slower)")
                    return False
    return True


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

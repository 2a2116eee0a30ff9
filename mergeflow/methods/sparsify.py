"""Sparsifiers for task vectors (mergekit-semantics §8), shared by the GTA family.

Each one keeps a ``density`` fraction of a delta and, when asked, rescales what is left so that
its L1 norm matches the original: mergekit preserves the L1 norm rather than dividing by the
keep probability.

The random ones (DARE, DELLA) come in three parts: the keep probabilities, the draw
(:func:`masked_draw`) and the step that applies it, so that a caller can compute the expensive,
deterministic parts of several tensors at once and still draw their masks in order.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Callable

import torch

from mergeflow.methods.common import BIT_VIEWS, NATIVE_KINDS
from mergeflow.methods.introsort import argsort_magnitudes, magnitude_window, stable_magnitude_window

try:
    from mergeflow.methods import _elementwise
except ImportError:  # built optionally (setup.py): without a compiler, torch's operations
    _elementwise = None

log = logging.getLogger("mergeflow")


def _rescaled(delta: torch.Tensor, mask: torch.Tensor, rescale: bool) -> torch.Tensor:
    masked = apply_mask(delta, mask)
    if not rescale:
        return masked
    before = delta.abs().sum()
    after = masked.abs().sum()
    if before < 1e-7 or after < 1e-7:
        return masked
    return masked * (before / after)


def apply_mask(delta: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``delta * mask``; for a bool mask on CPU natively, with the same bits (torch multiplies by
    bools through a slow kernel), unless a value is not finite."""
    kind = NATIVE_KINDS.get(delta.dtype)
    if (kind is not None and mask.dtype == torch.bool and delta.device.type == "cpu" and mask.shape == delta.shape
            and native_masking_matches_torch()):
        values, keep = delta.contiguous(), mask.contiguous()
        out = torch.empty_like(values)
        if _elementwise.masked(kind, values.numel(), values.data_ptr(), keep.data_ptr(), out.data_ptr(), torch.get_num_threads()):
            return out
    return delta * mask


@functools.cache
def native_masking_matches_torch() -> bool:
    """Whether the kernel is built and masks as torch multiplies, on probes with zeros of both
    signs and subnormals, in every dtype it reads."""
    if _elementwise is None:
        return False
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(4099, generator=generator)
    values[::7], values[1::7], values[2::7] = 0.0, -0.0, -(2.0**-133)
    values[3::7] = 2.0**-24
    mask = torch.rand(4099, generator=generator) < 0.5
    for dtype, kind in NATIVE_KINDS.items():
        typed = values.to(dtype)
        out = torch.empty_like(typed)
        if not _elementwise.masked(kind, 4099, typed.data_ptr(), mask.data_ptr(), out.data_ptr(), 1) or not torch.equal(out.view(BIT_VIEWS[dtype]), (typed * mask).view(BIT_VIEWS[dtype])):
            log.warning("the native masking kernel does not match this torch; masking with torch (slower)")
            return False
    return True


def _work_dtype(delta: torch.Tensor) -> torch.dtype:
    """Random masks are drawn in float32 on CPU, except for bfloat16 (mergekit PR #69)."""
    if delta.device.type != "cpu" or delta.dtype == torch.bfloat16:
        return delta.dtype
    return torch.float32


@dataclass(frozen=True)
class SortWindow:
    """The entries that mergekit's sort of a delta's magnitudes puts at positions [start, stop)."""

    start: int
    stop: int
    descending: bool


# What a magnitude sparsifier keeps of a delta, besides a SortWindow: every entry, or none (zeros).
KEEP_ALL, KEEP_NONE = "all", "none"
Selection = SortWindow | str


def magnitude_selection(count: int, density: float) -> Selection:
    """TIES trimming: the ``density`` fraction of a delta's ``count`` entries with the largest
    magnitudes, at least one (mergekit 0.1.5's ``max(1, k)``; none of an empty delta)."""
    if density >= 1:
        return KEEP_ALL
    if density <= 0:
        return KEEP_NONE
    return SortWindow(0, min(count, max(1, int(density * count))), descending=True)


def outlier_selection(count: int, density: float, gamma: float) -> Selection:
    """Model Breadcrumbs: without the ``gamma`` fraction of largest entries and as many of the
    smallest as needed to keep ``density`` of the tensor (globally, not per row)."""
    if density >= 1:
        return KEEP_ALL
    keep = int(density * count)
    top = int(gamma * count)
    bottom = max(0, count - keep - top)
    return SortWindow(bottom, bottom + keep, descending=False)


def keep_selected(delta: torch.Tensor, selection: Selection, rescale: bool, fast: bool = False) -> torch.Tensor:
    """``delta`` with only the ``selection``'s entries kept.

    Exact mode keeps the entries mergekit's unstable argsort puts in the window; its choice among
    equal magnitudes decides the mask (:func:`magnitude_window`). ``fast`` selects the same count by
    threshold and, among entries equal to a boundary, keeps the lowest flat indices (a stable
    sort's choice): same magnitudes kept, ties may differ.
    """
    if selection == KEEP_ALL:
        return delta
    if selection == KEEP_NONE:
        return torch.zeros_like(delta)
    window = stable_magnitude_window if fast else magnitude_window
    inside = window(delta, selection.start, selection.stop, selection.descending)
    return _rescaled(delta, inside.view(delta.shape), rescale)


def magnitude(delta: torch.Tensor, density: float, rescale: bool, fast: bool = False) -> torch.Tensor:
    """TIES trimming of ``delta`` (:func:`magnitude_selection`, :func:`keep_selected`)."""
    return keep_selected(delta, magnitude_selection(delta.numel(), density), rescale, fast)


def magnitude_outliers(delta: torch.Tensor, density: float, gamma: float, rescale: bool, fast: bool = False):
    """Model Breadcrumbs' trimming of ``delta`` (:func:`outlier_selection`, :func:`keep_selected`)."""
    return keep_selected(delta, outlier_selection(delta.numel(), density, gamma), rescale, fast)


def bernoulli_probabilities(delta: torch.Tensor, density: float) -> torch.Tensor:
    """DARE's keep probability, the same for every entry: ``density`` as a 0-dim tensor in the
    working dtype (so a bfloat16 density is rounded first, as in mergekit)."""
    return torch.tensor(density, dtype=_work_dtype(delta), device=delta.device)


def della_probabilities(delta: torch.Tensor, density: float, epsilon: float) -> torch.Tensor:
    """DELLA's keep probabilities, rising with each entry's magnitude rank in its row from
    ``density - epsilon`` for the smallest to ``density + epsilon`` for the largest; a vector
    is one row."""
    if not (0 < density - epsilon and density + epsilon < 1):
        raise ValueError(
            f"della needs 0 < density - epsilon and density + epsilon < 1 "
            f"(density={density}, epsilon={epsilon})"
        )
    work = _work_dtype(delta)
    x = delta.to(work)
    if x.dim() == 1:
        x = x.unsqueeze(0)
    order = argsort_magnitudes(x.abs(), dim=1)
    # mergekit ranks with a second argsort and maps each rank to a probability, element by
    # element. The ranks of a row are a permutation of 1..width, so the same operations on
    # that one vector give every probability a row can hold (bit for bit: they are elementwise,
    # and the row minimum and maximum are its first and last entry), and one scatter puts them
    # in place, without a second sort. (The positions run along dim 1 whatever the rank: fused
    # expert tensors are 3-D.)
    width = order.shape[1]
    ranks = torch.arange(width, device=order.device).to(work) + 1
    ranks = ((ranks - ranks.min()) / (ranks.max() - ranks.min())).clamp(0, 1)
    by_rank = (density - epsilon) + ranks * 2 * epsilon
    by_rank = by_rank.view([1, width] + [1] * (order.dim() - 2)).expand_as(order)
    return torch.empty(order.shape, dtype=work, device=order.device).scatter_(1, order, by_rank)


def masked_draw(delta: torch.Tensor, probabilities: torch.Tensor, rescale: bool) -> Callable[[], torch.Tensor]:
    """Draw a keep mask from ``probabilities`` with torch's global generator, the only part that
    must run in the caller's (plan) order; returns the step that applies it to ``delta`` and
    L1-rescales, which draws nothing and may run concurrently with other tensors' draws.

    On CPU ``torch.bernoulli`` keeps an entry when one float32 uniform, drawn in entry order,
    is below its probability: drawing those uniforms (``torch.rand``) consumes the same stream
    and is faster. Where that has not been checked to hold, the mask itself is drawn. A 0-dim
    ``probabilities`` applies to every entry of ``delta``."""
    shape = probabilities.shape if probabilities.dim() else delta.shape
    if probabilities.device.type == "cpu" and uniforms_match_bernoulli():
        uniforms = torch.rand(shape, dtype=torch.float32)

        def keep() -> torch.Tensor:
            return uniforms < probabilities  # compared in float32, uncopied
    else:
        mask = torch.bernoulli(probabilities.expand(shape).contiguous())

        def keep() -> torch.Tensor:
            return mask

    def apply() -> torch.Tensor:
        x = delta.to(probabilities.dtype).reshape(shape)
        return _rescaled(x, keep(), rescale).to(delta.dtype).reshape(delta.shape)

    return apply


@functools.cache
def uniforms_match_bernoulli() -> bool:
    """Whether this torch's CPU ``bernoulli`` keeps exactly the entries whose ``rand`` uniform is
    below the probability, consuming the generator alike (probability dtypes of DARE and DELLA,
    lengths around vector widths and a large one)."""
    for dtype in (torch.float32, torch.bfloat16):
        for n in (1, 15, 16, 17, 1023, 200_003):
            probabilities = torch.linspace(0, 1, n).to(dtype)
            by_bernoulli, by_uniforms = torch.Generator().manual_seed(n), torch.Generator().manual_seed(n)
            mask = torch.bernoulli(probabilities, generator=by_bernoulli)
            kept = torch.rand(n, generator=by_uniforms) < probabilities.float()
            if not torch.equal(mask.bool(), kept) or not torch.equal(by_bernoulli.get_state(), by_uniforms.get_state()):
                return False
    return True


def bernoulli(delta: torch.Tensor, density: float, rescale: bool) -> torch.Tensor:
    """DARE: drop each entry independently with probability ``1 - density``."""
    if density >= 1:
        return delta
    return masked_draw(delta, bernoulli_probabilities(delta, density), rescale)()


def della_magprune(delta: torch.Tensor, density: float, epsilon: float, rescale: bool):
    """DELLA: drop entries with a probability that falls with their magnitude rank in the row."""
    if density >= 1:
        return delta
    if density <= 0:
        return torch.zeros_like(delta)
    return masked_draw(delta, della_probabilities(delta, density, epsilon), rescale)()

"""Sparsifiers for task vectors (mergekit-semantics §8), shared by the GTA family.

Each one keeps a ``density`` fraction of a delta and, when asked, rescales what is left so that
its L1 norm matches the original: mergekit preserves the L1 norm rather than dividing by the
keep probability.
"""

from __future__ import annotations

import torch


def _rescaled(delta: torch.Tensor, mask: torch.Tensor, rescale: bool) -> torch.Tensor:
    masked = delta * mask
    if not rescale:
        return masked
    before = delta.abs().sum()
    after = masked.abs().sum()
    if before < 1e-7 or after < 1e-7:
        return masked
    return masked * (before / after)


def _sort_keys(delta: torch.Tensor) -> torch.Tensor:
    """|delta| flattened, as float32 on CPU: mergekit sorts that copy there, so ties among
    half-precision values break the same way."""
    keys = delta.abs().reshape(-1)
    return keys.float() if keys.device.type == "cpu" else keys


def _work_dtype(delta: torch.Tensor) -> torch.dtype:
    """Random masks are drawn in float32 on CPU, except for bfloat16 (mergekit PR #69)."""
    if delta.device.type != "cpu" or delta.dtype == torch.bfloat16:
        return delta.dtype
    return torch.float32


def magnitude(delta: torch.Tensor, density: float, rescale: bool) -> torch.Tensor:
    """TIES trimming: keep the ``density`` fraction of entries with the largest magnitude."""
    if density >= 1:
        return delta
    if density <= 0:
        return torch.zeros_like(delta)
    k = max(1, int(density * delta.numel()))
    keep = torch.argsort(_sort_keys(delta), descending=True)[:k]
    mask = torch.zeros_like(delta)
    mask.view(-1)[keep] = 1
    return _rescaled(delta, mask, rescale)


def magnitude_outliers(delta: torch.Tensor, density: float, gamma: float, rescale: bool):
    """Model Breadcrumbs: drop the ``gamma`` fraction of largest entries and as many of the
    smallest as needed to keep ``density`` of the tensor (globally, not per row)."""
    if density >= 1:
        return delta
    count = delta.numel()
    keep = int(density * count)
    top = int(gamma * count)
    bottom = max(0, count - keep - top)
    order = torch.argsort(_sort_keys(delta), descending=False)
    mask = torch.zeros_like(delta)
    mask.view(-1)[order[bottom : bottom + keep]] = 1
    return _rescaled(delta, mask, rescale)


def bernoulli(delta: torch.Tensor, density: float, rescale: bool) -> torch.Tensor:
    """DARE: drop each entry independently with probability ``1 - density``.

    One draw from torch's global generator per call, so the caller's order fixes the stream.
    """
    if density >= 1:
        return delta
    work = _work_dtype(delta)
    mask = torch.bernoulli(torch.full_like(delta, density, dtype=work))
    return _rescaled(delta.to(work), mask, rescale).to(delta.dtype)


def della_magprune(delta: torch.Tensor, density: float, epsilon: float, rescale: bool):
    """DELLA: drop entries with a probability that falls with their magnitude rank in the row,
    from ``1 - (density - epsilon)`` for the smallest to ``1 - (density + epsilon)`` for the
    largest."""
    if density >= 1:
        return delta
    if density <= 0:
        return torch.zeros_like(delta)
    if not (0 < density - epsilon and density + epsilon < 1):
        raise ValueError(
            f"della needs 0 < density - epsilon and density + epsilon < 1 "
            f"(density={density}, epsilon={epsilon})"
        )
    work = _work_dtype(delta)
    x = delta.to(work)
    if x.dim() == 1:
        x = x.unsqueeze(0)
    ranks = torch.argsort(torch.argsort(x.abs(), dim=1), dim=1).to(work) + 1
    low = ranks.min(dim=1, keepdim=True).values
    high = ranks.max(dim=1, keepdim=True).values
    ranks = ((ranks - low) / (high - low)).clamp(0, 1)
    probs = (density - epsilon) + ranks * 2 * epsilon
    mask = torch.bernoulli(probs)
    return _rescaled(x, mask, rescale).to(delta.dtype).reshape(delta.shape)

"""Exact sort windows in linear time: which entries ``torch.sort`` puts at positions [start, stop).

TIES and breadcrumbs keep the entries at a window of positions of mergekit's unstable sort of
magnitudes; among equal magnitudes, the sort's own moves decide. On CPU that sort is libstdc++'s
introsort, and the native kernel (``_introsort.c``) replays only the partitions that decide who is
inside the window: the same members, without sorting the rest, reading the tensor in place with
one 32-bit word per entry of scratch. It is used only after it has matched torch's kernel on
tie-heavy probes in this process; otherwise (no compiler at install, an accelerator, a torch whose
CPU sort changed, float64) the window comes from torch's sort itself. A caller that never holds
the values whole fills those words itself, chunk by chunk (:func:`fill_keys`), and takes the
window of the words (:func:`window_of_keys`).

DELLA's row sorts of magnitudes on CPU run on the keys' bit patterns read as integers
(:func:`argsort_magnitudes`): for non-negative floats that order is the same, comparison for
comparison, so torch's introsort makes the same moves and leaves ties in the same order, and it
skips the NaN tests of its float comparisons, in about 0.6 of the time.
"""

from __future__ import annotations

import functools
import logging

import torch

from mergeflow.methods.common import BIT_VIEWS, NATIVE_KINDS

try:
    from mergeflow.methods import _introsort
except ImportError:  # built optionally (setup.py): without a compiler, torch's sort
    _introsort = None

log = logging.getLogger("mergeflow")

KEYS = 4  # added to a kind: the kernel's words already hold the keys of such values


def sort_keys(values: torch.Tensor) -> torch.Tensor:
    """|values| flattened, as float32 on CPU: mergekit sorts that copy there, so ties among
    half-precision values break the same way."""
    keys = values.abs().reshape(-1)
    return keys.float() if keys.device.type == "cpu" else keys


def magnitude_window(values: torch.Tensor, start: int, stop: int, descending: bool) -> torch.Tensor:
    """A flat bool mask of the entries of ``values`` that mergekit's sort of their magnitudes
    (``torch.sort(sort_keys(values), descending=descending)``) puts at positions ``start..stop-1``."""
    kind = NATIVE_KINDS.get(values.dtype)
    if kind is not None and values.device.type == "cpu" and native_matches_torch():
        flat = values.reshape(-1).contiguous()
        inside = torch.empty(flat.shape, dtype=torch.bool)
        if _introsort.window(flat.data_ptr(), kind, flat.numel(), start, stop, descending, inside.data_ptr()):
            return inside
    return _sorted_window_by_sort(sort_keys(values), start, stop, descending)


def keys_window_applies(dtype: torch.dtype) -> bool:
    """Whether :func:`fill_keys` and :func:`window_of_keys` can give the window of values of ``dtype``."""
    return dtype in NATIVE_KINDS and native_matches_torch()


def fill_keys(values: torch.Tensor, words: torch.Tensor) -> None:
    """Write the sort keys of ``values`` (CPU, contiguous) into ``words``, as many int32: one chunk
    of what :func:`window_of_keys` reads."""
    _introsort.keys(values.data_ptr(), NATIVE_KINDS[values.dtype], values.numel(), words.data_ptr())


def window_of_keys(words: torch.Tensor, dtype: torch.dtype, start: int, stop: int, descending: bool) -> torch.Tensor | None:
    """:func:`magnitude_window` of the values of ``dtype`` whose keys :func:`fill_keys` wrote into
    ``words``, which it reorders in place. None where only torch's sort can tell (introsort's depth
    limit, or more than 2^30 entries tied at a boundary): the caller then sorts the values."""
    inside = torch.empty(words.shape, dtype=torch.bool)
    kind = NATIVE_KINDS[dtype] + KEYS
    return inside if _introsort.window(words.data_ptr(), kind, words.numel(), start, stop, descending, inside.data_ptr()) else None


def stable_magnitude_window(values: torch.Tensor, start: int, stop: int, descending: bool) -> torch.Tensor:
    """As :func:`magnitude_window` for a stable sort: among equal magnitudes the lowest flat
    indices come first (``--fast-sparsify``). Natively a radix select and one pass, with no scratch
    beyond its histograms; elsewhere torch's stable sort."""
    kind = NATIVE_KINDS.get(values.dtype)
    if kind is not None and values.device.type == "cpu" and _introsort is not None:
        flat = values.reshape(-1).contiguous()
        inside = torch.empty(flat.shape, dtype=torch.bool)
        _introsort.stable_window(flat.data_ptr(), kind, flat.numel(), start, stop, descending, inside.data_ptr())
        return inside
    return _sorted_window_by_sort(sort_keys(values), start, stop, descending, stable=True)


def argsort_magnitudes(magnitudes: torch.Tensor, dim: int) -> torch.Tensor:
    """``torch.argsort(magnitudes, dim=dim)`` of non-negative keys (``abs()`` of something), with
    the same order among ties. On CPU it sorts their bits as signed integers, which torch's sort
    orders exactly as it orders the floats; not where that has not been checked to hold here, nor
    when a NaN is among the keys (the float sort treats every NaN alike, whatever its bits)."""
    view = BIT_VIEWS.get(magnitudes.dtype)
    if view is not None and magnitudes.device.type == "cpu" and integer_sort_matches_float() and not magnitudes.isnan().any():
        magnitudes = magnitudes.view(view)
    return torch.argsort(magnitudes, dim=dim)


def _sorted_window_by_sort(keys: torch.Tensor, start: int, stop: int, descending: bool, stable: bool = False) -> torch.Tensor:
    # Sorting ``keys`` in place (``out=``) instead of a copy: the same kernel from the same
    # arrangement, so the same order among ties, and 4 bytes less per element at the peak.
    order = torch.empty(keys.shape, dtype=torch.int64, device=keys.device)
    torch.sort(keys, stable=stable, descending=descending, out=(keys, order))
    inside = torch.zeros(keys.shape, dtype=torch.bool, device=keys.device)
    inside[order[start:stop]] = True
    return inside


@functools.cache
def native_matches_torch() -> bool:
    """Whether the native kernel is built and picks torch's own members on probes full of ties
    (small integers, bfloat16- and float16-rounded values, NaNs), both directions, several windows,
    from the values and from their keys."""
    if _introsort is None:
        return False
    generator = torch.Generator().manual_seed(0)
    probes = [
        torch.randint(-6, 7, (50_000,), generator=generator).float(),
        torch.randn(120_011, generator=generator).to(torch.bfloat16),
        (torch.randn(60_013, generator=generator) * 1e-3).to(torch.float16),
        torch.where(torch.rand(20_011, generator=generator) < 0.01, float("nan"), torch.randn(20_011, generator=generator)),
    ]
    for values in probes:
        n, kind = values.numel(), NATIVE_KINDS[values.dtype]
        for descending in (True, False):
            order = torch.sort(sort_keys(values), descending=descending).indices
            for start, stop in ((0, n // 5), (n // 3, n - 17), (1, n)):
                expected = torch.zeros(n, dtype=torch.bool)
                expected[order[start:stop]] = True
                inside = torch.empty(n, dtype=torch.bool)
                words = torch.empty(n, dtype=torch.int32)
                _introsort.keys(values.data_ptr(), kind, n, words.data_ptr())
                of_keys = window_of_keys(words, values.dtype, start, stop, descending)
                if (not _introsort.window(values.data_ptr(), kind, n, start, stop, descending, inside.data_ptr())
                        or not torch.equal(inside, expected) or of_keys is None or not torch.equal(of_keys, expected)):
                    log.warning("this torch's CPU sort does not order ties as libstdc++'s introsort does; "
                                "TIES/breadcrumbs masks come from the full sort (exact, slower)")
                    return False
    return True


@functools.cache
def integer_sort_matches_float() -> bool:
    """Whether this torch's CPU sort orders non-negative floats' bits, read as integers, exactly
    as it orders the floats, ties included: rows of few-valued and of bfloat16-rounded magnitudes
    with zeros and infinities, in every float dtype."""
    generator = torch.Generator().manual_seed(0)
    few = torch.randint(0, 9, (16, 300), generator=generator) / 8.0
    rounded = torch.randn(2, 5003, generator=generator).to(torch.bfloat16).double().abs()
    rounded[:, ::97] = float("inf")
    for dtype, view in BIT_VIEWS.items():
        for keys in (few.to(dtype), rounded.to(dtype)):
            if not torch.equal(torch.argsort(keys, dim=1), torch.argsort(keys.view(view), dim=1)):
                log.warning("this torch's CPU sort orders ties among integers and floats differently; "
                            "DELLA's magnitudes are sorted as floats (exact, slower)")
                return False
    return True

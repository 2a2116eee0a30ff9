"""Generalised task arithmetic (mergekit-semantics §7.6): task_arithmetic, ties, dare_ties,
dare_linear, breadcrumbs, breadcrumbs_ties, della and della_linear.

All eight add a weighted sum of task vectors (model minus base) back onto the base. They differ
only in how each task vector is sparsified first and whether a TIES sign election decides which
entries may add up, so they share one implementation and differ by two knobs.

The deterministic ones also merge from inputs read a chunk at a time (:func:`merge_streamed`),
so a tensor's inputs and deltas are never held whole.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Mapping

import torch

from . import introsort, sparsify
from .common import BIT_VIEWS, CHUNK, NATIVE_KINDS, elementwise_in_chunks, fail, majority_sign_mask, probe_rows, require_base
from .registry import MergeInputs, MethodSpec, Param, Scope, TensorSource, register

try:
    from . import _elementwise
except ImportError:  # built optionally (setup.py): without a compiler, torch's operations
    _elementwise = None

log = logging.getLogger("mergeflow")


# In plan order: draw a delta's random mask; returns the step that applies it (no draws there).
Drawn = Callable[[], Callable[[], torch.Tensor]]


@dataclass(frozen=True)
class Sparsifier:
    """Either ``select`` (deterministic: a delta's entry count and params -> which entries its
    magnitudes' sort keeps) or, for the random ones, ``prepare`` (delta, params, rescale -> the
    step that draws the mask, which returns the step that makes the sparse delta); ``prepare``
    does the expensive deterministic part and draws nothing."""

    select: Callable[[int, Mapping[str, Any]], sparsify.Selection] | None = None
    prepare: Callable[[torch.Tensor, Mapping[str, Any], bool], Drawn] | None = None


def _prepare_dare(delta: torch.Tensor, params: Mapping[str, Any], rescale: bool) -> Drawn:
    density = params["density"]
    if density >= 1:
        return lambda: lambda: delta
    return lambda: sparsify.masked_draw(delta, sparsify.bernoulli_probabilities(delta, density), rescale)


def _prepare_della(delta: torch.Tensor, params: Mapping[str, Any], rescale: bool) -> Drawn:
    density = params["density"]
    if density >= 1:
        return lambda: lambda: delta
    if density <= 0:
        return lambda: lambda: torch.zeros_like(delta)
    probabilities = sparsify.della_probabilities(delta, density, params["epsilon"])
    return lambda: sparsify.masked_draw(delta, probabilities, rescale)


MAGNITUDE = Sparsifier(select=lambda count, p: sparsify.magnitude_selection(count, p["density"]))
OUTLIERS = Sparsifier(select=lambda count, p: sparsify.outlier_selection(count, p["density"], p["gamma"]))
DARE = Sparsifier(prepare=_prepare_dare)
DELLA = Sparsifier(prepare=_prepare_della)


def _sparsified(inputs: MergeInputs, base: torch.Tensor, sparsifier: Sparsifier | None, rescale: bool) -> list[torch.Tensor]:
    """Each model's delta, sparsified. mergekit sparsifies each delta right after computing it, in
    config order; only the order of the random draws matters, so the deterministic part (DELLA's
    rank sorts) is done for every model first, the masks are drawn after, in one ordered block,
    and applied once the block is left. A pruned delta is freed as soon as it is pruned, so only
    one unpruned delta exists at a time; the random ones keep theirs until applied anyway, and
    computing every delta before the rank sorts leaves the allocator less fragmented (DELLA's
    peak is about 10% lower)."""
    if sparsifier is None:
        return [tensor - base for tensor in inputs.others]
    try:
        if sparsifier.select is not None:
            pairs = zip(inputs.others, inputs.other_params)
            return [sparsify.keep_selected(tensor - base, sparsifier.select(base.numel(), p), rescale, inputs.fast_sparsify)
                    for tensor, p in pairs]
        deltas = [tensor - base for tensor in inputs.others]
        steps = [sparsifier.prepare(d, p, rescale) for d, p in zip(deltas, inputs.other_params)]
    except ValueError as exc:
        raise fail(inputs, str(exc)) from exc
    del deltas
    with inputs.random_draws():
        applies = [draw() for draw in steps]
    del steps
    sparse = []
    while applies:
        sparse.append(applies.pop(0)())  # each delta, its probabilities and its draw freed in turn
    return sparse


def merge(inputs: MergeInputs, sparsifier: Sparsifier | None, sign_consensus: bool) -> torch.Tensor:
    """Add the weighted (optionally sign-elected) sum of the sparsified task vectors to the base;
    the weights are rounded to the merge dtype, as in mergekit. Past sparsification every step is
    per element (the sums run over models): natively in one pass where the kernel applies
    (:func:`_combine_natively`), else with mergekit's operations chunk by chunk."""
    base = require_base(inputs)
    deltas = _sparsified(inputs, base, sparsifier, inputs.params["rescale"])
    if not deltas:
        return base
    weights = torch.tensor([p["weight"] for p in inputs.other_params], dtype=base.dtype, device=base.device)
    combined = _combine_natively(base, deltas, weights, inputs.params, sign_consensus)
    if combined is not None:
        return combined
    combine = partial(_combine_as_written, weights, inputs.params, sign_consensus)
    return elementwise_in_chunks(combine, [base, *deltas], base.dtype)


def streams(inputs: MergeInputs, sparsifier: Sparsifier | None) -> bool:
    """Whether :func:`merge_streamed` gives this merge's bits: not with a random sparsifier (its
    draws are of whole tensors), a rescale (L1 norms of whole deltas, whose bits follow torch's
    reduction of the whole) or ``--fast-sparsify`` (its selection needs no scratch, so it keeps the
    delta whole instead), and the sort window from keys only where the native kernel reads them."""
    if sparsifier is None:
        return True
    return (sparsifier.select is not None and not inputs.params["rescale"] and not inputs.fast_sparsify
            and introsort.keys_window_applies(inputs.tensors[0].dtype))


def merge_streamed(inputs: MergeInputs, sparsifier: Sparsifier | None, sign_consensus: bool, chunk: int = CHUNK) -> torch.Tensor:
    """:func:`merge` from :class:`TensorSource` inputs, with the same bits, never holding an input
    or a delta whole: each model's sparsification is decided first (:func:`_kept_entries`), then
    the deltas are made, masked and combined ``chunk`` elements at a time into the output. Each
    step is per element but the sort, so every element meets the same operations as in ``merge``;
    besides the output, one 32-bit word per entry while a model's sort window is found, and a
    bool mask per model after, are the only tensor-sized memory. ``chunk`` must be a multiple of
    the combination's blocks (:data:`_TAIL_ALIGNMENT`); the default keeps each part's buffers
    under 2 MB, which torch's allocator would otherwise back with fresh huge pages each time."""
    base = require_base(inputs)
    count = math.prod(base.shape)
    keeps = [_kept_entries(base, other, p, sparsifier, chunk) for other, p in zip(inputs.others, inputs.other_params)]
    weights = torch.tensor([p["weight"] for p in inputs.other_params], dtype=base.dtype)
    out = torch.empty(base.shape, dtype=base.dtype)
    flat = out.view(-1)
    for start in range(0, count, chunk):
        stop = min(start + chunk, count)
        base_part = base.read(start, stop)
        if not keeps:
            flat[start:stop] = base_part
            continue
        deltas = [keep(other.read(start, stop) - base_part, start, stop) for other, keep in zip(inputs.others, keeps)]
        combined = _combine_natively(base_part, deltas, weights, inputs.params, sign_consensus)
        flat[start:stop] = combined if combined is not None else _combine_as_written(weights, inputs.params, sign_consensus, [base_part, *deltas])
    return out


KeptPart = Callable[[torch.Tensor, int, int], torch.Tensor]  # (delta's part, start, stop) -> its sparsified part


def _kept_entries(base: TensorSource, other: TensorSource, params: Mapping[str, Any], sparsifier: Sparsifier | None, chunk: int) -> KeptPart:
    """What model ``other``'s sparsifier keeps of each part of its delta. A sort window is found
    from the delta's keys, filled in chunk by chunk; where only torch's sort can tell
    (:func:`introsort.window_of_keys`), from the delta made whole."""
    count = math.prod(base.shape)
    selection = sparsify.KEEP_ALL if sparsifier is None else sparsifier.select(count, params)
    if selection == sparsify.KEEP_ALL:
        return lambda delta, start, stop: delta
    if selection == sparsify.KEEP_NONE:
        return lambda delta, start, stop: torch.zeros_like(delta)
    parts = [(start, min(start + chunk, count)) for start in range(0, count, chunk)]
    words = torch.empty(count, dtype=torch.int32)
    for start, stop in parts:
        introsort.fill_keys(other.read(start, stop) - base.read(start, stop), words[start:stop])
    inside = introsort.window_of_keys(words, base.dtype, selection.start, selection.stop, selection.descending)
    del words
    if inside is None:
        delta = torch.cat([other.read(start, stop) - base.read(start, stop) for start, stop in parts])
        inside = introsort.magnitude_window(delta, selection.start, selection.stop, selection.descending)
    return lambda delta, start, stop: sparsify.apply_mask(delta, inside[start:stop])


def _combine_as_written(weights: torch.Tensor, params: Mapping[str, Any], sign_consensus: bool, tensors: list[torch.Tensor]) -> torch.Tensor:
    """mergekit's combination of the base and the sparsified deltas, operation for operation."""
    base_part, delta_parts = tensors[0], tensors[1:]
    model_weights = weights.view((-1,) + (1,) * base_part.dim())
    weighted = torch.stack(delta_parts, dim=0) * model_weights
    if sign_consensus:
        mask = majority_sign_mask(weighted, params["int8_mask"])
        mixed = (weighted * mask).sum(dim=0)
        divisor = (model_weights * mask).sum(dim=0)
        divisor[divisor == 0] = 1
    else:
        mixed = weighted.sum(dim=0)
        divisor = _unelected_divisor(model_weights)
    if params["normalize"]:
        mixed = mixed / divisor
    if params["lambda"] != 1:
        mixed = mixed * params["lambda"]
    return base_part + mixed


def _unelected_divisor(model_weights: torch.Tensor) -> torch.Tensor:
    """Without an election every model counts: the weights' sum, 1 where it is about zero."""
    divisor = model_weights.sum(dim=0)
    divisor[divisor.abs() < 1e-8] = 1
    return divisor


def _combine_natively(base: torch.Tensor, deltas: list[torch.Tensor], weights: torch.Tensor, params: Mapping[str, Any], sign_consensus: bool) -> torch.Tensor | None:
    """:func:`_combine_as_written` by the native kernel (``_elementwise.c``): the same float operations
    per element, in one pass and without temporaries. None where it does not apply (not built or
    not matching torch here, an accelerator, float64, a ``lambda``, more models than
    :data:`_MAX_NATIVE_MODELS`) or a result is not finite, whose bits only torch's own kernels decide."""
    kind = NATIVE_KINDS.get(base.dtype)
    if (kind is None or base.device.type != "cpu" or params["lambda"] != 1 or len(deltas) > _MAX_NATIVE_MODELS
            or any(d.shape != base.shape or d.dtype != base.dtype for d in deltas) or not native_combine_matches_torch()):
        return None
    return _native(kind, base, deltas, weights, params, sign_consensus)


# torch sums up to 16 rows over dim 0 in one plain loop from +0, as the kernel does (its cascade's
# first level holds 16), at every position for up to 4 rows; from 5 rows on, the positions past
# the last whole block of four vectors (32 floats with AVX2, 64 with AVX-512) take another order.
_MAX_NATIVE_MODELS = 16
_PLAIN_LOOP_MODELS = 4
_TAIL_ALIGNMENT = 64


def _native(kind: int, base: torch.Tensor, deltas: list[torch.Tensor], weights: torch.Tensor, params: Mapping[str, Any], sign_consensus: bool) -> torch.Tensor | None:
    """The kernel's call itself, without the checks of when it applies (the probe calls it too).
    Past 4 models the kernel stops at the last multiple of 64 elements, and torch's operations
    combine the rest: that tail starts on a block boundary, so torch takes the same order there
    as over the whole tensor."""
    base = base.contiguous()
    deltas = [d.contiguous() for d in deltas]
    out = torch.empty_like(base)
    count = base.numel()
    bulk = count if len(deltas) <= _PLAIN_LOOP_MODELS else count // _TAIL_ALIGNMENT * _TAIL_ALIGNMENT
    divisor = 1.0 if sign_consensus else _unelected_divisor(weights.view(-1, 1)).item()
    finite = _elementwise.combine(kind, bulk, base.data_ptr(), tuple(d.data_ptr() for d in deltas), tuple(weights.tolist()),
                                  sign_consensus, params["normalize"], divisor, out.data_ptr(), torch.get_num_threads())
    if not finite:
        return None
    if bulk < count:
        tail = [t.view(-1)[bulk:] for t in (base, *deltas)]
        out.view(-1)[bulk:] = _combine_as_written(weights, params, sign_consensus, tail)
    return out


@functools.cache
def native_combine_matches_torch() -> bool:
    """Whether the kernel is built and gives torch's bits on probes: sums that cancel over each
    model count it has its own code for (1 to 4, then any count: 5, 7 and 16), zeros of both
    signs, subnormals, zero and negative weights, every dtype it reads, and a tail of 63 elements
    past the last whole block."""
    if _elementwise is None:
        return False
    generator = torch.Generator().manual_seed(0)
    for dtype, kind in NATIVE_KINDS.items():
        for models in (1, 2, 3, 4, 5, 7, _MAX_NATIVE_MODELS):
            rows = probe_rows(generator, (models + 1, 4096 + 63), dtype, large=2e3)  # sums over 16 models stay finite in float16
            weights = torch.tensor([0.3, -0.5, 1.0, 0.0] * 4, dtype=dtype)[:models]
            for sign_consensus in (True, False):
                for normalize in (True, False):
                    params = {"int8_mask": False, "normalize": normalize, "lambda": 1.0}
                    expected = _combine_as_written(weights, params, sign_consensus, list(rows))
                    native = _native(kind, rows[0], list(rows[1:]), weights, params, sign_consensus)
                    if native is None or not torch.equal(native.view(BIT_VIEWS[dtype]), expected.view(BIT_VIEWS[dtype])):
                        log.warning("the native task-arithmetic kernel does not match this torch; combining with torch (slower)")
                        return False
    return True


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
            merge_streamed=partial(merge_streamed, sparsifier=sparsifier, sign_consensus=sign_consensus),
            streams=partial(streams, sparsifier=sparsifier),
            params=params,
            requires_base=True,
            draws_random=sparsifier in (DARE, DELLA),
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
_register("ties", "TIES", TIES_URL, sparsifier=MAGNITUDE, sign_consensus=True, normalize=True)
_register(
    "dare_ties", "DARE TIES", DARE_URL, sparsifier=DARE, sign_consensus=True, rescale=True
)
_register("dare_linear", "Linear DARE", DARE_URL, sparsifier=DARE, rescale=True)
_register("breadcrumbs", "Model Breadcrumbs", BREADCRUMBS_URL, sparsifier=OUTLIERS, extra=GAMMA)
_register(
    "breadcrumbs_ties",
    "Model Breadcrumbs with TIES",
    BREADCRUMBS_URL,
    sparsifier=OUTLIERS,
    sign_consensus=True,
    extra=GAMMA,
)
_register(
    "della",
    "DELLA",
    DELLA_URL,
    sparsifier=DELLA,
    sign_consensus=True,
    normalize=True,
    rescale=True,
    extra=EPSILON,
)
_register("della_linear", "Linear DELLA", DELLA_URL, sparsifier=DELLA, rescale=True, extra=EPSILON)

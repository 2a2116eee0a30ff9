"""The merge-method registry: what each method needs, and the pure tensor function that does it.

Planning reads a method's :class:`MethodSpec` (its parameters, whether it needs a base, which
dtype it returns) before any weight is loaded; execution then calls ``spec.merge`` once per output
tensor with a :class:`MergeInputs`. Adding a method means one module that calls :func:`register`.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, Mapping, Protocol

import torch


class Scope(Enum):
    """Where a parameter is resolved (mergekit-semantics §3.1)."""

    GLOBAL = "global"  # once per output tensor, against the output tensor name
    MODEL = "model"  # per non-base input model, against that input's tensor name
    INPUT = "input"  # per input model, the base included (linear's weight, passthrough's scale)


@dataclass(frozen=True)
class Param:
    """A declared parameter. ``kind`` is float, int or bool: values are validated to it."""

    name: str
    kind: type
    scope: Scope
    default: Any = None
    required: bool = False


class TensorSource(Protocol):
    """An input tensor read in flat ranges of elements instead of whole (see
    ``MethodSpec.merge_streamed``)."""

    shape: tuple[int, ...]
    dtype: torch.dtype

    def read(self, start: int, stop: int) -> torch.Tensor:
        """Elements [start, stop) of the flattened tensor, as a new 1-D CPU tensor."""


@dataclass(frozen=True)
class MergeInputs:
    """Everything one output tensor's merge sees, already on the math device and dtype-promoted.

    ``tensors`` are in slice-source (config) order, an auto-appended base last; inputs that lack an
    optional weight are absent. ``model_params[i]`` belongs to ``tensors[i]``; the base's entry
    holds only INPUT-scope parameters.

    A merge that draws random numbers does all its draws inside one ``with
    inputs.random_draws():`` block, and nothing expensive that needs no draw: the executor merges
    several tensors at once and uses the block to keep the draws in plan order. ``fast_sparsify``
    asks magnitude sparsifiers for a selection instead of a full sort (not bit-identical).

    For ``MethodSpec.merge_streamed`` and ``streams``, ``tensors`` holds :class:`TensorSource`\ s.
    """

    tensors: tuple[torch.Tensor, ...] | tuple[TensorSource, ...]
    base_index: int | None
    params: Mapping[str, Any]
    model_params: tuple[Mapping[str, Any], ...]
    tensor_name: str
    vocabulary_axis: int | None = None
    random_draws: Callable[[], AbstractContextManager] = nullcontext
    fast_sparsify: bool = False

    @property
    def base(self) -> torch.Tensor | None:
        return None if self.base_index is None else self.tensors[self.base_index]

    @property
    def others(self) -> list[torch.Tensor]:
        """The non-base inputs, in config order."""
        return [t for i, t in enumerate(self.tensors) if i != self.base_index]

    @property
    def other_params(self) -> list[Mapping[str, Any]]:
        """Per-model parameters of the non-base inputs, aligned with :attr:`others`."""
        return [p for i, p in enumerate(self.model_params) if i != self.base_index]


def same_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype


def promoted_with_float32(dtype: torch.dtype) -> torch.dtype:
    """For methods whose float32 mask or factor promotes the result (mergekit issue #604)."""
    return torch.promote_types(dtype, torch.float32)


@dataclass(frozen=True)
class MethodSpec:
    name: str
    merge: Callable[[MergeInputs], torch.Tensor]
    params: tuple[Param, ...] = ()
    requires_base: bool = False
    # mergekit 0.1.5's input contract, checked per output slice before any weight is read:
    # how many models a slice must have, the base included, and how many besides the base.
    min_inputs: int = 1
    max_inputs: int | None = None
    min_others: int = 0
    max_others: int | None = None
    result_dtype: Callable[[torch.dtype], torch.dtype] = same_dtype
    uses_accelerator: bool = True
    draws_random: bool = False  # the result depends on the seed (DARE, DELLA)
    # For inputs too large to hold whole: ``merge`` with the same bits from inputs given as
    # TensorSources on CPU, for the tasks ``streams`` accepts (given the same MergeInputs).
    merge_streamed: Callable[[MergeInputs], torch.Tensor] | None = None
    streams: Callable[[MergeInputs], bool] = lambda inputs: False
    pretty_name: str = ""
    reference_url: str | None = None
    param_index: Mapping[str, Param] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "param_index", {p.name: p for p in self.params})

    def params_in(self, *scopes: Scope) -> list[Param]:
        return [p for p in self.params if p.scope in scopes]

    def output_dtype(self, dtype: torch.dtype, inputs: int) -> torch.dtype:
        """What ``merge`` returns for ``inputs`` tensors of ``dtype``. A lone input (an optional
        weight only one model has, or a base-only slice) comes back in its own dtype: the
        promoting methods return it before computing anything."""
        return dtype if inputs == 1 else self.result_dtype(dtype)


_REGISTRY: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"merge method {spec.name!r} registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def get_method(name: str) -> MethodSpec:
    """The spec for ``name``; a KeyError lists the known names."""
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise KeyError(f"unknown merge_method {name!r}; known methods: {known}") from None


def method_names() -> list[str]:
    return sorted(_REGISTRY)

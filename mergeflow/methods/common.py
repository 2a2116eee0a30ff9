"""Small helpers that several merge methods share."""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from .registry import MergeInputs

# Elements per chunk of an elementwise merge on CPU: a float32 accumulator of this size (1 MiB)
# stays in cache while every input's slice is added to it.
CHUNK = 1 << 18

# The dtypes the native kernels read, by the number they take for each.
NATIVE_KINDS = {torch.bfloat16: 0, torch.float16: 1, torch.float32: 2}

# Each float dtype's bits as the integer dtype of its width: for bitwise comparisons and integer sorts.
BIT_VIEWS = {torch.bfloat16: torch.int16, torch.float16: torch.int16, torch.float32: torch.int32, torch.float64: torch.int64}


def probe_rows(generator: torch.Generator, shape: tuple[int, ...], dtype: torch.dtype, large: float = 1e4) -> torch.Tensor:
    """Values to check a native kernel against torch's operations on: zeros of both signs,
    subnormals, pairs of ``±large`` that cancel, small and plain values, half of them offset by
    random noise, rounded to ``dtype``."""
    pool = torch.tensor([0.0, -0.0, 1.0, -1.0, 2.0**-24, -(2.0**-133), 3e-3, -3e-3, large, -large, 0.5, -2.5])
    rows = pool[torch.randint(len(pool), shape, generator=generator)]
    return (rows + torch.randn(shape, generator=generator) * (torch.rand(shape, generator=generator) < 0.5)).to(dtype)


def accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype mergekit 0.1.5 accumulates in: float32, widened only for float64 inputs."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def elementwise_in_chunks(
    compute: Callable[[list[torch.Tensor]], torch.Tensor], tensors: Sequence[torch.Tensor], out_dtype: torch.dtype
) -> torch.Tensor:
    """``compute(tensors).to(out_dtype)`` for a ``compute`` made of elementwise operations, run on
    CPU over equal-shaped tensors one chunk at a time into the output.

    Every element meets the same operations in the same order, so the bits are those of the
    whole-tensor computation; but an accumulator wider than the inputs (float32 over bfloat16)
    never exists at full size, which saves its memory and most of the memory traffic.
    """
    first = tensors[0]
    if first.device.type != "cpu" or first.numel() <= CHUNK or any(t.shape != first.shape for t in tensors):
        return compute(list(tensors)).to(out_dtype)
    flats = [t.reshape(-1) for t in tensors]
    out = torch.empty(first.shape, dtype=out_dtype)
    flat_out = out.view(-1)
    for start in range(0, first.numel(), CHUNK):
        flat_out[start : start + CHUNK] = compute([flat[start : start + CHUNK] for flat in flats])
    return out


def fail(inputs: MergeInputs, problem: str) -> ValueError:
    """A one-line error naming the output tensor, so a failed merge points at its cause."""
    return ValueError(f"{inputs.tensor_name}: {problem}")


def require_base(inputs: MergeInputs) -> torch.Tensor:
    """The base tensor; the planner enforces ``requires_base``, this guards direct calls."""
    if inputs.base is None:
        raise fail(inputs, "this merge method needs a base model, and none is among the inputs")
    return inputs.base


def majority_sign_mask(values: torch.Tensor, int8_mask: bool) -> torch.Tensor:
    """TIES sign election over dim 0: keep entries whose sign agrees with the sign of the sum.

    Ties in the sum elect +1, and an exact zero has sign 0, so it never agrees. ``int8_mask``
    only narrows the mask arithmetic; the election itself is the same.
    """
    mask_dtype = torch.int8 if int8_mask else values.dtype
    signs = values.sign().to(mask_dtype)
    majority = (values.sum(dim=0) >= 0).to(mask_dtype) * 2 - 1
    return signs == majority

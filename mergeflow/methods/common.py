"""Small helpers that several merge methods share."""

from __future__ import annotations

import torch

from .registry import MergeInputs


def accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype mergekit 0.1.5 accumulates in: float32, widened only for float64 inputs."""
    return torch.float64 if dtype == torch.float64 else torch.float32


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

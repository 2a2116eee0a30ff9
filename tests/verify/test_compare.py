"""The per-tensor numbers verify reports: ULP distances, fractions, dtype and shape mismatches."""

from __future__ import annotations

import pytest
import torch

from mergeflow.verify.compare import difference, layer_of


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_ulp_distance_counts_representable_values_across_zero(dtype):
    x = torch.tensor([1.0, -2.0, 0.0, 3.0], dtype=dtype)
    y = x.clone()
    y[0] = torch.nextafter(x[0], torch.tensor(2.0, dtype=dtype))  # one step up
    step = torch.nextafter(x[1], torch.tensor(-3.0, dtype=dtype))
    y[1] = torch.nextafter(step, torch.tensor(-3.0, dtype=dtype))  # two steps away from zero
    y[2] = -0.0  # +0 and -0: different bits, one step apart
    found = difference("t", y, x)
    assert found.problem == "values"
    assert found.max_ulp == 2
    assert found.fraction_differing == pytest.approx(3 / 4)
    assert found.max_abs_diff == pytest.approx(float((step.double() - x[1].double()).abs()) * 2, rel=0.01)


def test_smallest_positive_and_negative_numbers_are_two_steps_apart():
    tiny = torch.tensor([1.4e-45], dtype=torch.float32)
    assert difference("t", tiny, -tiny).max_ulp == 3  # +tiny, +0, -0, -tiny


def test_identical_tensors_and_nans_with_the_same_bits_are_not_different():
    x = torch.tensor([1.0, float("nan"), -5.0])
    assert difference("t", x, x.clone()) is None


def test_dtype_and_shape_mismatches_are_named():
    x = torch.ones(2, 3)
    assert difference("t", x, x.to(torch.bfloat16)).problem == "dtype"
    shape = difference("t", x, torch.ones(3, 2))
    assert (shape.problem, shape.model, shape.reference) == ("shape", "float32[2, 3]", "float32[3, 2]")


def test_integer_tensors_report_the_absolute_difference_as_ulps():
    found = difference("t", torch.tensor([1, 5, 9]), torch.tensor([1, 2, 9]))
    assert (found.max_ulp, found.max_abs_diff) == (3, 3.0)


@pytest.mark.parametrize("name, group", [
    ("model.layers.11.mlp.up_proj.weight", "layer 11"),
    ("transformer.h.3.attn.c_attn.weight", "layer 3"),
    ("model.embed_tokens.weight", "outside layers"),
    ("lm_head.weight", "outside layers"),
])
def test_tensors_are_grouped_by_decoder_layer(name, group):
    assert layer_of(name) == group

import math

import pytest
import torch

E1 = torch.tensor([1.0, 0.0, 0.0])
E2 = torch.tensor([0.0, 1.0, 0.0])


# --- slerp ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_slerp_endpoints(merge, dtype):
    base = torch.tensor([[1.0, 2.0], [-3.0, 0.5]]).to(dtype)
    other = torch.tensor([[0.5, -1.0], [2.0, 4.0]]).to(dtype)
    for base_index, tensors in ((0, [base, other]), (1, [other, base])):
        at0 = merge("slerp", tensors, base_index=base_index, params={"t": 0.0})
        at1 = merge("slerp", tensors, base_index=base_index, params={"t": 1.0})
        assert torch.equal(at0, base) and torch.equal(at1, other)


def test_slerp_orthogonal_midpoint_stays_on_the_circle(merge):
    out = merge("slerp", [E1, E2], base_index=0, params={"t": 0.5})
    expected = torch.tensor([math.sqrt(0.5), math.sqrt(0.5), 0.0])
    assert torch.allclose(out, expected, atol=1e-6)
    # a third of the way: the angle from the base is 30 degrees
    out = merge("slerp", [E1, E2], base_index=0, params={"t": 1 / 3})
    assert torch.allclose(out, torch.tensor([math.cos(math.pi / 6), 0.5, 0.0]), atol=1e-6)


def test_slerp_colinear_falls_back_to_lerp_on_unnormalised_inputs(merge):
    a = torch.tensor([1.0, 2.0, 3.0])
    out = merge("slerp", [a, 2 * a], base_index=0, params={"t": 0.25})
    assert torch.equal(out, 1.25 * a)


def test_slerp_single_input_is_returned(merge):
    x = torch.randn(4)
    assert merge("slerp", [x], base_index=0, params={"t": 0.3}) is x


def test_slerp_rejects_three_models(merge):
    with pytest.raises(ValueError, match="model.layers.0.mlp.up_proj.weight.*exactly 2"):
        merge("slerp", [E1, E2, E1], base_index=0, params={"t": 0.5})


# --- nuslerp -------------------------------------------------------------------------------


def test_nuslerp_weights_pick_the_interpolation_point(merge):
    def run(w0, w1):
        return merge("nuslerp", [E1, E2], model_params=[{"weight": w0}, {"weight": w1}])

    assert torch.allclose(run(1.0, 0.0), E1, atol=1e-6)
    assert torch.allclose(run(0.0, 2.0), E2, atol=1e-6)
    half = torch.tensor([math.sqrt(0.5), math.sqrt(0.5), 0.0])
    assert torch.allclose(run(3.0, 3.0), half, atol=1e-6)
    # weights summing to zero interpolate half way
    assert torch.allclose(run(1.0, -1.0), half, atol=1e-6)


def test_nuslerp_with_base_interpolates_the_task_vectors(merge):
    base = torch.tensor([5.0, -2.0, 1.0])
    out = merge(
        "nuslerp",
        [base + E1, base + E2, base],
        base_index=2,
        model_params=[{"weight": 1.0}, {"weight": 1.0}, {}],
    )
    assert torch.allclose(out, base + torch.tensor([1.0, 1.0, 0.0]) * math.sqrt(0.5), atol=1e-6)


def test_nuslerp_row_mode_treats_rows_separately(merge):
    # row 0 is colinear (exact lerp), row 1 is orthogonal (a quarter turn, halved)
    a = torch.tensor([[1.0, 2.0], [1.0, 0.0]])
    b = torch.tensor([[3.0, 6.0], [0.0, 1.0]])
    out = merge(
        "nuslerp",
        [a, b],
        params={"nuslerp_flatten": False},
        model_params=[{"weight": 1.0}, {"weight": 1.0}],
    )
    assert torch.equal(out[0], torch.tensor([2.0, 4.0]))
    assert torch.allclose(out[1], torch.tensor([math.sqrt(0.5), math.sqrt(0.5)]), atol=1e-6)


def test_nuslerp_row_wise_runs_along_dim_0(merge):
    # columns of a and b: column 0 colinear, column 1 orthogonal
    a = torch.tensor([[1.0, 1.0], [2.0, 0.0]])
    b = torch.tensor([[3.0, 0.0], [6.0, 1.0]])
    out = merge(
        "nuslerp",
        [a, b],
        params={"nuslerp_flatten": False, "nuslerp_row_wise": True},
        model_params=[{"weight": 1.0}, {"weight": 1.0}],
    )
    assert torch.equal(out[:, 0], torch.tensor([2.0, 4.0]))
    assert torch.allclose(out[:, 1], torch.tensor([math.sqrt(0.5), math.sqrt(0.5)]), atol=1e-6)


def test_nuslerp_needs_two_models_besides_the_base(merge):
    with pytest.raises(ValueError, match="exactly 2 models"):
        merge("nuslerp", [E1, E2], base_index=1, model_params=[{"weight": 1.0}, {}])


# --- multislerp ----------------------------------------------------------------------------


def test_multislerp_of_orthogonal_unit_vectors_is_the_normalised_mean(merge):
    e3 = torch.tensor([0.0, 0.0, 1.0])
    out = merge("multislerp", [E1, E2, e3], model_params=[{"weight": 1.0}] * 3)
    assert torch.allclose(out, torch.full((3,), 1 / math.sqrt(3)), atol=1e-6)
    assert torch.allclose(out.norm(), torch.tensor(1.0), atol=1e-6)


def test_multislerp_of_identical_task_vectors_returns_the_fine_tune(merge):
    base = torch.tensor([[1.0, -1.0], [0.5, 2.0]])
    tuned = base + torch.tensor([[0.25, 0.5], [-0.75, 0.125]])
    out = merge(
        "multislerp",
        [tuned, tuned, tuned, base],
        base_index=3,
        model_params=[{"weight": 0.2}, {"weight": 0.3}, {"weight": 0.5}, {}],
    )
    assert torch.allclose(out, tuned, atol=1e-6)


def test_multislerp_lone_fine_tune_is_returned_unchanged(merge):
    base, tuned = torch.randn(5), torch.randn(5)
    out = merge("multislerp", [tuned, base], base_index=1, model_params=[{"weight": 0.3}, {}])
    assert out is tuned


def test_multislerp_opposite_directions(merge):
    # two opposite vectors cancel: the linear fallback is their weighted sum
    out = merge("multislerp", [E1, -E1], model_params=[{"weight": 1.0}] * 2)
    assert torch.equal(out, torch.zeros(3))
    # with three inputs there is no fallback
    with pytest.raises(ValueError, match="mean direction is zero"):
        merge(
            "multislerp",
            [E1, -E1, E2],
            model_params=[{"weight": 1.0}, {"weight": 1.0}, {"weight": 0.0}],
        )

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mergeflow.methods import spherical

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


def _mergekit_slerp(base: torch.Tensor, other: torch.Tensor, t: float) -> torch.Tensor:
    """mergekit 0.1.5's slerp as torch operations: norms, the dot product and the output chunk by
    chunk over the flattened tensors, in float32 (float64 for float64 inputs)."""
    acc = torch.float64 if base.dtype == torch.float64 else torch.float32
    a, b = base.reshape(1, -1), other.reshape(1, -1)
    chunk = 1 << 20

    def norm(flat):
        parts = [torch.linalg.vector_norm(c.to(acc), dim=-1) for c in flat.split(chunk, dim=-1)]
        total = torch.linalg.vector_norm(torch.stack(parts), dim=0)
        return torch.where(total <= 1e-8, torch.ones_like(total), total)

    norm_a, norm_b = norm(a), norm(b)
    dot = torch.zeros((), dtype=acc)
    for ca, cb in zip(a.split(chunk, dim=-1), b.split(chunk, dim=-1)):
        dot = dot + ((ca.to(acc) / norm_a) * (cb.to(acc) / norm_b)).sum()
    dot = dot.clamp(-1.0, 1.0)
    t = torch.tensor(t, dtype=acc)
    linear = dot.abs() > 0.9995
    theta = torch.acos(torch.where(linear, torch.zeros_like(dot), dot))
    coef_a = torch.where(linear, 1 - t, torch.sin((1 - t) * theta) / torch.sin(theta))
    coef_b = torch.where(linear, t, torch.sin(t * theta) / torch.sin(theta))
    out = torch.empty_like(a)
    for o, ca, cb in zip(out.split(chunk, dim=-1), a.split(chunk, dim=-1), b.split(chunk, dim=-1)):
        o.copy_(coef_a * ca.to(acc) + coef_b * cb.to(acc))
    return out.reshape(base.shape)


_BITS = {torch.float32: torch.int32, torch.float64: torch.int64, torch.bfloat16: torch.int16, torch.float16: torch.int16}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("t", [0.3, 0.5, -0.25])
@pytest.mark.parametrize("infinities", [False, True])
def test_large_tensors_keep_mergekits_bits(merge, dtype, t, infinities, torch_threads):
    """Over several of mergekit's chunks and a short last one: natively (split among torch's
    threads), or with torch's operations where a value is not finite, the bits of mergekit's."""
    generator = torch.Generator().manual_seed(7)
    base = torch.randn(1100, 2001, generator=generator).to(dtype)
    other = (base * 0.6 + torch.randn(1100, 2001, generator=generator)).to(dtype)
    other.view(-1)[::17] = 0.0
    if infinities:
        other.view(-1)[3::100003] = float("inf")
    out = merge("slerp", [base, other], base_index=0, params={"t": t})
    assert torch.equal(out.view(_BITS[dtype]), _mergekit_slerp(base, other, t).view(_BITS[dtype]))


_SPECIAL = [0.0, -0.0, 1.0, -1.0, 0.5, -2.5, 1e-3, -1e-3, 2.0**-130, -(2.0**-140), 6e4, -6e4, 1e30, -1e30, 3e38, -3e38]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])  # merge is stateless
@given(
    data=st.data(),
    dtype=st.sampled_from(list(_BITS)),
    t=st.sampled_from([0.0, 0.3, 0.5, 1.0, -0.2, 1.5]) | st.floats(-2, 2),
    finite=st.booleans(),
    native=st.booleans(),
)
def test_slerp_has_mergekits_bits(merge, data, dtype, t, finite, native):
    """Natively where the kernels apply, with torch's operations where they do not or a value is
    not finite: mergekit's bits, with signed zeros, subnormals, overflow, colinear and opposite
    inputs, and NaN and inf."""
    value = st.sampled_from(_SPECIAL + ([] if finite else [float("inf"), float("-inf"), float("nan")])) | st.floats(-1e4, 1e4, width=32)
    size = data.draw(st.integers(1, 40))
    base = torch.tensor(data.draw(st.lists(value, min_size=size, max_size=size)), dtype=dtype)
    other = data.draw(st.sampled_from(["drawn", "scaled", "opposite"]))
    other = torch.tensor(data.draw(st.lists(value, min_size=size, max_size=size)), dtype=dtype) if other == "drawn" else base * (2 if other == "scaled" else -1)
    with pytest.MonkeyPatch.context() as patch:
        if not native:
            patch.setattr(spherical, "native_slerp_matches_torch", lambda: False)
        out = merge("slerp", [base, other], base_index=0, params={"t": t})
    assert torch.equal(out.view(_BITS[dtype]), _mergekit_slerp(base, other, t).view(_BITS[dtype]))


def test_native_slerp_is_used_here():
    """The kernels are built (setup.py) and matched torch's bits on this torch's probes; otherwise
    the tests above check torch's operations only."""
    assert spherical.native_slerp_matches_torch()


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

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mergeflow.methods import linear


def test_identical_inputs_come_back_exactly(merge):
    x = torch.tensor([[0.5, -1.25], [3.0, 1e-3]])
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        xs = [x.to(dtype)] * 3
        out = merge("linear", xs, model_params=[{"weight": w} for w in (1.0, 1.0, 2.0)])
        assert torch.equal(out, xs[0])


def test_weights_are_normalised_by_default(merge):
    ones, zeros = torch.ones(4), torch.zeros(4)
    out = merge("linear", [ones, zeros], model_params=[{"weight": 3.0}, {"weight": 1.0}])
    assert torch.equal(out, torch.full((4,), 0.75))


def test_without_normalisation_it_is_a_weighted_sum(merge):
    a, b = torch.tensor([1.0, 2.0]), torch.tensor([10.0, -4.0])
    out = merge(
        "linear",
        [a, b],
        params={"normalize": False},
        model_params=[{"weight": 3.0}, {"weight": 0.5}],
    )
    assert torch.equal(out, torch.tensor([8.0, 4.0]))


def test_bfloat16_inputs_accumulate_in_float32(merge):
    # 1 + 2**-8 rounds back to 1 in bfloat16, so summing in bfloat16 would lose both small terms;
    # a float32 accumulator keeps them and rounds 1 + 2**-7 (representable) only at the end.
    xs = [torch.tensor([v], dtype=torch.bfloat16) for v in (1.0, 2**-8, 2**-8)]
    out = merge("linear", xs, params={"normalize": False}, model_params=[{"weight": 1.0}] * 3)
    assert out.dtype == torch.bfloat16
    assert out.item() == 1 + 2**-7


def test_float64_weights_are_not_rounded_to_float32(merge):
    out = merge(
        "linear",
        [torch.ones(1, dtype=torch.float64)],
        params={"normalize": False},
        model_params=[{"weight": 0.1}],
    )
    assert out.item() == 0.1


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_result_keeps_input_dtype_and_shape(merge, dtype):
    xs = [torch.randn(3, 5).to(dtype) for _ in range(2)]
    out = merge("linear", xs, model_params=[{"weight": 0.3}, {"weight": 0.7}])
    assert out.dtype == dtype and out.shape == (3, 5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("normalize", [True, False])
def test_large_tensors_merged_by_chunks_keep_the_whole_tensor_bits(merge, dtype, normalize):
    """Above one chunk the float32 accumulator is built a chunk at a time; every element still
    meets mergekit's zeros/addcmul_/div_ in order, signed zeros, infinities, NaNs and subnormals
    included, whatever the chunk boundaries."""
    generator = torch.Generator().manual_seed(1)
    xs = [torch.randn(1001, 611, generator=generator).to(dtype) for _ in range(3)]
    xs[0].view(-1)[::997] = -0.0
    xs[1].view(-1)[3::1009] = float("-inf")
    xs[2].view(-1)[7::4099] = float("nan")
    xs[2].view(-1)[11::5003] = torch.finfo(dtype).tiny / 4
    weights = torch.tensor([0.3, 0.45, 0.2])
    expected = torch.zeros(xs[0].shape)
    for x, w in zip(xs, weights):
        expected.addcmul_(x, w)
    if normalize:
        expected.div_(weights.sum())
    expected = expected.to(dtype)
    out = merge("linear", xs, params={"normalize": normalize}, model_params=[{"weight": w} for w in (0.3, 0.45, 0.2)])
    bits = {torch.float32: torch.int32}.get(dtype, torch.int16)
    assert torch.equal(out.view(bits), expected.view(bits))


def _mergekit_linear(xs, weights, normalize, dtype):
    """mergekit 0.1.5's linear over whole tensors: a float32 accumulator, one addcmul_ per input."""
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    weights = torch.tensor(weights, dtype=acc)
    expected = torch.zeros(xs[0].shape, dtype=acc)
    for x, w in zip(xs, weights):
        expected.addcmul_(x, w)
    if normalize:
        expected.div_(weights.sum())
    return expected.to(dtype)


_BITS = {torch.float32: torch.int32, torch.float64: torch.int64, torch.bfloat16: torch.int16, torch.float16: torch.int16}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("count", [1, 2, 5])
@pytest.mark.parametrize("finite", [True, False])
def test_large_tensors_keep_the_whole_tensor_bits_natively(merge, dtype, count, finite, torch_threads):
    """Natively in one pass split among torch's threads, or a chunk at a time with torch where a
    value is not finite: the bits of mergekit's whole-tensor operations."""
    generator = torch.Generator().manual_seed(count)
    xs = [torch.randn(900, 1013, generator=generator).to(dtype) for _ in range(count)]
    xs[0].view(-1)[::997] = -0.0
    if not finite:
        xs[-1].view(-1)[3::100019] = float("inf")
    weights = [0.3, -0.45, 0.2, 1.0, 0.05][:count]
    for normalize in (True, False):
        out = merge("linear", xs, params={"normalize": normalize}, model_params=[{"weight": w} for w in weights])
        assert torch.equal(out.view(_BITS[dtype]), _mergekit_linear(xs, weights, normalize, dtype).view(_BITS[dtype]))


_SPECIAL = [0.0, -0.0, 1.0, -1.0, 0.5, -2.5, 1e-3, -1e-3, 2.0**-130, -(2.0**-140), 6e4, -6e4, 1e30, -1e30, 3e38, -3e38]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])  # merge is stateless
@given(
    data=st.data(),
    dtype=st.sampled_from(list(_BITS)),
    count=st.integers(1, 6),
    finite=st.booleans(),
    normalize=st.booleans(),
    native=st.booleans(),
)
def test_linear_has_mergekits_bits(merge, data, dtype, count, finite, normalize, native):
    """Natively where the kernel applies, with torch's operations where it does not or a result is
    not finite: mergekit's bits, with cancelling sums, signed zeros, subnormals, overflow, zero and
    negative weights (a zero total included), and NaN and inf."""
    value = st.sampled_from(_SPECIAL + ([] if finite else [float("inf"), float("-inf"), float("nan")])) | st.floats(-1e4, 1e4, width=32)
    size = data.draw(st.integers(1, 40))
    xs = [torch.tensor(data.draw(st.lists(value, min_size=size, max_size=size)), dtype=dtype) for _ in range(count)]
    weights = data.draw(st.lists(st.sampled_from([0.3, 0.7, 1.0, -0.5, 0.0, 1e-3, 2.0]) | st.floats(-3, 3), min_size=count, max_size=count))
    with pytest.MonkeyPatch.context() as patch:
        if not native:
            patch.setattr(linear, "native_linear_matches_torch", lambda: False)
        out = merge("linear", xs, params={"normalize": normalize}, model_params=[{"weight": w} for w in weights])
    assert torch.equal(out.view(_BITS[dtype]), _mergekit_linear(xs, weights, normalize, dtype).view(_BITS[dtype]))


def test_native_linear_is_used_here():
    """The kernel is built (setup.py), this CPU has FMA, and it matched torch's bits on this
    torch's probes; otherwise the tests above check torch's operations only."""
    assert linear.native_linear_matches_torch()

import pytest
import torch


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

from dataclasses import replace

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mergeflow.methods import get_method, introsort, task_arithmetic

BASE = torch.tensor([10.0, 20.0, 30.0, 40.0])
# hand-made task vectors for a three-model sign election
D1 = torch.tensor([1.0, -2.0, 3.0, 0.0])
D2 = torch.tensor([-1.0, -1.0, 2.0, 1.0])
D3 = torch.tensor([2.0, 1.0, -4.0, 0.0])


def gta(merge, method, deltas, weights, params=None, **per_model):
    tensors = [BASE + d for d in deltas] + [BASE]
    model_params = [
        {"weight": w, **{k: v[i] for k, v in per_model.items()}} for i, w in enumerate(weights)
    ]
    return merge(
        method, tensors, base_index=len(deltas), params=params, model_params=model_params + [{}]
    )


def test_task_arithmetic_adds_weighted_task_vectors(merge):
    out = gta(merge, "task_arithmetic", [D1, D2], [1.0, 0.5])
    assert torch.equal(out, BASE + D1 + 0.5 * D2)


def test_task_arithmetic_normalise_and_lambda(merge):
    out = gta(merge, "task_arithmetic", [D1, D2], [1.0, 3.0], {"normalize": True, "lambda": 2.0})
    assert torch.equal(out, BASE + 2 * (D1 + 3 * D2) / 4)


def test_ties_sign_election_by_hand(merge):
    # sums [2, -2, 1, 1] elect signs [+, -, +, +]; the agreeing entries are averaged, and an exact
    # zero (D1[3], D3[3]) never agrees
    out = gta(merge, "ties", [D1, D2, D3], [1.0, 1.0, 1.0])
    assert torch.equal(out, BASE + torch.tensor([1.5, -1.5, 2.5, 1.0]))


def test_ties_election_uses_weighted_deltas_and_ties_go_positive(merge):
    a, b = torch.tensor([2.0, 1.0]), torch.tensor([-1.0, -1.0])
    base = torch.zeros(2)
    out = merge(
        "ties",
        [a, b, base],
        base_index=2,
        params={"normalize": False},
        model_params=[{"weight": 0.5}, {"weight": 1.0}, {}],
    )
    # weighted: [1, 0.5] and [-1, -1]; sums [0, -0.5] elect [+, -]
    assert torch.equal(out, torch.tensor([1.0, -1.0]))


def test_ties_trims_each_task_vector_by_magnitude(merge):
    out = gta(merge, "ties", [D1, D3], [1.0, 1.0], density=[0.5, 0.25])
    # D1 keeps 3, -2; D3 keeps -4. Election: [0, -2, -1, 0] -> [+, -, -, +]
    assert torch.equal(out, BASE + torch.tensor([0.0, -2.0, -4.0, 0.0]))


def test_breadcrumbs_drops_top_and_bottom(merge):
    delta = torch.arange(1.0, 11.0)
    base = torch.zeros(10)
    out = merge(
        "breadcrumbs",
        [delta, base],
        base_index=1,
        model_params=[{"weight": 1.0, "density": 0.5, "gamma": 0.2}, {}],
    )
    assert torch.equal(out, torch.tensor([0.0, 0, 0, 4, 5, 6, 7, 8, 0, 0]))


def test_dare_at_full_density_is_task_arithmetic(merge):
    for method in ("dare_linear", "della_linear"):
        out = gta(merge, method, [D1, D2], [1.0, 0.5])
        assert torch.equal(out, gta(merge, "task_arithmetic", [D1, D2], [1.0, 0.5]))


def test_dare_is_seeded_and_draws_once_per_model_in_order(merge):
    deltas = [torch.randn(200) for _ in range(2)]
    base = torch.zeros(200)
    model_params = [{"weight": 1.0, "density": 0.4}, {"weight": 1.0, "density": 0.7}, {}]
    torch.manual_seed(11)
    out = merge("dare_linear", [*deltas, base], base_index=2, model_params=model_params)
    torch.manual_seed(11)
    masks = [torch.bernoulli(torch.full_like(d, p)) for d, p in zip(deltas, (0.4, 0.7))]
    expected = sum(d * m * (d.abs().sum() / (d * m).abs().sum()) for d, m in zip(deltas, masks))
    assert torch.allclose(out, expected, atol=1e-5)


def test_della_range_error_names_the_tensor(merge):
    with pytest.raises(ValueError, match=r"^model\.layers\.0\.mlp\.up_proj\.weight: .*epsilon"):
        gta(merge, "della", [D1], [1.0], density=[0.9])


def test_no_task_vectors_returns_the_base(merge):
    assert merge("ties", [BASE], base_index=0) is BASE


def test_bfloat16_weights_are_rounded_to_bfloat16(merge):
    base = torch.zeros(1, dtype=torch.bfloat16)
    one = torch.ones(1, dtype=torch.bfloat16)
    out = merge("task_arithmetic", [one, base], base_index=1, model_params=[{"weight": 0.3}, {}])
    assert out.item() == 0.30078125


def _whole_tensor_combination(base, deltas, weights, sign_consensus, normalize, lam):
    """§7.6 steps 4-5 over whole tensors, as mergekit runs them."""
    stacked = torch.stack(deltas, dim=0)
    w = torch.tensor(weights, dtype=stacked.dtype).view((-1,) + (1,) * base.dim())
    weighted = stacked * w
    if sign_consensus:
        signs = weighted.sign()
        majority = (weighted.sum(dim=0) >= 0).to(weighted.dtype) * 2 - 1
        mask = signs == majority
        mixed, divisor = (weighted * mask).sum(dim=0), (w * mask).sum(dim=0)
        divisor[divisor == 0] = 1
    else:
        mixed, divisor = weighted.sum(dim=0), w.sum(dim=0)
        divisor[divisor.abs() < 1e-8] = 1
    if normalize:
        mixed = mixed / divisor
    if lam != 1:
        mixed = mixed * lam
    return base + mixed


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("models", [1, 2, 3, 4, 5, 8, 16, 17])
@pytest.mark.parametrize("method", ["task_arithmetic", "ties"])
@pytest.mark.parametrize("infinities", [False, True])
def test_large_tensors_keep_the_whole_tensor_bits(merge, dtype, models, method, infinities, torch_threads):
    """Natively in one pass (split among torch's threads; past 4 models torch's operations for
    the 60 elements past the last whole block), or a chunk at a time with torch (infinities among
    the deltas, or over 16 models): the same bits as mergekit's operations over the whole tensor,
    for every model count (sums over models), with zeros among the deltas and cancelling values."""
    generator = torch.Generator().manual_seed(models)
    base = torch.randn(700, 977, generator=generator).to(dtype)
    others = [(base + torch.randn(700, 977, generator=generator) * 0.1).to(dtype) for _ in range(models)]
    others[0].view(-1)[::13] = base.view(-1)[::13]  # zero deltas: sign 0, never elected
    if infinities:
        others[-1].view(-1)[5::10007] = float("inf")
    for other in others[1::3]:
        other.view(-1)[-64:] = -base.view(-1)[-64:] * 3  # large deltas that cancel, in the tail too
    weights = ([0.3, 0.7, 0.45, 1.0, -0.2] * 4)[:models]
    ties = method == "ties"
    expected = _whole_tensor_combination(base, [o - base for o in others], weights, ties, ties, 0.9)
    out = merge(method, others + [base], base_index=models, params={"normalize": ties, "lambda": 0.9},
                model_params=[{"weight": w} for w in weights] + [{}])
    bits = {torch.float32: torch.int32}.get(dtype, torch.int16)
    assert torch.equal(out.view(bits), expected.view(bits))


_SPECIAL = [0.0, -0.0, 1.0, -1.0, 0.5, -2.5, 1e-3, -1e-3, 2.0**-130, -(2.0**-140), 6e4, -6e4, 1e30, -1e30, 3e38, -3e38]
_NONFINITE = [float("inf"), float("-inf"), float("nan")]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])  # merge is stateless
@given(
    data=st.data(),
    dtype=st.sampled_from([torch.bfloat16, torch.float16, torch.float32, torch.float64]),
    models=st.integers(1, 18),
    method=st.sampled_from(["task_arithmetic", "ties"]),
    finite=st.booleans(),
    int8_mask=st.booleans(),
    normalize=st.booleans(),
    lam=st.sampled_from([1.0, 1.0, 0.9, -1.5]),
    native=st.booleans(),
)
def test_combination_has_mergekits_bits(merge, data, dtype, models, method, finite, int8_mask, normalize, lam, native):
    """Natively where the kernel applies, with torch's operations where it does not or where a
    result is not finite: either way mergekit's bits, with cancelling sums over up to six models,
    signed zeros, subnormals, overflow, zero and negative weights, and NaN and inf among the deltas;
    up to 140 elements, so that past 4 models the kernel's part and torch's tail both occur."""
    value = st.sampled_from(_SPECIAL + ([] if finite else _NONFINITE)) | st.floats(-1e4, 1e4, width=32)
    size = data.draw(st.integers(1, 140))
    rows = [torch.tensor(data.draw(st.lists(value, min_size=size, max_size=size)), dtype=dtype) for _ in range(models + 1)]
    base, others = rows[0], rows[1:]
    weights = data.draw(st.lists(st.sampled_from([0.3, 0.7, 1.0, -0.5, 0.0, 1e-3, 2.0]) | st.floats(-3, 3), min_size=models, max_size=models))
    ties = method == "ties"
    params = {"normalize": normalize, "lambda": lam, "int8_mask": int8_mask}
    expected = _whole_tensor_combination(base, [o - base for o in others], weights, ties, normalize, lam)
    with pytest.MonkeyPatch.context() as patch:
        if not native:
            patch.setattr(task_arithmetic, "native_combine_matches_torch", lambda: False)
        out = merge(method, others + [base], base_index=models, params=params, model_params=[{"weight": w} for w in weights] + [{}])
    bits = {torch.float32: torch.int32, torch.float64: torch.int64}.get(dtype, torch.int16)
    assert torch.equal(out.view(bits), expected.view(bits))


def test_native_combination_is_used_here():
    """The kernel is built (setup.py) and matched torch's bits on this torch's probes; otherwise
    the tests above check torch's operations only."""
    assert task_arithmetic.native_combine_matches_torch()


class _InMemorySource:
    """A TensorSource over a tensor, counting the elements read: the merge must read in parts."""

    def __init__(self, tensor: torch.Tensor):
        self.tensor, self.shape, self.dtype = tensor, tuple(tensor.shape), tensor.dtype
        self.largest_read = 0

    def read(self, start: int, stop: int) -> torch.Tensor:
        self.largest_read = max(self.largest_read, stop - start)
        return self.tensor.reshape(-1)[start:stop].clone()


def _streamed(inputs_of, method: str, tensors, chunk: int, **kwargs) -> tuple[torch.Tensor, torch.Tensor, list[_InMemorySource]]:
    """(merge's result, merge_streamed's from the same tensors as sources, the sources)."""
    spec = get_method(method)
    inputs = inputs_of(method, tensors, **kwargs)
    sources = [_InMemorySource(t) for t in tensors]
    streamed_inputs = replace(inputs, tensors=tuple(sources))
    assert spec.streams(streamed_inputs)
    streamed = spec.merge_streamed.func(streamed_inputs, chunk=chunk, **spec.merge_streamed.keywords)
    return spec.merge(inputs), streamed, sources


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.view({torch.float32: torch.int32, torch.float64: torch.int64}.get(tensor.dtype, torch.int16))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("models", [1, 2, 5, 17])
@pytest.mark.parametrize("method", ["task_arithmetic", "ties", "breadcrumbs", "breadcrumbs_ties"])
@pytest.mark.parametrize("chunk", [64, 4096])
def test_streamed_merge_has_the_in_memory_bits(inputs_of, method, models, dtype, chunk):
    """From inputs read a chunk at a time, the bits of the merge of whole tensors: few-valued
    deltas (ties at every sort boundary), a tensor that ends inside a block of 64, one model kept
    whole and one dropped (density 1 and 0), and past 4 models the combination's tail."""
    generator = torch.Generator().manual_seed(models)
    base = torch.randn(301, 77, generator=generator).to(dtype)
    others = [(base + torch.randint(-3, 4, base.shape, generator=generator) * 0.25).to(dtype) for _ in range(models)]
    densities = [0.3, 1.0, 0.0, 0.6, 0.45][:models] + [0.5] * max(0, models - 5)
    model_params = [{"weight": 0.7 - 0.1 * i, "density": d, "gamma": 0.02} for i, d in enumerate(densities)] + [{}]
    whole, streamed, sources = _streamed(inputs_of, method, [*others, base], chunk, base_index=models, model_params=model_params)
    assert torch.equal(_bits(streamed), _bits(whole))
    assert max(s.largest_read for s in sources) == min(chunk, base.numel())


@pytest.mark.parametrize("method", ["task_arithmetic", "ties"])
def test_streamed_merge_of_values_that_are_not_finite(inputs_of, method):
    """Parts whose combination is not finite are combined by torch's operations, as whole tensors are."""
    generator = torch.Generator().manual_seed(3)
    base = torch.randn(5000, generator=generator).to(torch.bfloat16)
    other = base + torch.randn(5000, generator=generator).to(torch.bfloat16)
    other[::97], other[5::131] = float("inf"), float("nan")
    params = [{"weight": 0.5, "density": 0.5}, {}]
    whole, streamed, _ = _streamed(inputs_of, method, [other, base], 256, base_index=1, model_params=params, params={"lambda": 1.5})
    assert torch.equal(_bits(streamed), _bits(whole))


def test_streamed_merge_sorts_the_delta_where_the_keys_cannot_tell(inputs_of, monkeypatch):
    """Where the window of keys gives up (introsort's depth limit), the delta is made whole and
    sorted, as the in-memory merge does."""
    monkeypatch.setattr(introsort, "window_of_keys", lambda *args: None)
    generator = torch.Generator().manual_seed(4)
    base = torch.randn(3000, generator=generator).to(torch.bfloat16)
    others = [(base + torch.randint(-2, 3, (3000,), generator=generator) * 0.5).to(torch.bfloat16) for _ in range(2)]
    params = [{"weight": 1.0, "density": 0.4}, {"weight": 0.5, "density": 0.7}, {}]
    whole, streamed, _ = _streamed(inputs_of, "ties", [*others, base], 128, base_index=2, model_params=params)
    assert torch.equal(_bits(streamed), _bits(whole))


@pytest.mark.parametrize(("method", "dtype", "params", "fast", "streams"), [
    ("ties", torch.bfloat16, {}, False, True),
    ("ties", torch.bfloat16, {"rescale": True}, False, False),  # L1 norms of whole deltas
    ("ties", torch.bfloat16, {}, True, False),  # --fast-sparsify keeps the delta whole
    ("ties", torch.float64, {}, False, False),  # no native window for float64 keys
    ("task_arithmetic", torch.float64, {}, False, True),
    ("dare_ties", torch.bfloat16, {}, False, False),  # draws over whole tensors
    ("della", torch.bfloat16, {}, False, False),
])
def test_which_merges_stream(inputs_of, method, dtype, params, fast, streams):
    tensors = [torch.zeros(8, dtype=dtype)] * 2
    inputs = inputs_of(method, tensors, base_index=1, params=params, model_params=[{"weight": 1.0, "density": 0.5}, {}])
    assert get_method(method).streams(replace(inputs, fast_sparsify=fast)) is streams

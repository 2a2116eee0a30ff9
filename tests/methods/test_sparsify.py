import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mergeflow.methods import sparsify


def test_magnitude_keeps_the_top_k_by_absolute_value():
    delta = torch.tensor([1.0, -5.0, 3.0, -2.0])
    out = sparsify.magnitude(delta, 0.5, rescale=False)
    assert torch.equal(out, torch.tensor([0.0, -5.0, 3.0, 0.0]))


def test_magnitude_keeps_at_least_one_and_none_at_zero_density():
    delta = torch.tensor([1.0, -5.0, 3.0, -2.0])
    assert torch.equal(sparsify.magnitude(delta, 0.1, False), torch.tensor([0.0, -5.0, 0.0, 0.0]))
    assert torch.equal(sparsify.magnitude(delta, 0.0, False), torch.zeros(4))
    assert sparsify.magnitude(delta, 1.0, False) is delta


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("rescale", [False, True])
def test_magnitude_of_an_empty_delta_is_empty(fast, rescale):
    """mergekit 0.1.5 keeps max(1, k) entries, which of an empty tensor selects none."""
    delta = torch.zeros(0, 4, dtype=torch.bfloat16)
    out = sparsify.magnitude(delta, 0.5, rescale, fast=fast)
    assert out.shape == (0, 4) and out.dtype == torch.bfloat16


def test_magnitude_rescale_preserves_the_l1_norm():
    delta = torch.tensor([1.0, -5.0, 3.0, -2.0])  # L1 11, kept L1 8
    out = sparsify.magnitude(delta, 0.5, rescale=True)
    assert torch.allclose(out, torch.tensor([0.0, -5.0, 3.0, 0.0]) * (11 / 8))


def test_magnitude_outliers_drops_the_top_gamma_and_the_bottom():
    delta = torch.arange(1.0, 11.0) * torch.tensor([1.0, -1.0] * 5)  # |x| = 1..10
    out = sparsify.magnitude_outliers(delta, density=0.5, gamma=0.2, rescale=False)
    kept = out != 0
    # keep 5 entries, after dropping the 2 largest (10, 9) and the 3 smallest (1, 2, 3)
    assert kept.tolist() == [False, False, False, True, True, True, True, True, False, False]
    assert torch.equal(out[kept], delta[kept])


def test_magnitude_outliers_with_small_gamma_on_a_small_tensor_keeps_the_top():
    # int(0.01 * 10) == 0 drops nothing at the top, mergekit 0.1.5 (HEAD zeroed everything)
    delta = torch.arange(1.0, 11.0)
    out = sparsify.magnitude_outliers(delta, density=0.3, gamma=0.01, rescale=False)
    assert torch.equal(out, torch.tensor([0.0] * 7 + [8.0, 9.0, 10.0]))


def test_bernoulli_at_full_density_is_the_identity_and_draws_nothing():
    delta = torch.randn(10)
    state = torch.get_rng_state()
    assert sparsify.bernoulli(delta, 1.0, rescale=True) is delta
    assert torch.equal(torch.get_rng_state(), state)


def test_bernoulli_is_reproducible_from_the_global_seed_and_l1_rescaled():
    delta = torch.randn(1000)
    torch.manual_seed(7)
    first = sparsify.bernoulli(delta, 0.3, rescale=True)
    torch.manual_seed(7)
    second = sparsify.bernoulli(delta, 0.3, rescale=True)
    assert torch.equal(first, second)
    kept = first != 0
    assert 200 < kept.sum() < 400
    factor = delta.abs().sum() / delta[kept].abs().sum()
    assert torch.allclose(first[kept], delta[kept] * factor)
    assert torch.allclose(first.abs().sum(), delta.abs().sum())
    # the same seed without rescaling keeps the same entries, unscaled
    torch.manual_seed(7)
    plain = sparsify.bernoulli(delta, 0.3, rescale=False)
    assert torch.equal(plain, delta * kept)


def test_bernoulli_mask_is_drawn_like_mergekit():
    delta = torch.randn(64, dtype=torch.float16)
    torch.manual_seed(3)
    mask = torch.bernoulli(torch.full_like(delta, 0.6, dtype=torch.float32))
    torch.manual_seed(3)
    out = sparsify.bernoulli(delta, 0.6, rescale=False)
    assert out.dtype == torch.float16
    assert torch.equal(out, (delta.float() * mask).half())


def test_della_probabilities_rise_linearly_with_magnitude_rank():
    delta = torch.tensor([[3.0, -1.0, 5.0, 2.0, -4.0], [1.0, 2.0, 3.0, 4.0, 5.0]])
    expected = torch.tensor([[0.5, 0.4, 0.6, 0.45, 0.55], [0.4, 0.45, 0.5, 0.55, 0.6]])
    assert torch.allclose(sparsify.della_probabilities(delta, density=0.5, epsilon=0.1), expected)


def test_della_vector_is_one_row(monkeypatch):
    delta = torch.tensor([1.0, 2.0, 3.0])
    assert torch.allclose(sparsify.della_probabilities(delta, 0.5, 0.1), torch.tensor([[0.4, 0.5, 0.6]]))
    monkeypatch.setattr(sparsify, "uniforms_match_bernoulli", lambda: False)  # draw through bernoulli
    monkeypatch.setattr(torch, "bernoulli", lambda p: (p > 0.5).to(p.dtype))
    out = sparsify.della_magprune(delta, density=0.5, epsilon=0.1, rescale=True)
    assert torch.allclose(out, torch.tensor([0.0, 0.0, 6.0]))  # L1 6 moved onto the survivor


def test_della_edges():
    delta = torch.randn(3, 4)
    assert sparsify.della_magprune(delta, 1.0, 0.15, True) is delta
    assert torch.equal(sparsify.della_magprune(delta, 0.0, 0.15, True), torch.zeros(3, 4))
    for density in (0.85, 0.15):  # density +/- epsilon touches 1 or 0
        with pytest.raises(ValueError, match="epsilon"):
            sparsify.della_magprune(delta, density, 0.15, True)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_fast_selection_keeps_the_same_magnitudes_and_breaks_ties_by_index(dtype):
    delta = (torch.randn(5000, generator=torch.Generator().manual_seed(0)) * 0.02).to(dtype)
    for exact, fast in [
        (sparsify.magnitude(delta, 0.3, False), sparsify.magnitude(delta, 0.3, False, fast=True)),
        (sparsify.magnitude_outliers(delta, 0.6, 0.05, False), sparsify.magnitude_outliers(delta, 0.6, 0.05, False, fast=True)),
    ]:
        assert (fast != 0).sum() == (exact != 0).sum()
        assert torch.equal(fast.abs().float().sort().values, exact.abs().float().sort().values)
    keys = delta.abs().float()
    stable_top = torch.zeros(5000, dtype=torch.bool)
    stable_top[torch.argsort(keys, descending=True, stable=True)[:1500]] = True
    assert torch.equal(sparsify.magnitude(delta, 0.3, False, fast=True) != 0, stable_top & (delta != 0))


def _mergekit_della_probabilities(delta: torch.Tensor, density: float, epsilon: float) -> torch.Tensor:
    """§8.5 as written: ranks from a second argsort, mapped element by element in the working dtype."""
    work = sparsify._work_dtype(delta)
    x = delta.to(work)
    x = x.unsqueeze(0) if x.dim() == 1 else x
    ranks = torch.argsort(torch.argsort(x.abs(), dim=1), dim=1).to(work) + 1
    low, high = ranks.min(dim=1, keepdim=True).values, ranks.max(dim=1, keepdim=True).values
    return (density - epsilon) + ((ranks - low) / (high - low)).clamp(0, 1) * 2 * epsilon


@settings(max_examples=80, deadline=None)
@given(
    shape=st.sampled_from([(7,), (5, 9), (3, 6, 4), (2, 300), (3, 1000), (1, 3000), (4, 1), (1,)]),
    dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
    levels=st.sampled_from([3, 50, None]),
    seed=st.integers(0, 2**16),
    density=st.sampled_from([0.5, 0.3, 0.77]),
)
def test_della_probabilities_are_mergekits_bit_for_bit(shape, dtype, levels, seed, density):
    """One rank-to-probability vector scattered into place equals mergekit's argsort of argsort
    mapped per element: in bfloat16 (ranks above 256 round), with ties (few magnitude levels),
    for vectors, 3-D fused expert tensors and one-column rows (0/0: NaN, as in mergekit)."""
    generator = torch.Generator().manual_seed(seed)
    delta = torch.randn(shape, generator=generator)
    if levels is not None:
        delta = torch.randint(-levels, levels + 1, shape, generator=generator) / levels
    delta = delta.to(dtype)
    expected = _mergekit_della_probabilities(delta, density, 0.1)
    got = sparsify.della_probabilities(delta, density, 0.1)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    assert torch.equal(got.isnan(), expected.isnan())  # a NaN's payload decides no draw
    assert torch.equal(got.nan_to_num(-1), expected.nan_to_num(-1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("della", [False, True])
def test_drawing_uniforms_gives_bernoullis_masks_and_leaves_the_generator_alike(monkeypatch, dtype, della):
    """The fast draw (uniforms in plan order, comparisons after) against torch.bernoulli itself."""
    assert sparsify.uniforms_match_bernoulli()
    delta = torch.randn(3, 1000, dtype=dtype) if della else torch.randn(5003, dtype=dtype)

    def run():
        torch.manual_seed(11)
        probabilities = (sparsify.della_probabilities(delta, 0.4, 0.1) if della
                         else sparsify.bernoulli_probabilities(delta, 0.4))
        out = sparsify.masked_draw(delta, probabilities, rescale=True)()
        return out, torch.rand(4)

    fast, after_fast = run()
    monkeypatch.setattr(sparsify, "uniforms_match_bernoulli", lambda: False)
    slow, after_slow = run()
    assert fast.dtype == dtype and torch.equal(fast.view(torch.uint8), slow.view(torch.uint8))
    assert torch.equal(after_fast, after_slow)


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(st.sampled_from([0.0, -0.0, 1.5, -2.0, 2.0**-133, -(2.0**-24), 3e38, float("inf"), float("nan")]) | st.floats(width=32),
                    min_size=0, max_size=300),
    dtype=st.sampled_from([torch.bfloat16, torch.float16, torch.float32, torch.float64]),
    seed=st.integers(0, 2**16),
)
def test_masking_has_torchs_bits(values, dtype, seed):
    """A bool mask applied natively gives the bits of ``delta * mask``: kept entries as they are,
    dropped ones as zeros of their sign; NaN and inf through torch itself."""
    delta = torch.tensor(values, dtype=torch.float32).to(dtype)
    mask = torch.rand(len(values), generator=torch.Generator().manual_seed(seed)) < 0.5
    bits = {torch.float32: torch.int32, torch.float64: torch.int64}.get(dtype, torch.int16)
    assert torch.equal(sparsify.apply_mask(delta, mask).view(bits), (delta * mask).view(bits))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_masking_a_large_tensor_has_torchs_bits(dtype, torch_threads):
    """Split among torch's threads, the native masking still gives ``delta * mask`` bit for bit,
    signed zeros included."""
    generator = torch.Generator().manual_seed(torch_threads)
    delta = torch.randn(1_000_003, generator=generator).to(dtype)
    delta[::5] = -0.0
    mask = torch.rand(1_000_003, generator=generator) < 0.5
    bits = torch.int32 if dtype == torch.float32 else torch.int16
    assert torch.equal(sparsify.apply_mask(delta, mask).view(bits), (delta * mask).view(bits))


def test_native_masking_is_used_here():
    """The kernel is built (setup.py) and matched torch's bits on this torch's probes."""
    assert sparsify.native_masking_matches_torch()

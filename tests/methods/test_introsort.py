"""The sort windows: the same members as torch's own unstable sort, ties included, and for
--fast-sparsify as its stable sort."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mergeflow.methods import introsort

native = pytest.mark.skipif(not introsort.native_matches_torch(), reason="the native kernel is not built here (no C compiler at install)")


def _by_torch_sort(values: torch.Tensor, start: int, stop: int, descending: bool, stable: bool = False) -> torch.Tensor:
    """mergekit's window: its sort of the magnitudes, as float32."""
    order = torch.sort(values.abs().float().reshape(-1), descending=descending, stable=stable).indices
    inside = torch.zeros(values.numel(), dtype=torch.bool)
    inside[order[start:stop]] = True
    return inside


# Few distinct values (so ties straddle every boundary), NaNs, infinities and signed zeros.
values = st.lists(st.sampled_from([0.0, -0.0, 0.5, 1.0, 1.5, 2.0, float("inf"), float("nan")]) | st.floats(width=32),
                  min_size=0, max_size=3000)


@native
@settings(max_examples=300, deadline=None)
@given(values, st.integers(0, 3000), st.integers(0, 3000), st.booleans(),
       st.sampled_from([torch.float32, torch.bfloat16, torch.float16]))
def test_window_has_the_members_torch_sort_puts_there(entries, a, b, descending, dtype):
    tensor = torch.tensor(entries, dtype=torch.float32).to(dtype)
    start, stop = sorted((min(a, len(entries)), min(b, len(entries))))
    expected = _by_torch_sort(tensor, start, stop, descending)
    assert torch.equal(introsort.magnitude_window(tensor, start, stop, descending), expected)


@native
@settings(max_examples=300, deadline=None)
@given(values, st.integers(0, 3000), st.integers(0, 3000), st.booleans(),
       st.sampled_from([torch.float32, torch.bfloat16, torch.float16]), st.integers(1, 700))
def test_window_of_keys_filled_in_chunks_has_the_same_members(entries, a, b, descending, dtype, chunk):
    """The streamed merges' route: the keys written a chunk at a time, the window taken of them."""
    tensor = torch.tensor(entries, dtype=torch.float32).to(dtype)
    start, stop = sorted((min(a, len(entries)), min(b, len(entries))))
    words = torch.empty(len(entries), dtype=torch.int32)
    for first in range(0, len(entries), chunk):
        introsort.fill_keys(tensor[first : first + chunk], words[first : first + chunk])
    inside = introsort.window_of_keys(words, dtype, start, stop, descending)
    assert inside is not None and torch.equal(inside, _by_torch_sort(tensor, start, stop, descending))


@settings(max_examples=200, deadline=None)
@given(values, st.integers(0, 3000), st.integers(0, 3000), st.booleans(),
       st.sampled_from([torch.float32, torch.bfloat16, torch.float16, torch.float64]), st.booleans())
def test_stable_window_has_the_members_a_stable_sort_puts_there(entries, a, b, descending, dtype, native_kernel):
    """Natively (a radix select) and through torch's stable sort, which float64 and a build
    without the kernel use."""
    tensor = torch.tensor(entries, dtype=torch.float32).to(dtype)
    start, stop = sorted((min(a, len(entries)), min(b, len(entries))))
    expected = _by_torch_sort(tensor, start, stop, descending, stable=True)
    with pytest.MonkeyPatch.context() as patch:
        if not native_kernel:
            patch.setattr(introsort, "_introsort", None)
        assert torch.equal(introsort.stable_magnitude_window(tensor, start, stop, descending), expected)


@native
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("descending", [True, False])
def test_magnitudes_of_a_large_tensor(descending, dtype):
    """Millions of entries with many equal magnitudes at every boundary (rounded to bfloat16 even
    in float32), a 2-D tensor read in place, and the input left as it was."""
    generator = torch.Generator().manual_seed(5)
    tensor = (torch.randn(1 << 10, 1 << 11, generator=generator) * 0.02).to(torch.bfloat16).to(dtype)
    original = tensor.clone()
    n = tensor.numel()
    for start, stop in ((0, n // 10), (n // 4, n // 2), (0, n - 1), (0, n)):
        assert torch.equal(introsort.magnitude_window(tensor, start, stop, descending),
                           _by_torch_sort(tensor, start, stop, descending))
        assert torch.equal(introsort.stable_magnitude_window(tensor, start, stop, descending),
                           _by_torch_sort(tensor, start, stop, descending, stable=True))
    assert torch.equal(tensor, original)


@native
def test_float64_uses_the_sort(monkeypatch):
    """The kernel reads bfloat16, float16 and float32; float64 magnitudes are rounded to
    float32 keys by mergekit, which the sort path does."""
    calls = []
    real = introsort._sorted_window_by_sort
    monkeypatch.setattr(introsort, "_sorted_window_by_sort", lambda *a: calls.append(a[0].dtype) or real(*a))
    values = torch.tensor([1.0, 1.0 + 1e-12, -1.0, 0.5], dtype=torch.float64)
    assert torch.equal(introsort.magnitude_window(values, 0, 2, True), _by_torch_sort(values, 0, 2, True))
    assert calls == [torch.float32]


def _median_of_three_killer(n: int) -> list[float]:
    """An input on which introsort's quicksort phase degenerates (McIlroy's adversary, 1999): the
    values are fixed lazily, during an ascending sort, so that every comparison goes against it."""
    gas = float(n)
    value = [gas] * n
    state = {"solid": 0, "candidate": None}

    def before(x: int, y: int) -> bool:
        if value[x] == gas and value[y] == gas:
            frozen = x if x == state["candidate"] else y
            value[frozen] = float(state["solid"])
            state["solid"] += 1
        if value[x] == gas:
            state["candidate"] = x
        elif value[y] == gas:
            state["candidate"] = y
        return value[x] < value[y]

    items = list(range(n))
    ranges = [(0, n)]
    while ranges:  # the partitions of the kernel (and of libstdc++'s introsort), without a depth limit
        first, last = ranges.pop()
        if last - first <= 16:
            continue
        a, b, c = first + 1, first + (last - first) // 2, last - 1
        if before(items[a], items[b]):
            median = b if before(items[b], items[c]) else c if before(items[a], items[c]) else a
        else:
            median = a if before(items[a], items[c]) else c if before(items[b], items[c]) else b
        items[first], items[median] = items[median], items[first]
        pivot, left, right = items[first], first + 1, last
        while True:
            while before(items[left], pivot):
                left += 1
            right -= 1
            while before(pivot, items[right]):
                right -= 1
            if left >= right:
                break
            items[left], items[right] = items[right], items[left]
            left += 1
        ranges += [(first, left), (left, last)]
    return value


@native
def test_an_input_past_introsorts_depth_limit_is_left_to_the_sort():
    """Where introsort would switch to heapsort, the kernel gives up, from the values as from
    their keys; the window then comes from torch's sort."""
    from mergeflow.methods import _introsort

    keys = torch.tensor(_median_of_three_killer(400))
    n = keys.numel()
    copy, inside = keys.clone(), torch.zeros(n, dtype=torch.bool)
    assert not _introsort.window(copy.data_ptr(), 2, n, n // 2, n // 2 + 5, False, inside.data_ptr())
    assert torch.equal(copy, keys)
    words = torch.empty(n, dtype=torch.int32)
    introsort.fill_keys(keys, words)
    assert introsort.window_of_keys(words, keys.dtype, n // 2, n // 2 + 5, False) is None
    for descending in (True, False):
        assert torch.equal(introsort.magnitude_window(keys, n // 2, n // 2 + 5, descending),
                           _by_torch_sort(keys, n // 2, n // 2 + 5, descending))


@settings(max_examples=120, deadline=None)
@given(
    shape=st.sampled_from([(1, 1), (3, 17), (4, 300), (2, 2000), (3, 40, 5)]),
    dtype=st.sampled_from([torch.bfloat16, torch.float16, torch.float32, torch.float64]),
    levels=st.sampled_from([2, 9, 200]),
    specials=st.sets(st.sampled_from([0.0, -0.0, float("inf"), float("-inf"), float("nan")]), max_size=3),
    seed=st.integers(0, 2**16),
)
def test_magnitudes_sort_as_torch_sorts_them_ties_included(shape, dtype, levels, specials, seed):
    """DELLA's rank sort, on the magnitudes' integer bits, gives torch's own float order along
    dim 1 (the 3-D case is a fused expert tensor); signed zeros, infinities and NaNs included."""
    generator = torch.Generator().manual_seed(seed)
    values = torch.randint(-levels, levels + 1, shape, generator=generator) / levels
    for value in specials:
        values.view(-1)[torch.randint(0, values.numel(), (max(1, values.numel() // 10),), generator=generator)] = value
    magnitudes = values.to(dtype).abs()
    assert torch.equal(introsort.argsort_magnitudes(magnitudes, dim=1), torch.argsort(magnitudes, dim=1))


def test_magnitudes_are_sorted_as_floats_where_integers_were_not_checked(monkeypatch):
    monkeypatch.setattr(introsort, "integer_sort_matches_float", lambda: False)
    magnitudes = torch.tensor([[0.5, 0.25, 0.5, 0.0]])
    sorted_as = []
    monkeypatch.setattr(torch, "argsort", lambda keys, dim: sorted_as.append(keys.dtype) or keys.float().argsort(dim=dim))
    introsort.argsort_magnitudes(magnitudes, dim=1)
    assert sorted_as == [torch.float32]

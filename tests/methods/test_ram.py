import torch

BASE = torch.tensor([1.0, -1.0, 2.0, 0.0])
TV1 = torch.tensor([1.0, 0.0, 2.0, 0.0])
TV2 = torch.tensor([3.0, 4.0, 0.0, 0.5])


def run(merge, method, dtype=torch.float32, **params):
    tensors = [(BASE + tv).to(dtype) for tv in (TV1, TV2)] + [BASE.to(dtype)]
    return merge(method, tensors, base_index=2, params=params)


def test_ram_averages_overlaps_and_keeps_unique_entries_whole(merge):
    # entry 0 is changed by both models (averaged), 1-3 by one model each (kept whole)
    out = run(merge, "ram")
    assert torch.equal(out, BASE + torch.tensor([2.0, 4.0, 2.0, 0.5]))


def test_ram_ignores_changes_below_epsilon(merge):
    # with epsilon 1, TV1's entry 0 and TV2's entry 3 do not count: entry 0 becomes unique to TV2
    out = run(merge, "ram", epsilon=1.0)
    assert torch.equal(out, BASE + torch.tensor([3.0, 4.0, 2.0, 0.0]))


def test_ram_keeps_bfloat16(merge):
    assert run(merge, "ram", torch.bfloat16).dtype == torch.bfloat16


def test_ramplus_tl_boosts_unique_entries_by_the_shared_ratio(merge):
    # model 1 shares 1 entry and owns 1 (ratio 1), model 2 shares 1 and owns 2 (ratio 0.5):
    # unique entries are scaled by 1 + r * clamp(ratio, 0, alpha) = 1.5 and 1.25
    out = run(merge, "ramplus_tl", r=0.5, alpha=1.0)
    assert torch.allclose(out, BASE + torch.tensor([2.0, 5.0, 3.0, 0.625]))
    # the default alpha caps the ratio at 0.2, so both boosts are 1 + 0.1 * 0.2
    out = run(merge, "ramplus_tl")
    assert torch.allclose(out, BASE + torch.tensor([2.0, 4 * 1.02, 2 * 1.02, 0.5 * 1.02]))


def test_ramplus_tl_returns_float32_for_bfloat16(merge):
    assert run(merge, "ramplus_tl", torch.bfloat16).dtype == torch.float32

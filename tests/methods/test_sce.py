import torch

BASE = torch.tensor([1.0, 1.0, 1.0, 1.0])
# task vectors with population variances [4, 0, 1, 0] across the two models
TV1 = torch.tensor([3.0, 0.0, 4.0, 2.0])
TV2 = torch.tensor([-1.0, 0.0, 2.0, 2.0])


def sce(merge, select_topk, tvs=(TV1, TV2)):
    return merge(
        "sce",
        [BASE + tv for tv in tvs] + [BASE],
        base_index=len(tvs),
        params={"select_topk": select_topk},
    )


def test_topk_keeps_only_the_highest_variance_entries(merge):
    # 2 entries have non-zero variance, half of them (the variance-4 entry) survives. There the
    # signs elect +, so only TV1 counts: energies 9/4 and 1/4 give weights 0.9 and 0.1, and the
    # erased-weighted mean is 3. Everything else falls back to the base.
    out = sce(merge, 0.5)
    assert torch.allclose(out, BASE + torch.tensor([3.0, 0.0, 0.0, 0.0]))


def test_without_selection_all_agreeing_entries_are_energy_weighted(merge):
    out = sce(merge, 1.0)
    e1, e2 = (TV1**2).mean(), (TV2**2).mean()  # 29/4, 9/4
    w1, w2 = e1 / (e1 + e2), e2 / (e1 + e2)
    expected = torch.stack(
        [
            torch.tensor(3.0),  # signs + and -: only TV1 agrees with the + majority
            torch.tensor(0.0),
            (4 * w1 + 2 * w2) / (w1 + w2),
            torch.tensor(2.0),
        ]
    )
    assert torch.allclose(out, BASE + expected)


def test_zero_selection_returns_the_base(merge):
    assert torch.equal(sce(merge, 0.0), BASE)
    # k = int(2 * 0.1) = 0 also selects nothing
    assert torch.equal(sce(merge, 0.1), BASE)


def test_zero_task_vectors_fall_back_to_equal_weights(merge):
    zero = torch.zeros(4)
    assert torch.equal(sce(merge, 1.0, tvs=(zero, zero)), BASE)

import pytest
import torch


def test_only_outlier_importance_is_fused(merge):
    base = torch.zeros(1, 8, dtype=torch.bfloat16)
    other = torch.tensor([[1.0, 2, 3, 4, 5, 6, 7, 100]], dtype=torch.bfloat16)
    # one row, so importance is |delta| times one KL value: quantiles (lower) of 1..7, 100 are
    # median 4, q1 2, q3 6, and the threshold 4 + 1.5 * 4 = 10 lets only the 100 through
    out = merge("arcee_fusion", [base, other], base_index=0)
    assert out.dtype == torch.float32
    assert torch.equal(out, torch.tensor([[0.0] * 7 + [100.0]]))


def test_mask_matches_lower_quantiles(merge):
    torch.manual_seed(0)
    base = torch.randn(16, 32)
    other = base + torch.randn(16, 32) * torch.rand(16, 1)
    out = merge("arcee_fusion", [other, base], base_index=1)
    p = torch.softmax(other, -1) + 1e-8
    q = torch.softmax(base, -1) + 1e-8
    importance = (other - base).abs() * (p * (p / q).log()).sum(-1, keepdim=True)
    median, q1, q3 = (
        torch.quantile(importance, x, interpolation="lower") for x in (0.5, 0.25, 0.75)
    )
    take = importance >= median + 1.5 * (q3 - q1)
    assert 0 < take.sum() < take.numel()
    assert torch.equal(out, torch.where(take, other, base))


def test_needs_exactly_two(merge):
    x = torch.zeros(2, 2)
    assert merge("arcee_fusion", [x], base_index=0) is x
    with pytest.raises(ValueError, match="exactly 2"):
        merge("arcee_fusion", [x, x, x], base_index=0)

import pytest
import torch

BASE = torch.tensor([[1.0, 2.0], [3.0, 4.0]])


def stock(merge, tuned, **params):
    return merge("model_stock", [*tuned, BASE], base_index=len(tuned), params=params)


def test_identical_task_vectors_give_the_fine_tune(merge):
    tuned = BASE + torch.tensor([[0.5, -0.25], [1.0, 0.0]])
    assert torch.allclose(stock(merge, [tuned, tuned, tuned]), tuned)


def test_orthogonal_task_vectors_give_the_base(merge):
    tuned = [
        BASE + torch.tensor([[1.0, 0.0], [0.0, 0.0]]),
        BASE + torch.tensor([[0.0, 2.0], [0.0, 0.0]]),
    ]
    assert torch.equal(stock(merge, tuned), BASE)


def test_ratio_follows_the_mean_cosine(merge):
    # cos 0.5 between the task vectors: t = 2 * 0.5 / (1 + 0.5) = 2/3 towards their average
    d1 = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    d2 = torch.tensor([[0.5, 3**0.5 / 2], [0.0, 0.0]])
    out = stock(merge, [BASE + d1, BASE + d2])
    assert torch.allclose(out, BASE + (2 / 3) * (d1 + d2) / 2)


def test_opposite_task_vectors_hit_the_singular_guard(merge):
    d = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert torch.equal(stock(merge, [BASE + d, BASE - d]), BASE)


def test_filter_wise_uses_one_ratio_per_row(merge):
    # row 0: identical task vectors (t = 1); row 1: orthogonal (t = 0)
    d1 = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    d2 = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    out = stock(merge, [BASE + d1, BASE + d2], filter_wise=True)
    assert torch.allclose(out, BASE + torch.tensor([[1.0, 1.0], [0.0, 0.0]]))


def test_base_alone_is_returned_and_two_tensors_fail(merge):
    assert merge("model_stock", [BASE], base_index=0) is BASE
    with pytest.raises(ValueError, match="at least 3"):
        stock(merge, [BASE + 1])

import torch


def test_closed_form(merge):
    base = torch.zeros(3)
    other = torch.tensor([0.05, 0.5, 2.0])
    # weight = clamp(t / |base - other|, 0, 1) = [1, 0.2, 0.05]
    out = merge("nearswap", [base, other], base_index=0, params={"t": 0.1})
    assert torch.allclose(out, torch.tensor([0.05, 0.1, 0.1]))


def test_identical_inputs_stay(merge):
    x = torch.tensor([1.0, -2.0])
    assert torch.equal(merge("nearswap", [x, x.clone()], base_index=1, params={"t": 0.5}), x)


def test_lone_base_is_passed_through(merge):
    x = torch.ones(2)
    assert merge("nearswap", [x], base_index=0, params={"t": 0.5}) is x

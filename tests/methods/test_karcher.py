import math

import torch


def test_identical_unit_vectors_are_their_own_mean(merge):
    x = torch.tensor([0.6, 0.0, -0.8])
    out = merge("karcher", [x, x, x])
    assert torch.allclose(out, x, atol=1e-6)


def test_scale_is_the_mean_norm_and_direction_the_common_one(merge):
    x = torch.tensor([[3.0, 4.0], [0.0, 0.0]])  # norm 5
    out = merge("karcher", [x, 2 * x, 3 * x])
    assert torch.allclose(out, 2 * x, atol=1e-5)


def test_orthogonal_unit_vectors_meet_half_way_on_the_sphere(merge):
    out = merge("karcher", [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])])
    assert torch.allclose(out, torch.tensor([math.sqrt(0.5), math.sqrt(0.5)]), atol=1e-5)
    assert torch.allclose(out.norm(), torch.tensor(1.0), atol=1e-5)


def test_the_base_is_averaged_too(merge):
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    with_base = merge("karcher", [e1, e2], base_index=1)
    assert torch.allclose(with_base, merge("karcher", [e1, e2]))


def test_zero_inputs_give_zeros_and_count_in_the_scale(merge):
    zero = torch.zeros(2)
    assert torch.equal(merge("karcher", [zero, zero]), zero)
    # a zero input has no direction, but its norm (0) still enters the mean norm
    x = torch.tensor([0.0, 4.0])
    assert torch.allclose(merge("karcher", [x, zero]), torch.tensor([0.0, 2.0]))


def test_bfloat16_stays_bfloat16(merge):
    xs = [torch.randn(8, 8).to(torch.bfloat16) for _ in range(3)]
    assert merge("karcher", xs, params={"max_iter": 3}).dtype == torch.bfloat16


def test_a_lone_input_is_returned_as_is(merge):
    """mergekit returns it unchanged; rescaling by its own norm would round half precision."""
    x = torch.randn(16, 8).to(torch.float16)
    assert merge("karcher", [x]) is x

import pytest
import torch

from mergeflow.methods import get_method


def test_copies_or_scales_the_single_input(merge):
    x = torch.tensor([1.0, -2.0], dtype=torch.bfloat16)
    assert merge("passthrough", [x]) is x
    out = merge("passthrough", [x], model_params=[{"scale": 0.5}])
    assert out.dtype == torch.bfloat16 and torch.equal(out, x / 2)


def test_rejects_several_inputs(merge):
    x = torch.zeros(2)
    with pytest.raises(ValueError, match="exactly one input"):
        merge("passthrough", [x, x], base_index=1)


def test_stays_off_the_accelerator():
    assert get_method("passthrough").uses_accelerator is False

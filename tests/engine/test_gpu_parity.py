"""On CUDA, mergeflow and mergekit 0.1.5 run the same kernels: outputs must still be bit-identical.

Skipped without a GPU (CI has none); run on a GPU machine with `pytest tests/engine/test_gpu_parity.py`.
"""

from __future__ import annotations

import pytest
import torch

from oracle import assert_bit_identical, mergeflow_merge, mergekit_merge
from test_parity import METHOD_CONFIGS, render

pytestmark = [
    pytest.mark.parity,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("name", sorted(METHOD_CONFIGS))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_method_on_cuda(name, dtype, model_dir, tmp_path):
    text = render(METHOD_CONFIGS[name], model_dir, name, dtype=dtype)
    mergekit_merge(text, tmp_path / "mergekit", device="cuda")
    mergeflow_merge(text, tmp_path / "mergeflow", device="cuda")
    assert_bit_identical(tmp_path / "mergeflow", tmp_path / "mergekit")

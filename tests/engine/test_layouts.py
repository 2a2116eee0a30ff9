"""Checkpoint-layout conversion: legacy MoE checkpoints merge as mergekit 0.1.5 merges them.

transformers 5 saves Mixtral, Qwen3-MoE and GLM-4-MoE checkpoints in the legacy per-expert layout,
which is what these tiny models have on disk; mergekit converts them to the fused v5 layout before
merging, so every method sees the stacked experts as one tensor.
"""

from __future__ import annotations

import pytest

import torch

from oracle import assert_bit_identical, load_dir, mergeflow_merge, mergekit_merge

pytestmark = pytest.mark.parity

CASES = [
    ("mixtral", "ties"),
    ("mixtral", "slerp"),
    ("qwen3_moe", "ties"),
    ("glm4_moe", "linear"),
]


def _config(method: str, base, m1, m2) -> str:
    if method == "slerp":
        return f"merge_method: slerp\nbase_model: {base}\nmodels:\n  - model: {base}\n  - model: {m1}\nparameters: {{t: [0.2, 0.7]}}\n"
    params = {"linear": "weight: 0.5", "ties": "weight: 0.6, density: 0.5", "dare_ties": "weight: 0.6, density: 0.5",
              "della": "weight: 0.6, density: 0.5, epsilon: 0.1"}[method]
    base_line = "" if method == "linear" else f"base_model: {base}\n"
    base_params = "\n    parameters: {weight: 0.5}" if method == "linear" else ""
    return (
        f"merge_method: {method}\n{base_line}models:\n  - model: {base}{base_params}\n"
        f"  - model: {m1}\n    parameters: {{{params}}}\n  - model: {m2}\n    parameters: {{{params}}}\n"
    )


@pytest.mark.parametrize(("arch", "method"), CASES)
def test_legacy_moe_layout_matches_mergekit(arch, method, model_dir, tmp_path):
    base, m1, m2 = (model_dir(n, arch=arch, layers=2) for n in ("base", "m1", "m2"))
    text = _config(method, base, m1, m2)
    mergekit_merge(text, tmp_path / "mergekit")
    mergeflow_merge(text, tmp_path / "mergeflow")
    assert_bit_identical(tmp_path / "mergeflow", tmp_path / "mergekit")
    names = set(load_dir(tmp_path / "mergeflow"))
    assert not any(".experts.0." in n or "block_sparse_moe" in n for n in names)
    assert any(n.endswith("mlp.experts.gate_up_proj") for n in names)


@pytest.mark.parametrize("method", ["dare_ties", "della"])
def test_seeded_methods_draw_converted_tensors_first(method, model_dir, tmp_path):
    """mergekit schedules converted tensors before all others (their loads carry an empty label),
    in an order set by its internal task ids; so every other tensor's random draws line up
    exactly, and the converted ones differ from mergekit's at most by which mask each drew."""
    base, m1, m2 = (model_dir(n, arch="qwen3_moe", layers=3) for n in ("base", "m1", "m2"))
    text = _config(method, base, m1, m2)
    mergekit_merge(text, tmp_path / "mergekit")
    mergeflow_merge(text, tmp_path / "mergeflow")
    ours, theirs = load_dir(tmp_path / "mergeflow"), load_dir(tmp_path / "mergekit")
    assert sorted(ours) == sorted(theirs)
    converted = {n for n in ours if ".mlp.experts." in n}
    assert len(converted) == 6
    for name in ours:
        assert ours[name].dtype == theirs[name].dtype and ours[name].shape == theirs[name].shape, name
        if name not in converted:
            assert torch.equal(ours[name], theirs[name]), name

"""Architecture inference: families other than Llama merge exactly as mergekit's JSON definitions do."""

from __future__ import annotations

import pytest
import torch

from oracle import assert_bit_identical, mergeflow_merge, mergekit_merge

pytestmark = pytest.mark.parity

# (architecture, tied) pairs as published checkpoints have them. GPT-NeoX is not here: mergekit's
# definition requires the `attention.bias` buffers that transformers 5 no longer saves, so
# mergekit 0.1.5 cannot merge such checkpoints at all (see test_gpt_neox_merges_without_buffers).
ARCHS = [
    ("mistral", False), ("mistral", True), ("qwen2", False), ("qwen2", True), ("qwen3", False),
    ("qwen3", True), ("gemma", True), ("phi3", False), ("gpt2", True), ("gpt2", False),
]


@pytest.mark.parametrize(("arch", "tied"), ARCHS)
def test_task_arithmetic_matches_mergekit(arch, tied, model_dir, tmp_path):
    base, m1, m2 = (model_dir(n, arch=arch, tied=tied) for n in ("base", "m1", "m2"))
    text = (
        f"merge_method: task_arithmetic\nbase_model: {base}\nmodels:\n"
        f"  - model: {m1}\n    parameters: {{weight: 0.7}}\n  - model: {m2}\n    parameters: {{weight: [0.1, 0.6]}}\n"
    )
    mergekit_merge(text, tmp_path / "mergekit")
    mergeflow_merge(text, tmp_path / "mergeflow")
    assert_bit_identical(tmp_path / "mergeflow", tmp_path / "mergekit")


@pytest.mark.parametrize("arch", ["mistral", "gpt2"])
def test_frankenmerge_layer_count_and_renaming(arch, model_dir, tmp_path):
    m1, m2 = model_dir("m1", arch=arch), model_dir("m2", arch=arch)
    text = (
        "merge_method: passthrough\nslices:\n"
        f"  - sources:\n      - model: {m1}\n        layer_range: [0, 3]\n"
        f"  - sources:\n      - model: {m2}\n        layer_range: [1, 4]\n"
    )
    mergekit_merge(text, tmp_path / "mergekit")
    mergeflow_merge(text, tmp_path / "mergeflow")
    assert_bit_identical(tmp_path / "mergeflow", tmp_path / "mergekit")


def _load_causal_lm(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path)


def test_gpt_neox_merges_without_buffers(model_dir, tmp_path):
    base, m1 = model_dir("base", arch="gpt_neox"), model_dir("m1", arch="gpt_neox")
    text = f"merge_method: linear\nmodels:\n  - model: {base}\n    parameters: {{weight: 1.0}}\n  - model: {m1}\n    parameters: {{weight: 0.0}}\n"
    mergeflow_merge(text, tmp_path / "out")
    merged = _load_causal_lm(tmp_path / "out").state_dict()
    for name, tensor in _load_causal_lm(base).state_dict().items():
        assert torch.equal(merged[name], tensor), name


def test_frankenmerge_rewrites_per_layer_config_lists(model_dir, tmp_path):
    """Qwen2's `layer_types` must list every output layer, or transformers refuses the config.

    mergekit 0.1.5 fails here; we take each output layer's type from its source layer.
    """
    m1, m2 = model_dir("m1", arch="qwen2"), model_dir("m2", arch="qwen2")
    text = (
        "merge_method: passthrough\nslices:\n"
        f"  - sources:\n      - model: {m1}\n        layer_range: [0, 3]\n"
        f"  - sources:\n      - model: {m2}\n        layer_range: [1, 4]\n"
    )
    mergeflow_merge(text, tmp_path / "out")
    model = _load_causal_lm(tmp_path / "out")
    assert model.config.num_hidden_layers == 6
    assert len(model.config.layer_types) == 6
    source = _load_causal_lm(m2).state_dict()
    merged = model.state_dict()
    assert torch.equal(merged["model.layers.3.mlp.up_proj.weight"], source["model.layers.1.mlp.up_proj.weight"])

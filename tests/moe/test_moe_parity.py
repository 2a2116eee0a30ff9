"""Parity with real mergekit-moe 0.1.5: every gate mode and output architecture, bf16 and fp32 outputs,
with and without shared experts and negative prompts, on tiny Llama, Mistral, Qwen2 and Qwen3 models."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from engine.oracle import load_dir
from moe_oracle import assert_same_build, mergeflow_moe, mergekit_moe

pytestmark = pytest.mark.parity

ADD, REVERSE, COPY = ["1+2=", "add 3 and 4", "9+9="], ["reverse abc", "cba"], ["copy xyz", "repeat", ":a1=", "copy"]


def _expert(model: str, prompts: list[str] | None, *, negative=None, noise=None, residual=None) -> str:
    text = f"  - source_model: {{{model}}}\n"
    if prompts:
        text += f"    positive_prompts: {prompts!r}\n"
    if negative:
        text += f"    negative_prompts: {negative!r}\n"
    if noise is not None:
        text += f"    noise_scale: {noise}\n"
    if residual is not None:
        text += f"    residual_scale: {residual}\n"
    return text


def _config(gate_mode: str, dtype: str | None, experts: list[str], shared: list[str] | None = None, extra: str = "") -> str:
    text = f"base_model: {{base}}\ngate_mode: {gate_mode}\n" + (f"dtype: {dtype}\n" if dtype else "") + extra
    text += "experts:\n" + "".join(experts)
    if shared is not None:
        text += "shared_experts:\n" + "".join(shared)
    return text


THREE = [_expert("m1", ADD, negative=["cba"]), _expert("m2", REVERSE, noise=0.05), _expert("m3", COPY, residual=0.5)]
TWO = [_expert("m1", ADD), _expert("m2", REVERSE, negative=["1+1="])]
TWO_NOISY = [_expert("m1", None, noise=0.1), _expert("m2", None, residual=0.5)]
TWO_PROMPTED_NOISY = [_expert("m1", ADD, noise=0.1), _expert("m2", REVERSE, residual=0.5)]

# The tutorial form users bring (seed-examples.md "MoE from Merges"): merge_method: moe, default gate.
TUTORIAL = "merge_method: moe\nbase_model: {base}\nexperts:\n" + "".join(
    f"  - source_model: {{{m}}}\n    positive_prompts:\n" + "".join(f"      - \"{p}\"\n" for p in prompts)
    for m, prompts in (("m1", ("math", "calculate", "solve")), ("m2", ("code", "python")), ("m3", ("chat", "help")))
) + "dtype: bfloat16\n"

# name: (family, stored dtype, tied, config text, expected output architecture)
CASES = {
    "mixtral-llama-hidden-bf16-negatives-noise-residual": ("llama", torch.float32, False, _config("hidden", "bfloat16", THREE), "MixtralForCausalLM"),
    "mixtral-mistral-hidden_avg-fp32": ("mistral", torch.float32, False, _config("hidden_avg", "float32", TWO), "MixtralForCausalLM"),
    "mixtral-llama-tied-cheap_embed-fp32-negatives": ("llama", torch.float32, True, _config("cheap_embed", None, THREE, extra="experts_per_token: 1\n"), "MixtralForCausalLM"),
    "mixtral-llama-bf16-inputs-random-noise": ("llama", torch.bfloat16, False, _config("random", None, TWO_NOISY), "MixtralForCausalLM"),
    "mixtral-mistral-uniform_random-fp32": ("mistral", torch.float32, False, _config("uniform_random", "float32", TWO_PROMPTED_NOISY), "MixtralForCausalLM"),
    "deepseek-llama-shared-cheap_embed-bf16": ("llama", torch.float32, False, _config("cheap_embed", "bfloat16", TWO, [_expert("base", None, residual=0.5)]), "DeepseekForCausalLM"),
    "deepseek-forced-mistral-hidden-fp32": ("mistral", torch.float32, False, _config("hidden", "float32", THREE, extra="architecture: deepseek\n"), "DeepseekForCausalLM"),
    "qwen-llama-shared-prompts-hidden-bf16": ("llama", torch.float32, False, _config("hidden", "bfloat16", TWO, [_expert("base", COPY, residual=0.5)]), "Qwen2MoeForCausalLM"),
    "qwen-qwen2-shared-cheap_embed-fp32-negatives": ("qwen2", torch.float32, False, _config("cheap_embed", "float32", THREE, [_expert("m1", COPY, negative=["1+2="])]), "Qwen2MoeForCausalLM"),
    "qwen-qwen2-random-shared-without-prompts-bf16": ("qwen2", torch.bfloat16, False, _config("random", None, TWO_NOISY, [_expert("m2", None, noise=0.1)]), "Qwen2MoeForCausalLM"),
    "qwen3-hidden-bf16-negatives-noise-residual": ("qwen3", torch.float32, False, _config("hidden", "bfloat16", THREE), "Qwen3MoeForCausalLM"),
    "qwen3-uniform_random-fp32": ("qwen3", torch.float32, False, _config("uniform_random", "float32", TWO_PROMPTED_NOISY), "Qwen3MoeForCausalLM"),
    "qwen3-hidden_avg-bf16-inputs": ("qwen3", torch.bfloat16, False, _config("hidden_avg", None, TWO), "Qwen3MoeForCausalLM"),
    "tutorial-form-mistral-bf16": ("mistral", torch.bfloat16, False, TUTORIAL, "MixtralForCausalLM"),
    "qwen3-cheap_embed-fp32": ("qwen3", torch.float32, False, _config("cheap_embed", "float32", TWO), "Qwen3MoeForCausalLM"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_parity(name, moe_models, tmp_path):
    family, stored, tied, template, architecture = CASES[name]
    text = template.format(**{k: str(v) for k, v in moe_models(family, stored, tied).items()})
    mergekit_moe(text, tmp_path / "mergekit")
    record = mergeflow_moe(text, tmp_path / "mergeflow")
    assert_same_build(tmp_path / "mergeflow", tmp_path / "mergekit")
    ours = tmp_path / "mergeflow"
    assert json.loads((ours / "config.json").read_text())["architectures"] == [architecture]
    assert record["seed"] == 7 and record["moe"]["gate_mode"] == (yaml.safe_load(text).get("gate_mode") or "hidden")
    assert sorted(record["tensors"]) == sorted(load_dir(ours))
    assert json.loads((ours / "provenance.json").read_text())["tensors"] == record["tensors"]


SHARDED = {
    "mixtral-llama": ("llama", _config("cheap_embed", "bfloat16", THREE)),
    "deepseek-mistral-noise": ("mistral", _config("cheap_embed", "bfloat16", THREE, [_expert("base", None, noise=0.1)])),
    "qwen-qwen2": ("qwen2", _config("random", "bfloat16", TWO_NOISY, [_expert("m1", None, noise=0.1)])),
    "qwen3": ("qwen3", _config("cheap_embed", "float32", THREE)),
}


@pytest.mark.parametrize("name", sorted(SHARDED))
def test_shards_follow_mergekit_save_order(name, moe_models, tmp_path):
    """Several shards: the same tensors land in the same files, in mergekit-moe's save order."""
    family, template = SHARDED[name]
    text = template.format(**{k: str(v) for k, v in moe_models(family).items()})
    mergekit_moe(text, tmp_path / "mergekit", out_shard_size=9000)
    mergeflow_moe(text, tmp_path / "mergeflow", out_shard_size=9000)
    assert_same_build(tmp_path / "mergeflow", tmp_path / "mergekit")

"""mergeflow moe beyond parity: mergekit-moe's validation rules, seeds, shared experts mergekit-moe
cannot read, the command line, and that the output loads and generates with transformers."""

from __future__ import annotations

import json

import pytest
import torch
from engine.oracle import load_dir
from moe_oracle import mergeflow_moe, mergekit_moe

from mergeflow.cli import main
from mergeflow.engine.errors import ConfigError, MergeflowError

TWO = (
    "  - source_model: {m1}\n    positive_prompts: ['1+2=']\n"
    "  - source_model: {m2}\n    positive_prompts: ['cba']\n"
)
BAD = {
    "experts_per_token": ("gate_mode: cheap_embed\nexperts_per_token: 0\nexperts:\n" + TWO, "experts_per_token"),
    "too few experts": ("gate_mode: cheap_embed\nexperts_per_token: 3\nexperts:\n" + TWO, "experts"),
    "no prompts": ("gate_mode: hidden\nexperts:\n  - source_model: {m1}\n  - source_model: {m2}\n    positive_prompts: [b]\n", "experts[0].positive_prompts"),
    "uniform_random needs prompts": ("gate_mode: uniform_random\nexperts:\n  - source_model: {m1}\n  - source_model: {m2}\n", "experts[0].positive_prompts"),
    "same prompts": ("experts:\n  - source_model: {m1}\n    positive_prompts: [a]\n  - source_model: {m2}\n    positive_prompts: [a]\n", "experts"),
    "same model": ("gate_mode: cheap_embed\nexperts:\n  - source_model: {m1}\n    positive_prompts: [a]\n  - source_model: {m1}\n    positive_prompts: [b]\n", "experts"),
    "gate_mode": ("gate_mode: hiden\nexperts:\n" + TWO, "gate_mode"),
    "architecture": ("architecture: gpt\nexperts:\n" + TWO, "architecture"),
    "no architecture fits": ("architecture: qwen3\nexperts:\n" + TWO, "architecture"),
    "prompt string": ("experts:\n  - source_model: {m1}\n    positive_prompts: add\n  - source_model: {m2}\n    positive_prompts: [b]\n", "experts[0].positive_prompts"),
    "source_model": ("experts:\n  - positive_prompts: [a]\n", "experts[0].source_model"),
}


def _text(body: str, models: dict) -> str:
    return ("base_model: {base}\n" + body).format(**{k: str(v) for k, v in models.items()})


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_config_is_one_line_naming_the_key(name, moe_models, tmp_path):
    body, key = BAD[name]
    text = _text(body, moe_models("llama"))
    with pytest.raises(ConfigError) as raised:
        mergeflow_moe(text, tmp_path / "out")
    assert raised.value.key == key and len(str(raised.value).splitlines()) == 1
    assert not (tmp_path / "out").exists()
    with pytest.raises((Exception, SystemExit)):  # mergekit-moe refuses it too
        mergekit_moe(text, tmp_path / "mergekit")


def test_models_of_different_types_fit_no_architecture(moe_models, tmp_path):
    models = {**moe_models("mistral"), "m1": moe_models("llama")["m1"]}
    text = _text("gate_mode: cheap_embed\nexperts:\n" + TWO, models)
    with pytest.raises(ConfigError, match=r"different model types \(mistral, llama\)") as raised:
        mergeflow_moe(text, tmp_path / "out")
    assert raised.value.key == "experts" and not (tmp_path / "out").exists()
    with pytest.raises(SystemExit):  # mergekit-moe finds no output architecture either
        mergekit_moe(text, tmp_path / "mergekit")


def test_all_same_model_builds_when_the_user_insists(moe_models, tmp_path):
    text = _text(BAD["same model"][0], moe_models("llama"))
    mergeflow_moe(text, tmp_path / "out", allow_all_same=True)
    tensors = load_dir(tmp_path / "out")
    fused = tensors["model.layers.0.mlp.experts.down_proj"]
    assert torch.equal(fused[0], fused[1])


def test_generated_seed_is_recorded_and_reproduces_the_build(moe_models, tmp_path):
    text = _text("gate_mode: random\nexperts:\n  - source_model: {m1}\n    noise_scale: 0.1\n  - source_model: {m2}\n", moe_models("llama"))
    record = mergeflow_moe(text, tmp_path / "first", seed=None)
    assert record["seed_source"] == "generated"
    again = mergeflow_moe(text, tmp_path / "again", seed=record["seed"])
    assert again["tensors"] == record["tensors"]
    other = mergeflow_moe(text, tmp_path / "other", seed=record["seed"] + 1)
    assert other["tensors"]["model.layers.0.mlp.gate.weight"] != record["tensors"]["model.layers.0.mlp.gate.weight"]


def test_shared_expert_of_its_own_model(moe_models, tmp_path):
    """mergekit-moe 0.1.5 crashes when the shared expert is neither the base nor an expert; we build it."""
    models = moe_models("llama")
    text = _text("gate_mode: cheap_embed\nexperts:\n" + TWO + "shared_experts:\n  - source_model: {m3}\n", models)
    mergeflow_moe(text, tmp_path / "out")
    tensors, source = load_dir(tmp_path / "out"), load_dir(models["m3"])
    assert torch.equal(tensors["model.layers.1.mlp.shared_experts.up_proj.weight"], source["model.layers.1.mlp.up_proj.weight"])
    assert json.loads((tmp_path / "out" / "config.json").read_text())["n_shared_experts"] == 1


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_output_loads_and_generates(family, moe_models, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    text = _text("gate_mode: hidden\ndtype: float32\nexperts_per_token: 1\nexperts:\n" + TWO, moe_models(family))
    mergeflow_moe(text, tmp_path / "moe")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "moe")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "moe")
    assert tokenizer.pad_token == tokenizer.bos_token == "<s>"
    source = load_dir(tmp_path / "moe")
    assert torch.equal(model.state_dict()["model.layers.0.mlp.gate.weight"], source["model.layers.0.mlp.gate.weight"])
    batch = tokenizer(["1+2="], return_tensors="pt")
    generated = model.generate(**batch, max_new_tokens=4, do_sample=False)
    assert generated.shape == (1, batch["input_ids"].shape[1] + 4)


def test_command_line(moe_models, tmp_path, capsys):
    models = moe_models("llama")
    config = tmp_path / "moe.yml"
    config.write_text(_text("gate_mode: cheap_embed\nexperts:\n" + TWO, models))
    assert main(["moe", str(config), str(tmp_path / "out"), "--random-seed", "3", "--quiet"]) == 0
    record = json.loads((tmp_path / "out" / "provenance.json").read_text())
    assert record["seed"] == 3 and record["seed_source"] == "--random-seed"
    assert (tmp_path / "out" / "mergekit_moe_config.yml").read_text() == config.read_text()
    config.write_text(_text(BAD["gate_mode"][0], models))
    assert main(["moe", str(config), str(tmp_path / "bad"), "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("mergeflow moe: error: config key 'gate_mode'") and not (tmp_path / "bad").exists()
    with pytest.raises(MergeflowError):
        mergeflow_moe(_text("experts:\n" + TWO.replace("{m2}", str(tmp_path / "missing")), models), tmp_path / "x")

"""``model+lora`` references: PEFT adapters applied per tensor, bit-identical to mergekit 0.1.5,
which merges each adapter into a full copy of its base through PEFT first (--lora-merge-cache)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from tiny_models import make_lora_adapter

from oracle import assert_bit_identical, load_dir, mergeflow_merge, mergekit_merge

pytestmark = pytest.mark.parity

ATTENTION = ["q_proj", "v_proj", "o_proj"]


@pytest.fixture(scope="session")
def adapter(model_dir, tmp_path_factory):
    """Build each adapter once per session, keyed by its base variant and LoRA settings."""
    root = tmp_path_factory.mktemp("adapters")
    built = {}

    def get(base: str = "base", seed: int = 11, dtype=torch.float32, variant: dict | None = None, **config):
        key = (base, seed, str(dtype), tuple(sorted((variant or {}).items())), json.dumps(config, sort_keys=True))
        if key not in built:
            built[key] = make_lora_adapter(root / f"adapter{len(built)}", model_dir(base, **(variant or {})), seed, dtype=dtype, **config)
        return built[key]

    return get


def _both(text: str, tmp_path, lora_dtype: str | None = None, **kwargs) -> None:
    mergekit_merge(text, tmp_path / "mergekit", lora_merge_cache=str(tmp_path / "lora-cache"), lora_merge_dtype=lora_dtype, **kwargs)
    ours = {"lora_merge_dtype": getattr(torch, lora_dtype)} if lora_dtype else {}
    mergeflow_merge(text, tmp_path / "mergeflow", **ours, **kwargs)
    assert_bit_identical(tmp_path / "mergeflow", tmp_path / "mergekit")


def test_linear_bf16_with_embedding_lora_and_modules_to_save(model_dir, adapter, tmp_path):
    variant = {"dtype": torch.bfloat16}
    base, m1 = model_dir("base", **variant), model_dir("m1", **variant)
    lora = adapter(variant=variant, r=4, lora_alpha=8, target_modules=[*ATTENTION, "embed_tokens"], modules_to_save=["lm_head"])
    text = (
        f"merge_method: linear\nmodels:\n  - model: {base}+{lora}\n    parameters: {{weight: 0.6}}\n"
        f"  - model: {m1}\n    parameters: {{weight: 0.4}}\n"
    )
    _both(text, tmp_path)
    merged = load_dir(tmp_path / "mergeflow")
    assert merged["model.layers.0.self_attn.q_proj.weight"].dtype == torch.bfloat16


@pytest.mark.parametrize("lora_dtype", ["float32", "bfloat16"])
def test_ties_dict_form_rslora_and_patterns(lora_dtype, model_dir, adapter, tmp_path):
    base, m1 = model_dir("base"), model_dir("m1")
    lora = adapter(
        r=4, lora_alpha=16, use_rslora=True, target_modules=["q_proj", "k_proj", "gate_proj", "down_proj"],
        rank_pattern={"down_proj": 2}, alpha_pattern={"k_proj": 3},
    )
    text = (
        f"merge_method: ties\nbase_model: {base}\nmodels:\n"
        f"  - model: {{model: {{path: {base}}}, lora: {{path: {lora}}}}}\n    parameters: {{weight: 0.7, density: 0.5}}\n"
        f"  - model: {m1}\n    parameters: {{weight: 0.5, density: 0.6}}\n"
    )
    _both(text, tmp_path, lora_dtype)
    if lora_dtype == "bfloat16":
        assert {t.dtype for t in load_dir(tmp_path / "mergeflow").values()} == {torch.float32}  # promoted with m1


def test_dare_ties_fp16_base_bf16_adapter_on_two_models(model_dir, adapter, tmp_path):
    variant = {"dtype": torch.float16}
    base, m1, m2 = (model_dir(n, **variant) for n in ("base", "m1", "m2"))
    lora1 = adapter("m1", variant=variant, dtype=torch.bfloat16, r=2, lora_alpha=4, target_modules=ATTENTION)
    lora2 = adapter("m2", seed=12, variant=variant, r=8, lora_alpha=8, target_modules=["up_proj", "lm_head"])
    text = (
        f"merge_method: dare_ties\nbase_model: {base}\nmodels:\n"
        f"  - model: {m1}+{lora1}\n    parameters: {{weight: 0.5, density: 0.5}}\n"
        f"  - model: {m2}+{lora2}\n    parameters: {{weight: 0.5, density: 0.7}}\n"
    )
    _both(text, tmp_path)


def test_della_bf16_dora_adapter(model_dir, adapter, tmp_path):
    variant = {"dtype": torch.bfloat16}
    base, m1, m2 = (model_dir(n, **variant) for n in ("base", "m1", "m2"))
    lora = adapter("m1", variant=variant, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], use_dora=True)
    text = (
        f"merge_method: della\nbase_model: {base}\nmodels:\n"
        f"  - model: {m1}+{lora}\n    parameters: {{weight: 0.6, density: 0.5, epsilon: 0.1}}\n"
        f"  - model: {m2}\n    parameters: {{weight: 0.4, density: 0.6, epsilon: 0.1}}\n"
    )
    _both(text, tmp_path)


def test_slerp_gpt2_conv1d_fan_in_fan_out(model_dir, adapter, tmp_path):
    variant = {"arch": "gpt2", "tied": True}
    base, m1 = model_dir("base", **variant), model_dir("m1", **variant)
    lora = adapter("m1", variant=variant, r=4, lora_alpha=8, target_modules=["c_attn", "c_proj"], fan_in_fan_out=True)
    text = f"merge_method: slerp\nbase_model: {base}\nmodels:\n  - model: {base}\n  - model: {m1}+{lora}\nparameters: {{t: 0.4}}\n"
    _both(text, tmp_path)


def test_lora_on_a_legacy_mixtral_base(model_dir, adapter, tmp_path):
    """PEFT addresses the converted (transformers 5) module names; the layout view sits beneath."""
    variant = {"arch": "mixtral", "layers": 2}
    base, m1 = model_dir("base", **variant), model_dir("m1", **variant)
    lora = adapter("m1", variant=variant, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj"])
    text = (
        f"merge_method: ties\nbase_model: {base}\nmodels:\n"
        f"  - model: {m1}+{lora}\n    parameters: {{weight: 0.8, density: 0.6}}\n"
    )
    _both(text, tmp_path, "bfloat16")
    assert "model.layers.1.mlp.experts.gate_up_proj" in load_dir(tmp_path / "mergeflow")


def test_model_stock_qwen2_lora_bias(model_dir, adapter, tmp_path):
    variant = {"arch": "qwen2"}
    base, m1, m2 = (model_dir(n, **variant) for n in ("base", "m1", "m2"))
    lora = adapter("m1", variant=variant, r=4, lora_alpha=8, target_modules=["q_proj", "k_proj"], lora_bias=True)
    text = f"merge_method: model_stock\nbase_model: {base}\nmodels:\n  - model: {base}\n  - model: {m1}+{lora}\n  - model: {m2}\n"
    _both(text, tmp_path)


def test_adapter_is_recorded_and_lora_dtype_applies(model_dir, adapter, tmp_path):
    base = model_dir("base")
    lora = adapter(r=4, lora_alpha=8, target_modules=ATTENTION)
    text = f"merge_method: linear\nmodels:\n  - model: {base}+{lora}\n    parameters: {{weight: 1.0}}\n"
    record = mergeflow_merge(text, tmp_path / "out", lora_merge_dtype=torch.bfloat16)
    (entry,) = record["inputs"]
    assert entry["reference"] == f"{base}+{lora}"
    assert entry["identity"] == f"{base}+{lora}"
    assert entry["lora"]["identity"] == str(lora)
    assert set(entry["lora"]["files"]) == {"adapter_config.json", "adapter_model.safetensors"}
    assert record["options"]["lora_merge_dtype"] == "bfloat16"
    assert {t.dtype for t in load_dir(tmp_path / "out").values()} == {torch.bfloat16}


def test_hub_base_and_adapter_at_revisions(model_dir, adapter, tmp_path):
    """Both sides of ``org/base@rev+org/lora@rev`` come through huggingface_hub, at their revisions."""
    from hub_server import HubServer

    base = model_dir("base")
    lora = adapter(r=4, lora_alpha=8, target_modules=ATTENTION)
    local = f"merge_method: linear\nmodels:\n  - model: {base}+{lora}\n    parameters: {{weight: 1.0}}\n"
    mergeflow_merge(local, tmp_path / "local")
    with HubServer() as server:
        files = lambda d: {f.name: f.read_bytes() for f in d.iterdir() if f.is_file()}  # noqa: E731
        base_commit = server.hub.commit("org/base", files(base))
        lora_commit = server.hub.commit("org/lora", files(lora), branch="v1")
        config = tmp_path / "merge.yml"
        config.write_text(f"merge_method: linear\nmodels:\n  - model: org/base@{base_commit}+org/lora@v1\n    parameters: {{weight: 1.0}}\n")
        env = {**os.environ, "HF_ENDPOINT": server.url, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_DISABLE_XET": "1"}
        out = tmp_path / "hub-out"
        result = subprocess.run(
            [sys.executable, "-m", "mergeflow.cli", "merge", str(config), str(out), "--quiet", "--random-seed", "7"],
            env=env, capture_output=True, text=True,
        )
    assert result.returncode == 0, result.stderr
    (entry,) = json.loads((out / "provenance.json").read_text())["inputs"]
    assert entry["identity"] == f"org/base@{base_commit}+org/lora@{lora_commit}"
    assert entry["lora"]["identity"] == f"org/lora@{lora_commit}"
    assert_bit_identical(out, tmp_path / "local")
    card = (out / "README.md").read_text()
    assert "base_model:\n- org/base\n- org/lora\n" in card  # the Hub wants plain repo ids
    assert "[org/lora@v1](https://huggingface.co/org/lora/tree/v1)" in card


@pytest.mark.parametrize(
    ("reference", "flags", "message"),
    [
        ("{base}+{base}", [], "adapter {base}: no adapter_config.json"),
        ("{base}+{lora}+{lora}", [], "config key 'models[0].model': expected MODEL or MODEL+LORA"),
        ("{m1_gpt2}+{lora}", [], "adapter {lora}: base_model.model.model.layers.0.self_attn."),
        ("{base}+{lora}", ["--lora-merge-dtype", "bf16"], "--lora-merge-dtype: unknown dtype 'bf16'"),
    ],
)
def test_bad_lora_references_fail_in_one_line(reference, flags, message, model_dir, adapter, tmp_path, capsys):
    from mergeflow.cli import main

    values = {"base": model_dir("base"), "lora": adapter(r=4, lora_alpha=8, target_modules=ATTENTION),
              "m1_gpt2": model_dir("m1", arch="gpt2")}
    config = tmp_path / "merge.yml"
    config.write_text(f"merge_method: linear\nmodels:\n  - model: {reference.format(**values)}\n    parameters: {{weight: 1.0}}\n")
    capsys.readouterr()
    assert main(["merge", str(config), str(tmp_path / "out"), "--quiet", *flags]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"mergeflow merge: error: {message.format(**values)}"), err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()

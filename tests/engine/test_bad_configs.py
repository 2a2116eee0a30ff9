"""Bad input: one clear line naming the key, file or tensor, a non-zero exit, nothing at OUT."""

from __future__ import annotations

import pytest

from mergeflow.cli import main


@pytest.fixture
def merge_cli(tmp_path, capsys):
    def run(text: str, *flags: str) -> tuple[int, str]:
        config = tmp_path / "merge.yml"
        config.write_text(text)
        capsys.readouterr()  # drop what building the fixture models printed
        code = main(["merge", str(config), str(tmp_path / "out"), "--quiet", *flags])
        return code, capsys.readouterr().err

    return run


def _linear(*models) -> str:
    body = "".join(f"  - model: {m}\n    parameters: {{weight: 0.5}}\n" for m in models)
    return f"merge_method: linear\nmodels:\n{body}"


BAD = {
    "yaml": ("merge_method: [linear\n", "not valid YAML"),
    "no_models": ("merge_method: linear\n", "exactly one of 'models', 'slices' or 'modules'"),
    "method": ("merge_method: frobnicate\nmodels:\n  - model: {m1}\n", "config key 'merge_method': unknown merge_method 'frobnicate'"),
    "dtype": ("merge_method: linear\ndtype: bf16\nmodels:\n  - model: {m1}\n", "config key 'dtype': unknown dtype 'bf16'"),
    "dare_drop_rate": (
        "merge_method: dare_ties\nbase_model: {base}\nmodels:\n  - model: {m1}\n    parameters:\n      density: 0.5\n      weight: 0.6\n      dare:\n        drop_rate: 0.9\n",
        "config key 'models[0].parameters.dare': is not a mergekit key",
    ),
    "moe": ("merge_method: moe\nbase_model: {base}\nexperts:\n  - source_model: {m1}\n    positive_prompts: [math]\n", "this is a mergekit-moe config (it has 'experts'); build it with 'mergeflow moe CONFIG OUT'"),
    "tokenizer_twice": ("merge_method: linear\ntokenizer_source: union\ntokenizer: {{source: base}}\nmodels:\n  - model: {m1}\n", "config key 'tokenizer': cannot be combined with 'tokenizer_source'"),
    "token_source_kind": (
        "merge_method: linear\ntokenizer:\n  tokens:\n    x: {{source: {{kind: mean}}}}\nmodels:\n  - model: {m1}\n",
        "config key 'tokenizer.tokens.x.source.kind': expected 'model_token' or 'zero'",
    ),
    "model_token_both": (
        "merge_method: linear\ntokenizer:\n  tokens:\n    x: {{source: {{kind: model_token, model: {m1}, token: a, token_id: 3}}}}\nmodels:\n  - model: {m1}\n",
        "config key 'tokenizer.tokens.x.source': a model_token source needs exactly one of 'token' and 'token_id'",
    ),
    "pad_multiple": ("merge_method: linear\ntokenizer: {{pad_to_multiple_of: -8}}\nmodels:\n  - model: {m1}\n", "config key 'tokenizer.pad_to_multiple_of': expected a positive integer"),
    "chat_template_name": ("merge_method: linear\nchat_template: vicuna\nmodels:\n  - model: {m1}\n", "config key 'chat_template': unknown template name 'vicuna'; use 'auto', one of alpaca, chatml, exaone, llama3, mistral"),
    "chat_template_jinja": ("merge_method: linear\nchat_template: '{{% for m in messages %}}{{{{ m.content }}'\nmodels:\n  - model: {m1}\n", "config key 'chat_template': not a valid Jinja template"),
    "token_source_not_merged": (
        "merge_method: linear\ntokenizer:\n  tokens:\n    zzz: {{source: {m2}}}\nmodels:\n  - model: {m1}\n    parameters: {{weight: 1}}\n",
        "is not merged into model.embed_tokens.weight, so it has no row to give",
    ),
    "lora": ("merge_method: linear\nmodels:\n  - model: {m1}+/no/such/lora\n    parameters: {{weight: 1}}\n", "adapter /no/such/lora: local path does not exist"),
    "missing_weight": ("merge_method: linear\nmodels:\n  - model: {m1}\n  - model: {m2}\n", "config key 'models[0].parameters.weight': missing required parameter 'weight'"),
    "weight_type": ("merge_method: linear\nmodels:\n  - model: {m1}\n    parameters: {{weight: heavy}}\n", "config key 'models[0].parameters.weight': expected a float"),
    "layer_range": (
        "merge_method: passthrough\nslices:\n  - sources:\n      - model: {m1}\n        layer_range: [0, 9]\n",
        "config key 'slices[0].sources[0].layer_range': [0, 9] exceeds the 4 layers",
    ),
    "slice_counts": (
        "merge_method: slerp\nbase_model: {base}\nparameters: {{t: 0.5}}\nslices:\n  - sources:\n      - model: {base}\n        layer_range: [0, 4]\n      - model: {m1}\n        layer_range: [0, 2]\n",
        "config key 'slices[0].sources': all inputs to a slice must contain the same number of layers",
    ),
    "no_base": ("merge_method: slerp\nparameters: {{t: 0.5}}\nmodels:\n  - model: {m1}\n  - model: {m2}\n", "config key 'base_model': merge method 'slerp' needs a base_model"),
    "base_not_in_slice": (
        "merge_method: slerp\nbase_model: {base}\nparameters: {{t: 0.5}}\nslices:\n  - sources:\n      - model: {m1}\n        layer_range: [0, 4]\n      - model: {m2}\n        layer_range: [0, 4]\n",
        "is not among this slice's sources",
    ),
    "missing_path": ("merge_method: linear\nmodels:\n  - model: /no/such/model\n    parameters: {{weight: 1}}\n", "model /no/such/model: local path does not exist"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_config_fails_cleanly(case, merge_cli, model_dir, tmp_path):
    template, expected = BAD[case]
    text = template.format(**{m: model_dir(m) for m in ("base", "m1", "m2")})
    code, err = merge_cli(text)
    assert code != 0
    assert expected in err
    assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.*")), "staging directory left behind"


def test_several_unsupported_things_are_named_in_one_message(merge_cli, model_dir):
    text = (
        "merge_method: linear\nmodules:\n  text:\n    models:\n"
        "      - model: {{model: {m2}, override_architecture: MistralForCausalLM}}\n        parameters: {{weight: 1}}\n"
    ).format(m2=model_dir("m2"))
    code, err = merge_cli(text)
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert "2 things mergeflow does not support yet" in err
    assert "modules: multi-module configs" in err and "modules.text.models[0].model.override_architecture" in err


def test_moe_config_does_not_blame_merge_method(merge_cli, model_dir):
    code, err = merge_cli(f"base_model: {model_dir('base')}\ngate_mode: hidden\nexperts:\n  - source_model: {model_dir('m1')}\n")
    assert code == 1 and "merge_method" not in err and "'mergeflow moe CONFIG OUT'" in err


def test_near_miss_names_get_did_you_mean(merge_cli, model_dir, tmp_path):
    text = (
        f"merge_method: ties\nbase_model: {model_dir('base')}\ntokenizer_sorce: base\nmodels:\n"
        f"  - model: {model_dir('m1')}\n    parameters: {{weight: 1, densty: 0.5}}\nparameters:\n  nomalize: false\n"
    )
    code, err = merge_cli(text)
    assert code == 0, err
    assert "tokenizer_sorce (did you mean 'tokenizer_source'?)" in err
    assert "models[0].parameters.densty (did you mean 'density'?)" in err
    assert "parameters.nomalize (did you mean 'normalize'?)" in err
    code, err = merge_cli(_linear(model_dir("m1"), model_dir("m2")) + "parameters: {densty: 0.5}\n")
    assert code == 0 and "parameters.densty (did you mean 'density'?)" in err  # a parameter of other methods
    code, err = merge_cli(_linear(model_dir("m1")).replace("linear", "dare_tie"))
    assert code == 1 and "unknown merge_method 'dare_tie'" in err and "(did you mean 'dare_ties'?)" in err


def test_different_architectures_fail_before_reading_weights_unless_crimes(merge_cli, model_dir, tmp_path):
    llama, qwen = model_dir("m1"), model_dir("m1", arch="qwen2")
    code, err = merge_cli(_linear(llama, qwen))
    assert code == 1
    assert "different architectures" in err and "LlamaForCausalLM" in err and "Qwen2ForCausalLM" in err
    assert not (tmp_path / "out").exists()
    # Qwen2 has attention biases that Llama lacks: crimes allowed, the missing tensor is named.
    code, err = merge_cli(_linear(llama, qwen), "--allow-crimes")
    assert code == 1 and "_proj.bias" in err and str(llama) in err


def test_shape_mismatch_names_tensor_models_and_shapes(merge_cli, model_dir, tmp_path):
    small, big = model_dir("m1"), model_dir("m1", vocab=64)
    code, err = merge_cli(_linear(small, big))
    assert code == 1
    assert "tensor model.embed_tokens.weight" in err and "[46, 32]" in err and "[64, 32]" in err
    assert not (tmp_path / "out").exists()
    code, _ = merge_cli(_linear(small, big), "--unsafe-truncate-embeddings")
    assert code == 0 and (tmp_path / "out" / "model.safetensors").exists()


def test_unknown_keys_warn_and_still_merge(merge_cli, model_dir, tmp_path):
    text = _linear(model_dir("m1"), model_dir("m2")) + "embed_slerp: true\nparameters:\n  wieght: 0.3\n"
    code, err = merge_cli(text)
    assert code == 0
    assert "embed_slerp" in err and "parameters.wieght" in err
    assert (tmp_path / "out" / "model.safetensors").exists()


def test_options_without_effect_say_so(merge_cli, model_dir):
    code, err = merge_cli(_linear(model_dir("m1"), model_dir("m2")), "--lazy-unpickle", "--cuda", "--device", "cpu")
    assert code == 0
    assert "--lazy-unpickle has no effect" in err

"""Bad configs and options: one line naming the key or option, exit 1, nothing written."""

from __future__ import annotations

import pytest
import torch
from faults_support import linear

M = "{m1}"
TWO = "models:\n  - model: {m1}\n    parameters: {{weight: 0.5}}\n  - model: {m2}\n    parameters: {{weight: 0.5}}\n"

CASES = {
    "not_a_mapping": ("- merge_method: linear\n", "must be a YAML mapping"),
    "method_is_a_mapping": ("merge_method: {{name: linear}}\n" + TWO, "merge_method"),
    "method_is_a_list": ("merge_method: [linear]\n" + TWO, "merge_method"),
    "models_is_a_mapping": ("merge_method: linear\nmodels: {{model: " + M + "}}\n", "models"),
    "models_is_a_string": ("merge_method: linear\nmodels: " + M + "\n", "models"),
    "model_is_a_list": ("merge_method: linear\nmodels:\n  - model: [" + M + "]\n", "models[0].model"),
    "model_is_a_number": ("merge_method: linear\nmodels:\n  - model: 7\n", "models[0].model"),
    "model_item_is_a_string": ("merge_method: linear\nmodels:\n  - " + M + "\n", "models[0]"),
    "parameters_is_a_list": ("merge_method: linear\nparameters: [weight, 1]\n" + TWO, "'parameters'"),
    "weight_is_a_mapping_without_value": ("merge_method: linear\nmodels:\n  - model: {m1}\n    parameters: {{weight: {{w: 1}}}}\n", "models[0].parameters.weight"),
    "weight_is_nested_list": ("merge_method: linear\nmodels:\n  - model: {m1}\n    parameters: {{weight: [[1]]}}\n", "models[0].parameters.weight"),
    "weight_is_a_date": ("merge_method: linear\nmodels:\n  - model: {m1}\n    parameters: {{weight: 2024-01-01}}\n  - model: {m2}\n    parameters: {{weight: 0.5}}\n", "models[0].parameters.weight"),
    "weight_is_null_list": ("merge_method: linear\nmodels:\n  - model: {m1}\n    parameters: {{weight: [null]}}\n  - model: {m2}\n    parameters: {{weight: 0.5}}\n", "models[0].parameters.weight"),
    "filter_is_a_list": ("merge_method: linear\nmodels:\n  - model: {m1}\n    parameters:\n      weight: [{{filter: [mlp], value: 1}}]\n", "models[0].parameters.weight[0].filter"),
    "parameter_name_is_a_number": ("merge_method: linear\nmodels:\n  - model: {m1}\n    parameters: {{1: 0.5, weight: 1}}\n", "models[0].parameters.1"),
    "dtype_is_a_list": ("merge_method: linear\ndtype: [float16]\n" + TWO, "'dtype'"),
    "dtype_is_a_number": ("merge_method: linear\ndtype: 16\n" + TWO, "'dtype'"),
    "out_dtype_unknown": ("merge_method: linear\nout_dtype: float8\n" + TWO, "'out_dtype'"),
    "base_model_is_a_number": ("merge_method: ties\nbase_model: 3\n" + TWO, "'base_model'"),
    "base_model_is_a_list": ("merge_method: ties\nbase_model: [{base}]\n" + TWO, "'base_model'"),
    "layer_range_strings": ("merge_method: passthrough\nslices:\n  - sources:\n      - model: {m1}\n        layer_range: [a, b]\n", "slices[0].sources[0].layer_range"),
    "layer_range_scalar": ("merge_method: passthrough\nslices:\n  - sources:\n      - model: {m1}\n        layer_range: 2\n", "slices[0].sources[0].layer_range"),
    "sources_is_a_mapping": ("merge_method: passthrough\nslices:\n  - sources: {{model: " + M + "}}\n", "slices[0].sources"),
    "slice_is_a_string": ("merge_method: passthrough\nslices:\n  - " + M + "\n", "slices[0]"),
    "modules_two": ("merge_method: linear\nmodules:\n  a: {{models: []}}\n  b: {{models: []}}\n", "'modules'"),
    "revision_on_local_path": ("merge_method: linear\nmodels:\n  - model: {m1}@main\n    parameters: {{weight: 1}}\n", "a local path cannot take a revision"),
    "model_is_a_file": ("merge_method: linear\nmodels:\n  - model: {m1}/config.json\n    parameters: {{weight: 1}}\n", "not a directory"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_config(case, merge, models):
    template, expected = CASES[case]
    merge.fails(template.format(**{k: str(v) for k, v in models.items()}), expected)


def test_config_that_is_not_utf8(merge, models):
    merge.fails(linear(models["m1"]).encode() + b"# caf\xe9\n", "not UTF-8", "offset")


def test_config_that_does_not_exist(merge):
    merge.fails(None, "merge.yml", "cannot read config")


def test_config_that_is_a_directory(merge, models):
    merge.config.mkdir()
    merge.fails(None, "merge.yml", "cannot read config")


OPTIONS = {
    "shard_size": (("--out-shard-size", "lots"), "--out-shard-size"),
    "device_unknown": (("--device", "abacus"), "--device abacus"),
    "threads_zero": (("-j", "0"), "--num-threads"),
    "no_safe_serialization": (("--no-safe-serialization",), "safetensors only"),
}
if not torch.cuda.is_available():
    OPTIONS["cuda_flag"] = (("--cuda",), "--cuda: no usable GPU")
    OPTIONS["cuda_device"] = (("--device", "cuda"), "--device cuda: no usable GPU")
    OPTIONS["cuda_index"] = (("--device", "cuda:1"), "--device cuda:1: no usable GPU")


@pytest.mark.parametrize("case", sorted(OPTIONS))
def test_bad_option(case, merge, models, monkeypatch):
    flags, expected = OPTIONS[case]
    from mergeflow.engine import checkpoint

    monkeypatch.setattr(checkpoint.Checkpoint, "load", lambda *a: pytest.fail("a weight was read"))
    merge.fails(linear(models["m1"], models["m2"]), expected, flags=flags)


def test_unexpected_error_inside_a_method_names_tensor_and_method(merge, models, monkeypatch):
    import dataclasses

    from mergeflow.methods import get_method

    def broken(inputs):
        raise RuntimeError("CUDA error: an illegal memory access\nsecond line")

    spec = dataclasses.replace(get_method("linear"), merge=broken)
    monkeypatch.setattr("mergeflow.engine.validate.get_method", lambda name: spec)
    line = merge.fails(linear(models["m1"], models["m2"]), "merge method 'linear' failed", "tensor ", "RuntimeError")
    assert "second line" not in line


def test_a_bug_is_still_one_line(merge, models, monkeypatch):
    monkeypatch.setattr("mergeflow.engine.run.check_values", lambda *a: {}["boom"])
    merge.fails(linear(models["m1"], models["m2"]), "unexpected KeyError")

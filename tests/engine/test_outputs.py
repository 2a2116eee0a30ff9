"""What a merge writes beside the weights, provenance reruns, and atomic publication."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from oracle import load_dir, mergeflow_merge
from mergeflow.engine.errors import MergeflowError
from mergeflow.methods import get_method


def _dare(model_dir) -> str:
    base, m1, m2 = (model_dir(n) for n in ("base", "m1", "m2"))
    return (
        f"merge_method: dare_ties\nbase_model: {base}  # the base\nmodels:\n"
        f"  - model: {m1}\n    parameters: {{weight: 0.5, density: 0.5}}\n"
        f"  - model: {m2}\n    parameters: {{weight: 0.5, density: 0.5}}\ndtype: bfloat16\n"
    )


def test_cli_writes_a_complete_model_directory(model_dir, tmp_path):
    config = tmp_path / "merge.yml"
    config.write_text(_dare(model_dir))
    out = tmp_path / "merged"
    result = subprocess.run(
        [sys.executable, "-m", "mergeflow.cli", "merge", str(config), str(out), "--random-seed", "3", "--quiet"],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    files = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json", "README.md",
            "mergekit_config.yml", "provenance.json"} <= files
    assert (out / "mergekit_config.yml").read_text() == config.read_text()
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    card = (out / "README.md").read_text()
    assert "dare_ties" in card.lower() or "DARE" in card
    record = json.loads((out / "provenance.json").read_text())
    assert record["seed"] == 3 and record["config"] == config.read_text()
    assert set(record["tensors"]) == set(load_dir(out))
    assert {i["identity"] for i in record["inputs"]} == {str(model_dir(n)) for n in ("base", "m1", "m2")}
    assert all(len(sha) == 64 for i in record["inputs"] for sha in i["files"].values())


def test_provenance_is_reproducible_and_an_unseeded_run_can_be_replayed(model_dir, tmp_path):
    from mergeflow.engine.run import MergeOptions, run_merge

    text = _dare(model_dir)
    first = run_merge(text, tmp_path / "a", MergeOptions(progress=False))
    assert first["seed_source"] == "generated"
    replay = mergeflow_merge(text, tmp_path / "b", seed=first["seed"])
    assert replay["tensors"] == first["tensors"]
    again = mergeflow_merge(text, tmp_path / "c", seed=first["seed"])
    strip = lambda r: {k: v for k, v in r.items() if k not in ("created",)}  # noqa: E731
    assert strip(again) == strip(replay)
    reformatted = text.replace("  # the base", "") + "\n# a comment\n"
    assert mergeflow_merge(reformatted, tmp_path / "d")["config_sha256"] == first["config_sha256"]


def test_frankenmerge_config_counts_output_layers(model_dir, tmp_path):
    m1 = model_dir("m1")
    text = (
        "merge_method: passthrough\nslices:\n"
        f"  - sources:\n      - model: {m1}\n        layer_range: [0, 3]\n"
        f"  - sources:\n      - model: {m1}\n        layer_range: [1, 4]\n"
    )
    mergeflow_merge(text, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "config.json").read_text())["num_hidden_layers"] == 6
    assert "model.layers.5.mlp.up_proj.weight" in load_dir(tmp_path / "out")


def test_failed_merge_leaves_previous_output_untouched(model_dir, tmp_path, monkeypatch):
    text = _dare(model_dir)
    out = tmp_path / "out"
    mergeflow_merge(text, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    spec = get_method("dare_ties")
    calls = {"n": 0}

    def explode(inputs):
        calls["n"] += 1
        if calls["n"] > 5:
            raise MergeflowError("simulated crash half way")
        return spec.merge(inputs)

    monkeypatch.setattr("mergeflow.engine.validate.get_method", lambda name: type(spec)(**{**_fields(spec), "merge": explode}))
    with pytest.raises(MergeflowError):
        mergeflow_merge(text, out, seed=99)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def _fields(spec):
    return {f: getattr(spec, f) for f in spec.__dataclass_fields__ if f != "param_index"}


def test_parameters_shown_verbatim_in_card(model_dir, tmp_path):
    text = _dare(model_dir)
    mergeflow_merge(text, tmp_path / "out")
    card = (tmp_path / "out" / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "transformers" and "merge" in front["tags"]
    assert text.strip() in card


def test_pickle_checkpoints_load_without_unpickling_code(model_dir, tmp_path):
    """A `.bin`-only model merges like its safetensors twin (weights_only, memory-mapped)."""
    import shutil

    import torch

    source = model_dir("m1")
    pickled = tmp_path / "m1-bin"
    shutil.copytree(source, pickled)
    (pickled / "model.safetensors").unlink()
    torch.save(load_dir(source), pickled / "pytorch_model.bin")
    template = "merge_method: linear\nmodels:\n  - model: {}\n    parameters: {{weight: 0.5}}\n  - model: {}\n    parameters: {{weight: 0.5}}\n"
    a = mergeflow_merge(template.format(source, model_dir("m2")), tmp_path / "a")
    b = mergeflow_merge(template.format(pickled, model_dir("m2")), tmp_path / "b")
    assert a["tensors"] == b["tensors"]

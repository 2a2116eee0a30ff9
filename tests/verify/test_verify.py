"""``mergeflow verify`` on local dirs and Hub repos served by the test Hub."""

from __future__ import annotations

import json
import shutil

import torch
from verify_support import mergeflow, model_files
from safetensors.torch import load_file, save_file


def test_a_copy_is_identical_and_exits_0(models, tmp_path, env):
    copy = shutil.copytree(models["m1"], tmp_path / "copy")
    result = mergeflow("verify", str(copy), str(models["m1"]), "--json", str(tmp_path / "v.json"), env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("identical:")
    record = json.loads((tmp_path / "v.json").read_text())
    assert record["verdict"] == "identical" and record["tensors_compared"] == len(load_file(copy / "model.safetensors"))


def test_one_changed_element_of_a_published_model_is_named(models, hub, tmp_path, env):
    published = hub.hub.commit("org/tampered-merge", model_files(models["m2"]))
    changed = shutil.copytree(models["m2"], tmp_path / "changed")
    tensors = load_file(changed / "model.safetensors")
    name = "model.layers.1.self_attn.k_proj.weight"
    tensors[name][3, 5] = torch.nextafter(tensors[name][3, 5], torch.tensor(1.0))
    save_file(tensors, changed / "model.safetensors", metadata={"format": "pt"})

    result = mergeflow("verify", str(changed), f"org/tampered-merge@{published}", "--json", str(tmp_path / "v.json"),
                       env=env)
    assert result.returncode == 1, result.stderr
    assert result.stdout.startswith("different:")
    assert "layer 1:" in result.stdout and name in result.stdout
    record = json.loads((tmp_path / "v.json").read_text())
    assert record["reference"] == f"org/tampered-merge@{published}"
    [diff] = record["differing"]
    assert (diff["name"], diff["layer"], diff["problem"], diff["max_ulp"]) == (name, "layer 1", "values", 1)
    assert diff["fraction_differing"] == 1 / tensors[name].numel()
    assert record["differing_by_layer"] == {"layer 1": [name]}


def test_an_identical_published_model_is_proved_by_lfs_sha256_without_downloading_weights(models, hub, env):
    hub.hub.commit("org/same", model_files(models["m1"]))
    hub.served.clear()
    result = mergeflow("verify", "org/same", str(models["m1"]), env=env)
    assert result.returncode == 0, result.stderr
    assert "by file sha256" in result.stdout
    assert not [p for p in hub.served if p.endswith(".safetensors")]


def test_tensors_on_one_side_only_make_models_different(models, tmp_path, env):
    fewer = shutil.copytree(models["m1"], tmp_path / "fewer")
    tensors = load_file(fewer / "model.safetensors")
    del tensors["model.norm.weight"]
    save_file(tensors, fewer / "model.safetensors", metadata={"format": "pt"})
    result = mergeflow("verify", str(fewer), str(models["m1"]), env=env)
    assert result.returncode == 1
    assert "model.norm.weight: only in the reference" in result.stdout


def test_bad_input_is_one_line_and_exit_2(tmp_path, env):
    for args in (["org/missing", str(tmp_path)], [str(tmp_path / "nowhere"), "org/x"], ["not a ref", "org/x"]):
        result = mergeflow("verify", *args, env=env)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.startswith("mergeflow verify: error:") and len(result.stderr.strip().splitlines()) == 1


def test_a_corrupted_cache_entry_is_caught_by_its_content_not_trusted_by_its_name(models, hub, tmp_path, env):
    hub.hub.commit("org/cached", model_files(models["m1"]))
    assert mergeflow("verify", str(models["m2"]), "org/cached", env=env).returncode == 1  # downloads the shard
    [blob] = [p for p in (tmp_path / "hf_home").rglob("blobs/*") if p.stat().st_size > 10_000]
    data = bytearray(blob.read_bytes())
    data[-1] ^= 1
    blob.write_bytes(bytes(data))
    result = mergeflow("verify", str(models["m2"]), "org/cached", env=env)
    assert result.returncode == 2
    assert "model.safetensors in the HF cache has sha256" in result.stderr

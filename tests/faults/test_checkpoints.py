"""Broken and hostile checkpoints fail at pre-flight, before any weight is read, in one line
naming the file and tensor; odd but valid ones (legacy .bin, NaN values, HF cache links) work."""

from __future__ import annotations

import collections
import json
import os
import pickle
import shutil
import struct
import threading

import pytest
import torch
from faults_support import linear, tree
from safetensors.torch import load_file, save_file

from oracle import load_dir


@pytest.fixture
def no_weight_reads(monkeypatch):
    from mergeflow.engine import checkpoint

    monkeypatch.setattr(checkpoint.Checkpoint, "load", lambda *a: pytest.fail("a weight was read"))
    monkeypatch.setattr(checkpoint.StoredTensor, "read", lambda *a: pytest.fail("a weight was read in ranges"))


def _index(model):
    return json.loads((model / "model.safetensors.index.json").read_text())


def _write_index(model, index):
    (model / "model.safetensors.index.json").write_text(json.dumps(index))


def _shards(model):
    return sorted(model.glob("model-*.safetensors"))


def test_index_names_a_tensor_its_shard_lacks(merge, models, model_copy, no_weight_reads):
    broken = model_copy("sharded")
    index = _index(broken)
    shard = _shards(broken)[0]
    index["weight_map"]["model.layers.0.mlp.ghost.weight"] = shard.name
    _write_index(broken, index)
    merge.fails(linear(broken, models["m2"]), shard.name, "model.layers.0.mlp.ghost.weight", "lacks")


def test_index_places_a_tensor_in_the_wrong_shard(merge, models, model_copy, no_weight_reads):
    broken = model_copy("sharded")
    index = _index(broken)
    first, second = _shards(broken)[:2]
    name = next(n for n, f in index["weight_map"].items() if f == first.name)
    index["weight_map"][name] = second.name
    _write_index(broken, index)
    merge.fails(linear(broken, models["m2"]), name, second.name)


def test_duplicate_tensor_across_shards(merge, models, model_copy, no_weight_reads):
    broken = model_copy("sharded")
    first, second = _shards(broken)[:2]
    tensors = load_file(second)
    name, value = next(iter(load_file(first).items()))
    save_file({**tensors, name: value}, second)
    merge.fails(linear(broken, models["m2"]), name, "also in")


def test_index_shard_missing(merge, models, model_copy, no_weight_reads):
    broken = model_copy("sharded")
    shard = _shards(broken)[-1]
    shard.unlink()
    merge.fails(linear(broken, models["m2"]), "shard missing", shard.name)


@pytest.mark.parametrize("weight_map", [["a"], {"a": 3}, {"a": "../../etc/passwd"}, "x"])
def test_index_that_is_not_a_weight_map(merge, models, model_copy, no_weight_reads, weight_map):
    broken = model_copy("sharded")
    _write_index(broken, {"weight_map": weight_map})
    merge.fails(linear(broken, models["m2"]), "model.safetensors.index.json")


def test_truncated_safetensors(merge, models, model_copy, no_weight_reads):
    broken = model_copy("m1")
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[:-100])
    merge.fails(linear(broken, models["m2"]), "model.safetensors", "truncated")


def test_safetensors_with_trailing_bytes(merge, models, model_copy, no_weight_reads):
    broken = model_copy("m1")
    with open(broken / "model.safetensors", "ab") as handle:
        handle.write(b"\0" * 64)
    merge.fails(linear(broken, models["m2"]), "model.safetensors", "the file has")


@pytest.mark.parametrize("content", [b"", b"\x01", struct.pack("<Q", 10**12) + b"{}", struct.pack("<Q", 4) + b"nope"])
def test_safetensors_with_a_bad_header(merge, models, model_copy, no_weight_reads, content):
    broken = model_copy("m1")
    (broken / "model.safetensors").write_bytes(content)
    merge.fails(linear(broken, models["m2"]), "model.safetensors")


def test_safetensors_with_an_unknown_dtype(merge, models, model_copy, no_weight_reads):
    broken = model_copy("m1")
    path = broken / "model.safetensors"
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    name = "model.norm.weight"
    header[name]["dtype"] = "U16"  # same byte count per element as F16, half of F32: keep sizes
    header[name]["shape"] = [header[name]["shape"][0] * 2]
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + raw[8 + length :])
    merge.fails(linear(broken, models["m2"]), name, "U16")


def _bin_model(model_copy, state, **save):
    model = model_copy("m1")
    (model / "model.safetensors").unlink()
    torch.save(state, model / "pytorch_model.bin", **save)
    return model


class Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_bin_refused_by_weights_only(merge, models, model_copy, no_weight_reads):
    model = model_copy("m1")
    (model / "model.safetensors").unlink()
    torch.save({"a": Payload()}, model / "pytorch_model.bin")
    merge.fails(linear(model, models["m2"]), "pytorch_model.bin", "refused by weights_only", "GLOBAL print was not an allowed global")
    (model / "pytorch_model.bin").write_bytes(pickle.dumps({"a": Payload()}))  # a bare pickle
    merge.fails(linear(model, models["m2"]), "pytorch_model.bin", "refused by weights_only")
    assert "this must never run" not in merge.stdout


def test_bin_holding_a_list(merge, models, model_copy, no_weight_reads):
    model = _bin_model(model_copy, [torch.ones(2)])
    merge.fails(linear(model, models["m2"]), "pytorch_model.bin", "not a state dict")


def test_bin_that_is_garbage(merge, models, model_copy, no_weight_reads):
    model = model_copy("m1")
    (model / "model.safetensors").unlink()
    (model / "pytorch_model.bin").write_bytes(b"PK\x03\x04 not really a zip" * 10)
    merge.fails(linear(model, models["m2"]), "pytorch_model.bin")


def test_legacy_non_zip_bin_merges_like_its_safetensors_twin(merge, models, model_copy, tmp_path):
    state = load_dir(models["m1"])
    model = _bin_model(model_copy, {**state, "extra": collections.OrderedDict()}, _use_new_zipfile_serialization=False)
    code, err = merge.run(linear(model, models["m2"]), "--random-seed", "1")
    assert code == 0, err
    legacy = load_dir(merge.out)
    assert merge.run(linear(models["m1"], models["m2"]), "--random-seed", "1", out=tmp_path / "twin")[0] == 0
    twin = load_dir(tmp_path / "twin")
    assert legacy.keys() == twin.keys() and all(torch.equal(legacy[k], twin[k]) for k in twin)


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", b"\xff\xfe"])
def test_bad_config_json(merge, models, model_copy, no_weight_reads, content):
    model = model_copy("m1")
    path = model / "config.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    merge.fails(linear(model, models["m2"]), "config.json")


def test_no_weights(merge, models, model_copy, no_weight_reads):
    model = model_copy("m1")
    (model / "model.safetensors").unlink()
    merge.fails(linear(model, models["m2"]), "no model.safetensors")


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_input_values_are_named_in_a_warning(merge, models, model_copy, value):
    model = model_copy("m1")
    tensors = load_file(model / "model.safetensors")
    tensors["model.layers.1.mlp.up_proj.weight"][3, 1] = float(value)
    save_file(tensors, model / "model.safetensors", metadata={"format": "pt"})
    code, err = merge.run(linear(model, models["m2"]))
    assert code == 0, err
    assert f"model {model}: tensor model.layers.1.mlp.up_proj.weight contains NaN or inf" in err
    assert err.count("NaN or inf") == 1


def _ties(base, *models) -> str:
    body = "".join(f"  - model: {m}\n    parameters: {{weight: 0.5, density: 0.5}}\n" for m in models)
    return f"merge_method: ties\nbase_model: {base}\nmodels:\n{body}"


def test_non_finite_values_read_in_ranges_are_named_in_a_warning(merge, models, model_copy):
    """TIES reads its inputs a range at a time (merge_streamed), and warns as a whole load does."""
    model = model_copy("m1")
    tensors = load_file(model / "model.safetensors")
    tensors["model.embed_tokens.weight"][-1, -1] = float("nan")
    save_file(tensors, model / "model.safetensors", metadata={"format": "pt"})
    code, err = merge.run(_ties(models["base"], model, models["m2"]))
    assert code == 0, err
    assert f"model {model}: tensor model.embed_tokens.weight contains NaN or inf" in err
    assert err.count("NaN or inf") == 1


def _cut_short(file, original):
    os.truncate(file, len(original) - 4)


def _rewritten_in_place(file, original):
    """The same size, other bytes: a tool rewriting the file where it lies."""
    with open(file, "r+b") as handle:
        handle.seek(len(original) - 4)
        handle.write(bytes(4))


def _replaced(file, original):
    """Another file renamed over it, of the same size and mtime."""
    stat = file.stat()
    replacement = file.with_name(file.name + ".new")
    replacement.write_bytes(original[:-4] + bytes(4))
    os.utime(replacement, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    os.replace(replacement, file)


@pytest.mark.parametrize("change", [_cut_short, _rewritten_in_place, _replaced])
@pytest.mark.parametrize("in_ranges", [True, False], ids=["read-in-ranges", "loaded-whole"])
def test_input_changed_during_a_merge(merge, models, model_copy, monkeypatch, change, in_ranges):
    """A file changed after the pre-flight fails the next read of it, before its bytes are used,
    whether the merge reads it in ranges (ties) or loads its tensors whole (linear): one line naming
    the file and tensor, and no output or staging dir left."""
    from mergeflow.engine import checkpoint

    model = model_copy("m1")
    file = model / "model.safetensors"
    original = file.read_bytes()
    changed_once, changing = [], threading.Lock()

    def changing_the_file_first(read):
        def first_read_changes_it(*args):
            with changing:  # the merge workers read at once: one of them changes the file, once
                if not changed_once:
                    changed_once.append(change(file, original))
            return read(*args)

        return first_read_changes_it

    monkeypatch.setattr(checkpoint.StoredTensor, "read", changing_the_file_first(checkpoint.StoredTensor.read))
    monkeypatch.setattr(checkpoint.Checkpoint, "load", changing_the_file_first(checkpoint.Checkpoint.load))
    before = tree(merge.root)
    code, err = merge.run(_ties(models["base"], model, models["m2"]) if in_ranges else linear(models["base"], model))
    after = tree(merge.root)
    assert changed_once and code == 1 and "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("mergeflow merge: error")]
    assert len(errors) == 1 and str(file) in errors[0] and "changed since the pre-flight" in errors[0], err
    changed = {path for path in before.keys() | after.keys() if before.get(path) != after.get(path)}
    assert changed == {str(file.relative_to(merge.root)), merge.config.name}


def test_links_out_of_a_local_model_are_not_copied(merge, models, model_copy, tmp_path):
    model = model_copy("m1")
    secret = tmp_path / "elsewhere" / "tokenizer.json"
    secret.parent.mkdir()
    secret.write_text('{"private": "not part of the model"}')
    (model / "tokenizer.json").unlink()
    (model / "tokenizer.json").symlink_to(secret)
    code, err = merge.run(f"merge_method: linear\nbase_model: {model}\n" + linear(model, models["m2"]).split("\n", 1)[1])
    assert code == 0, err
    assert not (merge.out / "tokenizer.json").exists()
    assert "not copying" in err and "outside the model directory" in err
    assert (merge.out / "tokenizer_config.json").is_file()


def test_hub_cache_snapshot_links_are_followed(merge, models, tmp_path):
    """A snapshot's files link into its repo's blobs/: inside the model, so they are copied."""
    repo = tmp_path / "hub" / "models--org--m1"
    snapshot = repo / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for file in models["m1"].iterdir():
        blob = repo / "blobs" / file.name
        shutil.copyfile(file, blob)
        (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))
    code, err = merge.run(f"merge_method: linear\nbase_model: {snapshot}\n" + linear(snapshot, models["m2"]).split("\n", 1)[1])
    assert code == 0, err
    assert (merge.out / "tokenizer.json").read_bytes() == (models["m1"] / "tokenizer.json").read_bytes()

"""Hub references (`org/name@revision`) resolve through huggingface_hub's cache, offline."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from oracle import load_dir


def _cache_repo(cache: Path, repo: str, source: Path, commit: str, ref: str = "main") -> None:
    """Lay a model out as huggingface_hub's cache does: blobs named by hash, snapshot symlinks."""
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "blobs").mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / ref).write_text(commit)
    snapshot = root / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for file in source.iterdir():
        data = file.read_bytes()
        blob = hashlib.sha256(data).hexdigest()
        (root / "blobs" / blob).write_bytes(data)
        (snapshot / file.name).symlink_to(Path("../../blobs") / blob)


def test_hub_references_resolve_offline_and_record_commits(model_dir, tmp_path):
    cache = tmp_path / "hub"
    commit_a, commit_b = "a" * 40, "b" * 40
    _cache_repo(cache, "org/alpha", model_dir("m1"), commit_a)
    _cache_repo(cache, "org/beta", model_dir("m2"), commit_b, ref="v1.0")
    config = tmp_path / "merge.yml"
    config.write_text(
        "merge_method: linear\nmodels:\n  - model: org/alpha\n    parameters: {weight: 0.5}\n"
        "  - model: org/beta@v1.0\n    parameters: {weight: 0.5}\n"
    )
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "mergeflow.cli", "merge", str(config), str(out), "--quiet"],
        env=env, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    record = json.loads((out / "provenance.json").read_text())
    identities = [i["identity"] for i in record["inputs"]]
    assert identities == [f"org/alpha@{commit_a}", f"org/beta@{commit_b}"]
    weights = hashlib.sha256((model_dir("m1") / "model.safetensors").read_bytes()).hexdigest()
    assert record["inputs"][0]["files"]["model.safetensors"] == weights
    assert "org/alpha" in (out / "README.md").read_text()
    assert set(load_dir(out)) == set(load_dir(model_dir("m1")))


def test_unknown_hub_repo_fails_offline_with_one_line(tmp_path):
    config = tmp_path / "merge.yml"
    config.write_text("merge_method: linear\nmodels:\n  - model: org/missing@v2\n    parameters: {weight: 1}\n")
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mergeflow.cli", "merge", str(config), str(tmp_path / "out"), "--quiet"],
        env=env, capture_output=True, text=True,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("mergeflow merge: error: model org/missing@v2:")
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_local_directories_named_with_at_and_plus_are_taken_whole(model_dir, tmp_path):
    """``/scratch/user@lab/m+v2`` is a directory, not ``PATH@REVISION`` or ``MODEL+LORA``."""
    import shutil

    first = tmp_path / "user@lab" / "m1"
    second = tmp_path / "m2+v2"
    shutil.copytree(model_dir("m1"), first)
    shutil.copytree(model_dir("m2"), second)
    config = tmp_path / "merge.yml"
    config.write_text(
        f"merge_method: linear\nmodels:\n  - model: {first}\n    parameters: {{weight: 1.0}}\n"
        f"  - model: {second}\n    parameters: {{weight: 0.0}}\n"
    )
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "mergeflow.cli", "merge", str(config), str(out), "--quiet"],
        env=env, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    identities = [i["identity"] for i in json.loads((out / "provenance.json").read_text())["inputs"]]
    assert identities == [str(first), str(second)]
    merged, original = load_dir(out), load_dir(model_dir("m1"))
    assert all(merged[name].equal(original[name]) for name in original)

"""The lockfile and downloads against the Hub stand-in: what is pinned, what is fetched, and how
failures read."""

from __future__ import annotations

import pytest
import yaml

from conftest import mergeflow, model_files

pytestmark = pytest.mark.workflow


def lock_config(tmp_path, reference: str) -> None:
    recipe = f"name: s\nmerge_method: linear\nmodels:\n  - model: {reference}\n    parameters: {{weight: 1.0}}\n"
    (tmp_path / "recipe.yaml").write_text(recipe)
    (tmp_path / "config.yaml").write_text("recipes: [recipe.yaml]\nlockfile: models.lock\n")


def read_lock(tmp_path) -> dict:
    return yaml.safe_load((tmp_path / "models.lock").read_text())["models"]


def test_pickles_are_locked_only_when_a_repo_has_no_safetensors(tmp_path, hub, env, models):
    files = {k: v for k, v in model_files(models["m1"]).items() if not k.endswith(".safetensors")}
    hub.hub.commit("org/pickled", {**files, "pytorch_model.bin": b"weights", "README.md": b"card"})
    lock_config(tmp_path, "org/pickled")
    result = mergeflow(tmp_path, "lock", "--config", "config.yaml", env=env)
    assert result.returncode == 0, result.stderr
    locked = read_lock(tmp_path)["org/pickled@main"]["files"]
    assert set(locked) == {"config.json", "generation_config.json", "pytorch_model.bin", "tokenizer.json",
                           "tokenizer_config.json"}


def test_a_tag_stays_pinned_and_refresh_reports_what_moved(tmp_path, hub, env, models):
    first = hub.hub.commit("org/tagged", model_files(models["m1"]))
    hub.hub.repos["org/tagged"].refs["v1"] = first
    hub.hub.repos["org/tagged"].tags.add("v1")
    lock_config(tmp_path, "org/tagged@v1")
    assert mergeflow(tmp_path, "lock", "--config", "config.yaml", env=env).returncode == 0
    hub.hub.commit("org/tagged", model_files(models["m2"]), "moved main")
    result = mergeflow(tmp_path, "lock", "--config", "config.yaml", "--refresh", env=env)
    assert result.returncode == 0, result.stderr
    assert f"org/tagged@v1 -> {first} (unchanged)" in result.stdout
    assert read_lock(tmp_path)["org/tagged@v1"]["commit"] == first


def test_unknown_repo_fails_in_one_line_and_writes_no_lock(tmp_path, env):
    lock_config(tmp_path, "org/missing")
    result = mergeflow(tmp_path, "lock", "--config", "config.yaml", env=env)
    assert result.returncode == 1
    assert result.stderr.startswith("mergeflow lock: error: cannot lock org/missing@main: RepositoryNotFoundError")
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "models.lock").exists()


def test_download_that_does_not_match_the_lock_is_rejected(tmp_path, hub, env, models):
    hub.hub.commit("org/tampered", model_files(models["m1"]))
    lock_config(tmp_path, "org/tampered")
    assert mergeflow(tmp_path, "lock", "--config", "config.yaml", env=env).returncode == 0
    lock = yaml.safe_load((tmp_path / "models.lock").read_text())
    entry = lock["models"]["org/tampered@main"]
    entry["files"]["model.safetensors"]["sha256"] = "0" * 64
    (tmp_path / "models.lock").write_text(yaml.safe_dump(lock))
    source = f"org/tampered@{entry['commit']}"
    result = mergeflow(tmp_path, "digest", source, "--lock", "models.lock", "--output", "digest.txt", env=env)
    assert result.returncode == 1
    assert "model.safetensors has sha256" in result.stderr and "the lock says 0000" in result.stderr
    assert not (tmp_path / "digest.txt").exists()


def test_the_hub_token_is_in_nothing_the_run_wrote(baseline, env):
    """The baseline ran with HF_TOKEN exported and fetched a Hub model: no result, log, lock or
    Snakemake record holds the token."""
    token = env["HF_TOKEN"].encode()
    written = [p for p in baseline.rglob("*") if p.is_file()]
    assert any(p.name == "models.lock" for p in written)
    assert [p for p in written if token in p.read_bytes()] == []

"""Recipe steps with ``model+lora`` references: a local adapter by alias (string form) and a Hub
adapter pinned in the lock (dict form), added to a copy of the finished baseline.

Real Snakemake and the real engine: the step equals ``mergeflow merge`` on its own engine config,
the lock and the card pin both sides, and a new adapter reruns the step and what is built on it,
nothing else.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from conftest import edit_config, mergeflow, model_files, snakemake
from tiny_models import make_lora_adapter

pytestmark = pytest.mark.workflow

LORA_RECIPE = """\
name: tuned
merge_method: linear
models:
  - model: base+lora
    parameters: {weight: 0.5}
  - model: {model: m2, lora: org/lora-hub}
    parameters: {weight: 0.5}
---
name: after
merge_method: linear
models:
  - model: tuned
    parameters: {weight: 0.5}
  - model: m1
    parameters: {weight: 0.5}
"""
LORA = {"r": 2, "lora_alpha": 4, "target_modules": ["q_proj", "v_proj"]}
TUNED_ONWARDS = {
    "merge[tuned]", "evaluate[tuned]", "gate[tuned]",
    "merge[after]", "evaluate[after]", "gate[after]", "report",
}


@pytest.fixture(scope="module")
def adapters(models, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return {
        "lora": make_lora_adapter(root / "lora", models["base"], 5, **LORA),
        "lora_v2": make_lora_adapter(root / "lora_v2", models["base"], 6, **LORA),
        "hub": make_lora_adapter(root / "hub", models["m2"], 7, **LORA),
    }


def test_lora_steps_merge_pin_and_rerun_on_a_new_adapter(workdir, adapters, hub, env, offline_env, monkeypatch):
    from mergeflow.pipeline import upload

    commit = hub.hub.commit("org/lora-hub", {**model_files(adapters["hub"]), "README.md": b"# lora\n"}, "adapter")
    shutil.copytree(adapters["lora"], workdir / "models" / "lora")
    (workdir / "config" / "recipes" / "lora.yaml").write_text(LORA_RECIPE)
    edit_config(workdir, lambda config: config["models"].update(lora="models/lora"))

    run = snakemake(workdir, env=env)  # online once: the Hub adapter is locked and fetched
    assert {j for j in run.jobs if j.startswith("merge[")} == {"merge[tuned]", "merge[after]"}
    assert {"fetch_model[lora]", "fetch_model[org--lora-hub]"} <= run.jobs
    assert not any(j.startswith("evaluate[inputs/") for j in run.jobs)  # adapters are not evaluated

    lock = yaml.safe_load((workdir / "config" / "models.lock").read_text())["models"]["org/lora-hub@main"]
    assert lock["commit"] == commit
    assert set(lock["files"]) == {"adapter_config.json", "adapter_model.safetensors"}
    engine_config = yaml.safe_load((workdir / "results" / "tuned" / "merge.yml").read_text())
    assert [m["model"] for m in engine_config["models"]] == [
        "models/base+models/lora",
        {"model": "models/m2", "lora": f"org/lora-hub@{commit}"},
    ]

    # The step is exactly what `mergeflow merge` makes of the same config.
    direct = workdir / "direct"
    result = mergeflow(workdir, "merge", "results/tuned/merge.yml", str(direct), "--quiet", env=offline_env)
    assert result.returncode == 0, result.stderr
    merged = workdir / "results" / "tuned" / "model"
    assert (direct / "model.safetensors").read_bytes() == (merged / "model.safetensors").read_bytes()
    base_only = model_files(workdir / "models" / "base")["model.safetensors"]
    assert (merged / "model.safetensors").read_bytes() != base_only

    # Lineage and the published config pin both sides of each model+lora reference.
    monkeypatch.chdir(workdir)  # the manifest's paths are relative to the run
    monkeypatch.setattr(upload, "_hub_license", lambda source: None)  # no Hub call from this process
    card = upload.model_card(yaml.safe_load(Path("results/after/manifest.json").read_text()), "after")
    assert f"org/lora-hub@{commit}" in card
    assert "models/lora" in card and "LoRA adapter" in card

    # A new adapter: the step and what is built on it rerun; inputs, baseline steps stay cached.
    shutil.rmtree(workdir / "models" / "lora")
    shutil.copytree(adapters["lora_v2"], workdir / "models" / "lora")
    before = (merged / "model.safetensors").read_bytes()
    run = snakemake(workdir, env=offline_env)
    # (The report's manifest reruns only if a gate's JSON changed: it lists the gates' checksums.)
    assert run.jobs - {"manifest"} == TUNED_ONWARDS | {"fetch_model[lora]"}
    assert (merged / "model.safetensors").read_bytes() != before
    assert snakemake(workdir, "-n", env=offline_env).jobs == set()

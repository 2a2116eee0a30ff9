"""A two-step gradual merge of Hub models, uploaded by the pipeline, rebuilt by `mergeflow reproduce`
from the test Hub alone (fresh directory, empty cache) bit for bit."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import TASK, make_workdir, mergeflow, model_files, snakemake
from huggingface_hub import ModelCard

pytestmark = pytest.mark.workflow

RECIPE = """\
name: blend
merge_method: linear
models:
  - model: org/gw-m1
    parameters: {weight: 0.5}
  - model: org/gw-m2
    parameters: {weight: 0.5}
variants:
  even: {}
  tilted:
    models:
      org/gw-m1: {weight: 0.8}
      org/gw-m2: {weight: 0.2}
select: {metric: tiny/exact_match}
---
name: final
merge_method: dare_ties
base_model: org/gw-base
models:
  - model: blend
    parameters: {weight: 1.0, density: 0.6}
  - model: org/gw-m3
    parameters: {weight: 0.5, density: 0.5}
"""


def test_an_uploaded_gradual_merge_is_reproduced_from_the_hub_alone(tmp_path, models, hub, env):
    for name in ("base", "m1", "m2", "m3"):
        hub.hub.commit(f"org/gw-{name}", {**model_files(models[name]), "README.md": b"---\nlicense: apache-2.0\n---\n"})
    workdir = tmp_path / "run"
    (workdir / "tasks").mkdir(parents=True)
    data = workdir / "tasks" / "tiny.jsonl"
    data.write_text('{"prompt": "1+2=", "answer": "3"}\n')
    (workdir / "tasks" / "tiny.yaml").write_text(TASK.format(data=data))
    make_workdir(workdir, RECIPE, {}, evaluation={"tasks": ["tiny"], "include_path": "tasks"},
                 merge={"random_seed": 11}, upload={"enabled": True, "repo": "org/gw-{step}", "private": False})
    snakemake(workdir, "results/final/upload.json", env=env)

    files = hub.hub.repos["org/gw-final"].resolve("main").files
    assert {"model.safetensors", "config.json", "README.md", "mergekit_config.yml", "mergeflow_recipe.yml",
            "provenance.json"} <= set(files)
    assert not [f for f in files if any(part.startswith(".") for part in f.split("/"))]
    for name, data in files.items():
        if not name.endswith(".safetensors"):
            assert str(tmp_path) not in data.decode(), f"{name} names a local path"
    lock = yaml.safe_load((workdir / "config" / "models.lock").read_text())["models"]
    recipe = yaml.safe_load(files["mergeflow_recipe.yml"])
    assert [s["name"] for s in recipe["steps"]] == ["blend", "final"]
    assert recipe["steps"][1]["seed"] == 11
    selected = json.loads((workdir / "results" / "blend" / "selected.json").read_text())["selected"]
    weights = [m["parameters"]["weight"] for m in recipe["steps"][0]["config"]["models"]]
    assert weights == ([0.8, 0.2] if selected.endswith("tilted") else [0.5, 0.5])
    assert recipe["steps"][0]["config"]["models"][0]["model"] == f"org/gw-m1@{lock['org/gw-m1@main']['commit']}"
    config = yaml.safe_load(files["mergekit_config.yml"])
    assert [m["model"] for m in config["models"]] == ["blend", f"org/gw-m3@{lock['org/gw-m3@main']['commit']}"]

    card = ModelCard(files["README.md"].decode())
    assert card.data.base_model == ["org/gw-base", "org/gw-m1", "org/gw-m2", "org/gw-m3"]
    assert card.data.base_model_relation == "merge" and card.data.library_name == "transformers"
    assert {"merge", "mergekit"} <= set(card.data.tags) and card.data.license == "apache-2.0"
    assert "mergeflow reproduce org/gw-final" in card.text

    fresh = tmp_path / "elsewhere"
    fresh.mkdir()
    clean = {**env, "HF_HOME": str(tmp_path / "empty_hf_home")}
    result = mergeflow(fresh, "reproduce", "org/gw-final", "rebuilt", "--json", "r.json", env=clean)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "identical:" in result.stdout
    record = json.loads((fresh / "r.json").read_text())
    assert record["source"] == "mergeflow_recipe.yml" and record["exact_reproduction_possible"]
    assert sorted(p.name for p in fresh.iterdir()) == ["r.json", "rebuilt"]

"""A MoE step in the pipeline: experts that are an earlier merge step and an aliased model, in the
tutorial form (``merge_method: moe``); built by ``mergeflow moe``, evaluated, gated, reported and
uploaded, and cached like any other step. (Variants of MoE steps are planned in test_recipes.py;
selection and promotion are the same jobs as for any step.)"""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from conftest import TASK, make_workdir, snakemake, write_config

pytestmark = pytest.mark.workflow

RECIPE = """\
name: step1
merge_method: linear
models:
  - model: m1
    parameters: {weight: 0.5}
  - model: m2
    parameters: {weight: 0.5}
---
name: moe
merge_method: moe
base_model: base
gate_mode: cheap_embed
experts_per_token: 1
experts:
  - source_model: step1
    positive_prompts: ["1+2="]
  - source_model: m3
    positive_prompts: ["<ab>="]
"""


@pytest.fixture(scope="module")
def moe_baseline(tmp_path_factory, models, env):
    workdir = tmp_path_factory.mktemp("moe-baseline")
    (workdir / "tasks").mkdir()
    data = workdir / "tasks" / "tiny.jsonl"
    data.write_text('{"prompt": "1+2=", "answer": "3"}\n{"prompt": "<ab>=", "answer": "ba"}\n')
    (workdir / "tasks" / "tiny.yaml").write_text(TASK.format(data=data))
    make_workdir(
        workdir, RECIPE, {name: models[name] for name in ("base", "m1", "m2", "m3")}, recipe_file="moe.yaml",
        evaluation={"tasks": ["tiny"], "include_path": "tasks"},
        gate={"metric": "tiny/exact_match", "min": 0.0},
    )
    snakemake(workdir, env=env)
    return workdir


@pytest.fixture
def moe_workdir(moe_baseline, tmp_path):
    target = tmp_path / "work"
    shutil.copytree(moe_baseline, target, symlinks=True)
    return target


def test_moe_step_is_built_evaluated_gated_and_reported(moe_baseline):
    results = moe_baseline / "results"
    config = json.loads((results / "moe" / "model" / "config.json").read_text())
    assert config["architectures"] == ["MixtralForCausalLM"] and config["num_local_experts"] == 2
    verbatim = yaml.safe_load((results / "moe" / "model" / "mergekit_moe_config.yml").read_text())
    assert verbatim["experts"][0]["source_model"] == "results/step1/model"
    assert json.loads((results / "moe" / "model" / "provenance.json").read_text())["seed"] == 0
    for name in ("moe", "step1"):
        assert (results / name / "eval" / "results.json").is_file() and (results / name / "gate.json").is_file()
    nodes = {n["name"]: n for n in json.loads((results / "manifest.json").read_text())["nodes"]}
    assert nodes["moe"]["method"] == "moe" and nodes["moe"]["parents"] == ["base", "step1", "m3"]
    assert "moe" in (results / "report" / "index.html").read_text()


def test_changing_one_experts_prompts_reruns_that_step_and_downstream(moe_workdir, offline_env):
    recipe = moe_workdir / "config" / "recipes" / "moe.yaml"
    recipe.write_text(recipe.read_text().replace('positive_prompts: ["<ab>="]', 'positive_prompts: ["<ab>=", "<cd>="]'))
    expected = {"engine_config[moe]", "merge[moe]", "evaluate[moe]", "gate[moe]", "step_manifest[moe]", "manifest", "report"}
    assert snakemake(moe_workdir, env=offline_env).jobs == expected  # step1 and the inputs stay as they were
    assert snakemake(moe_workdir, "-n", env=offline_env).jobs == set()


def test_moe_step_uploads(moe_workdir, env, hub):
    write_config(moe_workdir, upload={"enabled": True, "steps": ["moe"], "repo": "org/{step}-moe"})
    snakemake(moe_workdir, env=env)
    files = hub.hub.repos["org/moe-moe"].resolve("main").files
    local = moe_workdir / "results" / "moe" / "model"
    assert files["model.safetensors"] == (local / "model.safetensors").read_bytes()
    assert "- **moe** (moe)" in files["README.md"].decode()

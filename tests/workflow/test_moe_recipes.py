"""MoE steps in recipe planning: experts name aliases, Hub repos and earlier steps; the tutorial form
and the bare mergekit-moe form; variants over gate modes and over one expert's prompts."""

from __future__ import annotations

import pytest
import yaml

from mergeflow.pipeline.recipes import PipelineError, Plan

RECIPE = """\
name: first
merge_method: linear
models: [{model: local, parameters: {weight: 1.0}}]
---
name: moe
base_model: local
experts:
  - source_model: first
    positive_prompts: ["1+2="]
  - source_model: org/expert
    positive_prompts: ["<ab>="]
shared_experts:
  - source_model: alias
variants:
  hidden: {}
  random: {gate_mode: random, experts_per_token: 1}
  prompts: {models: {org/expert: {positive_prompts: ["<cd>="], negative_prompts: ["1+1="]}}}
select: {metric: t/m}
"""


def plan_for(tmp_path, recipe: str, **config) -> Plan:
    (tmp_path / "local").mkdir(exist_ok=True)
    (tmp_path / "r.yaml").write_text(recipe)
    return Plan({"recipes": ["r.yaml"], **config}, base=tmp_path)


def test_moe_step_references_and_variants(tmp_path):
    plan = plan_for(tmp_path, RECIPE, models={"alias": "org/shared"})
    moe = plan.nodes["moe"]
    assert moe.is_moe and moe.method == "moe" and not plan.nodes["first"].is_moe
    assert moe.parents == ["local", "first", "org--expert", "alias"]
    commits = {"org/expert@main": "e" * 40, "org/shared@main": "s" * 40}
    random = yaml.safe_load(plan.engine_config("moe--random", commits))
    assert random["gate_mode"] == "random" and random["experts_per_token"] == 1
    assert random["experts"][0]["source_model"] == "results/first/model"
    assert random["experts"][1]["source_model"] == "org/expert@" + "e" * 40
    assert random["shared_experts"][0]["source_model"] == "org/shared@" + "s" * 40
    prompts = yaml.safe_load(plan.engine_config("moe--prompts", commits))
    assert prompts["experts"][1]["positive_prompts"] == ["<cd>="] and prompts["experts"][1]["negative_prompts"] == ["1+1="]
    assert prompts["experts"][0]["positive_prompts"] == ["1+2="] and "gate_mode" not in prompts
    assert plan.nodes["moe--random"].overrides == {"gate_mode": "random", "experts_per_token": 1}
    assert plan.nodes["moe--prompts"].overrides == {"org/expert.positive_prompts": ["<cd>="], "org/expert.negative_prompts": ["1+1="]}
    assert plan.nodes["moe"].document["experts"][1]["positive_prompts"] == ["<ab>="]  # variants copy


def test_tutorial_form_is_a_moe_step(tmp_path):
    recipe = "name: moe\nmerge_method: moe\nbase_model: local\nexperts:\n  - source_model: org/a\n    positive_prompts: [math]\n"
    plan = plan_for(tmp_path, recipe)
    assert plan.nodes["moe"].is_moe
    assert yaml.safe_load(plan.engine_config("moe", {"org/a@main": "a" * 40}))["merge_method"] == "moe"


@pytest.mark.parametrize(
    "variant, message",
    [
        ("{parameters: {t: 1}}", "a variant of a MoE step is a mapping with 'models' and/or"),
        ("{models: {org/other: {positive_prompts: [x]}}}", "'org/other' is not an expert of this step"),
    ],
)
def test_bad_moe_variants_name_the_step(tmp_path, variant, message):
    recipe = (
        "name: moe\nbase_model: local\nexperts:\n  - source_model: org/a\n    positive_prompts: [math]\n"
        f"variants:\n  v: {variant}\nselect: {{metric: t/m}}\n"
    )
    with pytest.raises(PipelineError, match="r.yaml: step 'moe': variants.v") as raised:
        plan_for(tmp_path, recipe)
    assert message in str(raised.value)

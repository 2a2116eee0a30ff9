"""Recipe planning without Snakemake: references in every place mergekit allows them, and the
per-node engine configs the workflow writes."""

from __future__ import annotations

import pytest
import yaml

from mergeflow.pipeline.recipes import PipelineError, Plan


def plan_for(tmp_path, recipe: str, **config) -> Plan:
    (tmp_path / "local").mkdir(exist_ok=True)
    (tmp_path / "r.yaml").write_text(recipe)
    return Plan({"recipes": ["r.yaml"], **config}, base=tmp_path)


def test_every_reference_is_made_concrete(tmp_path):
    plan = plan_for(
        tmp_path,
        """\
name: first
merge_method: slerp
slices:
  - sources:
      - {model: org/a@v2, layer_range: [0, 2]}
      - {model: {path: local}, layer_range: [0, 2]}
    base_model: org/a@v2
parameters: {t: 0.5}
tokenizer_source: base
---
name: second
merge_method: passthrough
slices:
  - sources: [{model: first, layer_range: [0, 1]}]
  - sources: [{model: alias, layer_range: [1, 2]}]
tokenizer: {source: alias}
""",
        models={"alias": "org/b"},
    )
    assert plan.nodes["second"].parents == ["first", "alias"]
    commits = {"org/a@v2": "a" * 40, "org/b@main": "b" * 40}
    first = yaml.safe_load(plan.engine_config("first", commits))
    assert [s["model"] for s in first["slices"][0]["sources"]] == ["org/a@" + "a" * 40, "local"]
    assert first["slices"][0]["base_model"] == "org/a@" + "a" * 40 and first["tokenizer_source"] == "base"
    second = yaml.safe_load(plan.engine_config("second", commits))
    assert second["slices"][0]["sources"][0]["model"] == "results/first/model"
    assert second["tokenizer"]["source"] == "org/b@" + "b" * 40
    assert {name: m.repo or m.path for name, m in plan.inputs.items()} == {
        "org--a--v2": "org/a", "local": "local", "alias": "org/b"
    }


def test_variants_override_only_their_own_copy(tmp_path):
    plan = plan_for(
        tmp_path,
        """\
name: s
merge_method: ties
base_model: local
models:
  - {model: org/x, parameters: {weight: 0.5, density: 0.5}}
parameters: {normalize: true}
variants:
  dense: {models: {org/x: {density: 0.9}}, parameters: {normalize: false}}
select: {metric: t/m}
""",
    )
    assert plan.nodes["s"].variants == ["s--dense"]
    assert plan.nodes["s--dense"].overrides == {"normalize": False, "org/x.density": 0.9}
    dense = yaml.safe_load(plan.engine_config("s--dense", {"org/x@main": "c" * 40}))
    assert dense["models"][0]["parameters"] == {"weight": 0.5, "density": 0.9}
    assert dense["parameters"] == {"normalize": False}
    assert plan.nodes["s"].document["models"][0]["parameters"]["density"] == 0.5


def test_variants_need_a_selection_metric(tmp_path):
    recipe = "name: s\nmerge_method: linear\nmodels: [{model: local}]\nvariants: {a: {}}\n"
    with pytest.raises(PipelineError, match=r"r.yaml: step 's': variants need select"):
        plan_for(tmp_path, recipe)
    assert plan_for(tmp_path, recipe, gate={"metric": "t/m", "min": 0}).nodes["s"].select_metric == "t/m"

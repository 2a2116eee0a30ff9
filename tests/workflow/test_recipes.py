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


LORA_RECIPE = """\
name: tuned
merge_method: linear
models:
  - {model: org/base@v1+org/lora@r2, parameters: {weight: 0.5}}
  - {model: {model: local, lora: ad}, parameters: {weight: 0.5}}
  - {model: local+adapters/two, parameters: {weight: 0.5}}
variants:
  heavy: {models: {org/base@v1+org/lora@r2: {weight: 0.9}}}
select: {metric: t/m}
---
name: next
merge_method: linear
models:
  - {model: tuned+ad}
  - {model: local}
"""


def lora_plan(tmp_path) -> Plan:
    for adapter in ("adapters/one", "adapters/two"):
        (tmp_path / adapter).mkdir(parents=True)
        (tmp_path / adapter / "adapter_config.json").write_text("{}")
    return plan_for(tmp_path, LORA_RECIPE, models={"ad": "adapters/one"})


def test_model_plus_lora_references_resolve_both_sides(tmp_path):
    plan = lora_plan(tmp_path)
    assert set(plan.inputs) == {"org--base--v1", "local"}
    assert {n: (m.repo, m.revision, m.path) for n, m in plan.adapters.items()} == {
        "org--lora--r2": ("org/lora", "r2", None), "ad": (None, None, "adapters/one"),
        "adapters--two": (None, None, "adapters/two"),
    }
    assert plan.nodes["tuned"].parents == ["org--base--v1", "local"]
    assert plan.nodes["tuned--heavy"].adapters == ["org--lora--r2", "ad", "adapters--two"]
    assert plan.upstream_adapters("next") == ["ad", "org--lora--r2", "adapters--two"]
    assert plan.path("ad", "digest") == "results/inputs/ad/model.sha256"
    commits = {"org/base@v1": "b" * 40, "org/lora@r2": "l" * 40}
    heavy = yaml.safe_load(plan.engine_config("tuned--heavy", commits))
    assert heavy["models"] == [
        {"model": f"org/base@{'b' * 40}+org/lora@{'l' * 40}", "parameters": {"weight": 0.9}},
        {"model": {"model": "local", "lora": "adapters/one"}, "parameters": {"weight": 0.5}},
        {"model": "local+adapters/two", "parameters": {"weight": 0.5}},
    ]
    after = yaml.safe_load(plan.engine_config("next", commits))
    assert after["models"][0]["model"] == "results/tuned/model+adapters/one"
    assert plan.manifest_entry("tuned--heavy", commits)["adapters"] == {
        "org--lora--r2": f"org/lora@{'l' * 40}", "ad": "adapters/one", "adapters--two": "adapters/two"
    }


@pytest.mark.parametrize(
    "reference, message",
    [
        ("local+first", r"step 'first' is a model, not a LoRA adapter"),
        ("local+local", r"local is not a LoRA adapter \(it has no adapter_config.json\)"),
        ("local+a+b", r"at most one '\+'"),
        ("local+adapters/one@v1", r"local directory adapters/one cannot take a revision"),
    ],
)
def test_bad_lora_references_get_one_line(tmp_path, reference, message):
    lora_plan(tmp_path)
    recipe = (
        "name: first\nmerge_method: linear\nmodels: [{model: local}]\n---\n"
        f"name: s\nmerge_method: linear\nmodels: [{{model: '{reference}'}}]\n"
    )
    with pytest.raises(PipelineError, match=message):
        plan_for(tmp_path, recipe)


def test_published_files_name_both_sides_publicly(tmp_path):
    from mergeflow.pipeline.published import local_inputs, public_document, _public_input

    plan = lora_plan(tmp_path)
    commits = {"org/base@v1": "b" * 40, "org/lora@r2": "l" * 40}
    nodes = {name: plan.manifest_entry(name, commits) for name in [*plan.inputs, "tuned--heavy"]}
    document = public_document(nodes, "tuned--heavy")
    assert [m["model"] for m in document["models"]] == [
        f"org/base@{'b' * 40}+org/lora@{'l' * 40}", {"model": "local", "lora": "adapters/one"}, "local+adapters/two",
    ]
    nodes["tuned--heavy"]["kind"] = "step"
    assert local_inputs(nodes, "tuned--heavy") == ["adapters/one", "adapters/two", "local"]
    record = {
        "reference": "local+adapters/one", "identity": "/abs/local+/abs/adapters/one", "files": {},
        "lora": {"reference": "adapters/one", "identity": "/abs/adapters/one", "files": {}},
    }
    public = _public_input(record, {"local": "local", "adapters/one": "adapters/one"})
    assert public["reference"] == public["identity"] == "local+adapters/one"
    assert public["lora"]["identity"] == "adapters/one"

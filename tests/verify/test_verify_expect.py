"""``expect: REPO[@REV]`` in a recipe step: planned as a verification, never part of the merge."""

from __future__ import annotations

import pytest

from mergeflow.pipeline.recipes import PipelineError, Plan

STEP = "name: s\nmerge_method: linear\nmodels:\n  - model: org/a\n    parameters: {weight: 1.0}\n"


def plan_for(tmp_path, recipe: str) -> Plan:
    (tmp_path / "r.yaml").write_text(recipe)
    return Plan({"recipes": ["r.yaml"]}, base=tmp_path)


def test_expect_adds_a_verification_to_the_manifest_but_not_to_the_engine_config(tmp_path):
    plan = plan_for(tmp_path, STEP + "expect: org/published@v1\n")
    commits = {"org/a@main": "c" * 40}
    entry = plan.manifest_entry("s", commits, checks=True)
    assert (entry["expect"], entry["verify"]) == ("org/published@v1", "results/s/verify.json")
    assert plan.manifest_entry("s", commits) == plan_for(tmp_path, STEP).manifest_entry("s", commits)
    assert "expect" not in plan.engine_config("s", commits)
    assert plan.expecting == ["s"]
    assert "verify" not in plan.manifest_entry("s", commits, ran=False, checks=True)


@pytest.mark.parametrize("value", ["", "not a repo", "org/x@"])
def test_a_bad_expect_names_the_step_and_key(tmp_path, value):
    with pytest.raises(PipelineError, match=r"step 's': expect"):
        plan_for(tmp_path, STEP + f"expect: {value!r}\n")

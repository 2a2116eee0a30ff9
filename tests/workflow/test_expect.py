"""`expect:` in the pipeline: steps verified against published models, verdicts in the report."""

from __future__ import annotations

import json

import pytest
from conftest import model_files, snakemake

pytestmark = pytest.mark.workflow


def test_expected_steps_are_verified_and_the_report_shows_each_verdict(workdir, env, hub):
    hub.hub.commit("org/published-step1", model_files(workdir / "results" / "step1" / "model"))
    recipe = workdir / "config" / "recipes" / "gradual.yaml"
    text = recipe.read_text()
    text = text.replace("name: step2\n", "name: step2\nexpect: org/published-step1\n")  # the wrong model
    recipe.write_text(text.replace("name: step1\n", "name: step1\nexpect: org/published-step1@main\n"))
    jobs = snakemake(workdir, "-n", env=env).jobs
    assert {"verify[step1]", "verify[step2]", "report"} <= jobs
    assert not {j for j in jobs if j.startswith(("merge[", "evaluate[", "promote["))}, jobs
    snakemake(workdir, env=env)
    same = json.loads((workdir / "results" / "step1" / "verify.json").read_text())
    other = json.loads((workdir / "results" / "step2" / "verify.json").read_text())
    assert same["verdict"] == "identical" and other["verdict"] == "different"
    html = (workdir / "results" / "report" / "index.html").read_text()
    section = html[html.index("Published-model checks"):]
    assert '<td class="pass">identical</td>' in section and '<td class="fail">different</td>' in section
    assert other["differing"][0]["name"] in section

"""Bad input fails at parse time (or, for the engine's own checks, first thing in the run) with
one line naming the key or file, and nothing is written."""

from __future__ import annotations

import pytest

from conftest import RECIPE, edit_config, make_workdir, snakemake

pytestmark = pytest.mark.workflow


@pytest.fixture
def fresh(tmp_path, models):
    """A workdir with local models and a valid config that has never run."""
    make_workdir(
        tmp_path,
        RECIPE,
        {name: models[name] for name in ("base", "m1", "m2", "m3")},
        gate={"metric": "tiny/exact_match", "max_drop": 0.05, "stop": True},
    )
    return tmp_path


def fails(workdir, env, *args) -> str:
    run = snakemake(workdir, "-n", *args, env=env, check=False)
    assert run.returncode != 0
    assert not (workdir / "results").exists() and not (workdir / "config" / "models.lock").exists()
    return run.output


def test_valid_config_plans_the_whole_workflow(fresh, offline_env):
    jobs = snakemake(fresh, "-n", env=offline_env).jobs
    assert {"merge[step1--a50]", "merge[step1--a75]", "select[step1]", "promote[step1]", "merge[step3]"} <= jobs
    assert {j for j in jobs if j.startswith("evaluate")} == {
        "evaluate[inputs/base]", "evaluate[inputs/m1]", "evaluate[inputs/m2]", "evaluate[inputs/m3]",
        "evaluate[step1--a50]", "evaluate[step1--a75]", "evaluate[step2]", "evaluate[step3]",
    }


@pytest.mark.parametrize(
    "edit, key",
    [
        (lambda c: c.update(recipies=c.pop("recipes")), "recipies"),
        (lambda c: c.update(merge={"devcie": "cuda"}), "devcie"),
        (lambda c: c.update(evaluation={"limit": "ten"}), "ten"),
        (lambda c: c["gate"].update(maxdrop=0.1), "maxdrop"),
    ],
)
def test_bad_config_key_fails_naming_it(fresh, offline_env, edit, key):
    edit_config(fresh, edit)
    output = fails(fresh, offline_env)
    assert key in output and "ValidationError" in output


@pytest.mark.parametrize(
    "recipe, message",
    [
        (RECIPE.replace("model: m3", "model: nosuch"), "step 'step2': models[1].model: 'nosuch' is not an earlier step"),
        (RECIPE.replace("name: step3", "name: step1"), "step 'step1': the name is already used by config/recipes/gradual.yaml"),
        (RECIPE.replace("  - model: step1\n", "  - model: step3\n"), "'step3' is not an earlier step"),
        (RECIPE.replace("      m2: {weight: 0.25}", "      m9: {weight: 0.25}"), "variants.a75.models: 'm9' is not a model of this step"),
        (RECIPE.replace("name: step3", "name: step--3"), "gradual.yaml: name: invalid name 'step--3'"),
        (RECIPE + "---\n- not a mapping\n", "gradual.yaml: document 4 is not a mapping"),
        (RECIPE.replace("name: step2\n", "name: step2\n  bad: [\n"), "config/recipes/gradual.yaml: not valid YAML"),
    ],
)
def test_bad_recipe_fails_naming_file_and_step(fresh, offline_env, recipe, message):
    (fresh / "config" / "recipes" / "gradual.yaml").write_text(recipe)
    assert message in fails(fresh, offline_env)


def test_step_names_must_be_unique_across_recipe_files(fresh, offline_env):
    (fresh / "config" / "recipes" / "more.yaml").write_text(
        "name: step2\nmerge_method: linear\nmodels:\n  - model: m1\n  - model: m2\n"
    )
    output = fails(fresh, offline_env)
    assert "config/recipes/more.yaml: step 'step2': the name is already used by config/recipes/gradual.yaml" in output


def test_unknown_merge_method_fails_when_the_workflow_is_parsed(fresh, offline_env):
    (fresh / "config" / "recipes" / "gradual.yaml").write_text(RECIPE.replace("merge_method: slerp", "merge_method: slurp"))
    run = snakemake(fresh, "results/step3/merge.yml", env=offline_env, check=False)
    assert run.returncode != 0
    assert "config/recipes/gradual.yaml: step step3: config key 'merge_method': unknown merge_method 'slurp'" in run.output
    assert not (fresh / "results" / "step3" / "merge.yml").exists()


@pytest.mark.parametrize(
    "recipe, message",
    [
        (RECIPE.replace("  t: 0.3", "  t: [lots]"), "step step3: config key 'parameters.t': expected a float"),
        (RECIPE.replace("parameters: {weight: 0.5}\n---", "parameters: {weight: {value: heavy}}\n---"),
         "step step2: config key 'models[1].parameters.weight[0].value': expected a float"),
        (RECIPE.replace("  t: 0.3", "  t: 0.3\ndtype: [bf16]"), "step step3: config key 'dtype'"),
    ],
)
def test_every_steps_engine_config_is_checked_when_the_workflow_is_parsed(fresh, offline_env, recipe, message):
    (fresh / "config" / "recipes" / "gradual.yaml").write_text(recipe)
    output = fails(fresh, offline_env)
    assert message in output and "Traceback" not in output


def test_cuda_without_a_cuda_torch_fails_when_the_workflow_starts(fresh, offline_env):
    import torch

    if torch.version.cuda is not None:
        pytest.skip("this torch has CUDA")
    edit_config(fresh, lambda c: c.update(merge={"device": "cuda"}))
    assert "merge.device: cuda, but this torch" in fails(fresh, offline_env)

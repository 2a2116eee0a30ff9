"""config/examples/: the README's real-Hub-model runs work as written. The example's Hub repos are
served by the Hub stand-in (tiny models under the real names), so what is checked is the plan:
only the example's recipe and models, its own lockfile, and the early device check."""

from __future__ import annotations

import shutil

import pytest
import torch
import yaml

from conftest import REPO, model_files, snakemake

pytestmark = pytest.mark.workflow

EXAMPLE = "config/examples/gradual-7b"


@pytest.fixture
def example(tmp_path, hub, models):
    """A working directory holding the repository's config/ (the demo's config.yaml and recipes
    included), with the example's Hub models on the Hub stand-in."""
    shutil.copytree(REPO / "config", tmp_path / "config")
    config = yaml.safe_load((tmp_path / EXAMPLE / "config.yaml").read_text())
    for alias, repo in config["models"].items():
        if repo not in hub.hub.repos:
            hub.hub.commit(repo, model_files(models["m1" if alias != "base" else "base"]), "initial")
    return tmp_path


def test_example_plans_its_own_recipe_models_and_lock(example, env):
    run = snakemake(
        example, "-n", "--configfile", f"{EXAMPLE}/config.yaml",
        "--config", "merge={device: cpu}", "evaluation={device: cpu}", env=env,
    )
    merges = {j for j in run.jobs if j.startswith("merge[")}
    assert merges == {f"merge[{n}]" for n in ("step1--t30", "step1--t50", "step1--t70", "step2--z30", "step2--z40")}
    fetched = {j for j in run.jobs if j.startswith("fetch_model[")}
    assert fetched == {f"fetch_model[{n}]" for n in ("base", "marcoroni", "merge14", "zephyr")}  # no demo model
    lock = yaml.safe_load((example / EXAMPLE / "models.lock").read_text())["models"]
    assert set(lock) == {
        "mistralai/Mistral-7B-v0.1@main", "AIDC-ai-business/Marcoroni-7B-v3@main",
        "EmbeddedLLM/Mistral-7B-Merge-14-v0.1@main", "HuggingFaceH4/zephyr-7b-beta@main",
    }
    assert not (example / "config" / "models.lock").exists()  # the demo's lock is not touched


@pytest.mark.skipif(torch.backends.cuda.is_built(), reason="this torch has CUDA: device: cuda is valid here")
def test_cuda_without_a_cuda_build_fails_at_once_naming_the_key(example, env):
    run = snakemake(example, "-n", "--configfile", f"{EXAMPLE}/config.yaml", env=env, check=False)
    assert run.returncode != 0
    assert "merge.device: cuda, but this torch" in run.output and "has no CUDA support" in run.output
    assert "Traceback" not in run.output
    assert not (example / "results").exists()

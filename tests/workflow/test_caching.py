"""Caching semantics: each change reruns exactly the jobs it should, and nothing else.

Every test starts from a copy of the finished baseline (see conftest.py): step1 (two variants)
from m1+m2, step2 = step1 + m3 (a Hub model, locked) on base, step3 = step2 blended with m1.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import yaml

from conftest import HUB_EXTRAS, model_files, mergeflow, snakemake, write_config

pytestmark = pytest.mark.workflow

# What any change to step2's inputs reruns; the report manifest follows the gates it lists.
STEP2_ONWARDS = {
    "merge[step2]", "evaluate[step2]", "gate[step2]",
    "merge[step3]", "evaluate[step3]", "gate[step3]",
    "manifest", "report",
}


def edit_recipe(workdir, old: str, new: str) -> None:
    recipe = workdir / "config" / "recipes" / "gradual.yaml"
    text = recipe.read_text()
    assert old in text
    recipe.write_text(text.replace(old, new))


def test_nothing_changed_nothing_runs(workdir, offline_env):
    run = snakemake(workdir, "-n", env=offline_env)
    assert run.jobs == set()
    assert "Nothing to be done" in run.output


def test_comment_only_recipe_edit_runs_nothing(workdir, offline_env):
    edit_recipe(workdir, "name: step2\n", "name: step2  # reviewed\n")
    assert snakemake(workdir, "-n", env=offline_env).jobs == set()


def test_changing_a_step_reruns_it_and_everything_downstream_only(workdir, offline_env):
    edit_recipe(workdir, "  - model: m3\n    parameters: {weight: 0.5}", "  - model: m3\n    parameters: {weight: 0.7}")
    expected = STEP2_ONWARDS | {"engine_config[step2]", "step_manifest[step2]", "step_manifest[step3]"}
    assert snakemake(workdir, "-n", env=offline_env).jobs == expected
    # Offline: the Hub model comes from the warm cache at its locked commit.
    assert snakemake(workdir, env=offline_env).jobs == expected
    assert snakemake(workdir, "-n", env=offline_env).jobs == set()


def test_identical_weights_from_a_step_rerun_leave_downstream_alone(workdir, offline_env):
    """Reordering keys changes the step's config text but not one weight: the merge reruns, and
    its digest (rewritten with the same bytes) stops everything else; only the cheap gates and
    the report reread the changed manifests."""
    digest = workdir / "results" / "step2" / "model.sha256"
    before = digest.read_bytes()
    evals = {n: (workdir / "results" / n / "eval" / "results.json").stat().st_mtime_ns for n in ("step2", "step3")}
    edit_recipe(workdir, "merge_method: task_arithmetic\nbase_model: base\n", "base_model: base\nmerge_method: task_arithmetic\n")
    ran = snakemake(workdir, env=offline_env).jobs
    assert ran == {
        "engine_config[step2]", "merge[step2]",
        "step_manifest[step2]", "step_manifest[step3]", "manifest",
        "gate[step2]", "gate[step3]", "report",
    }
    assert digest.read_bytes() == before
    assert all((workdir / "results" / n / "eval" / "results.json").stat().st_mtime_ns == t for n, t in evals.items())
    assert snakemake(workdir, "-n", env=offline_env).jobs == set()


def test_forced_rebuild_of_one_step_then_nothing_downstream(workdir, offline_env):
    ran = snakemake(workdir, "--force", "results/step2/model.sha256", env=offline_env).jobs
    assert ran == {"merge[step2]"}
    assert snakemake(workdir, "-n", env=offline_env).jobs == set()


def test_new_content_in_a_local_model_reruns_its_dependents_only(workdir, models, offline_env):
    shutil.rmtree(workdir / "models" / "base")
    shutil.copytree(models["base_v2"], workdir / "models" / "base")
    planned = snakemake(workdir, "-n", env=offline_env).jobs
    assert planned == STEP2_ONWARDS | {"fetch_model[base]", "evaluate[inputs/base]"}


def test_new_commit_in_the_lock_reruns_its_dependents_only(workdir, models, hub, env):
    lock = workdir / "config" / "models.lock"
    old = yaml.safe_load(lock.read_text())["models"]["org/m3@main"]["commit"]
    new = hub.hub.commit("org/m3", {**model_files(models["m3_v2"]), **HUB_EXTRAS}, "retrained")
    # The moved branch changes nothing until the lock is refreshed.
    assert snakemake(workdir, "-n", env=env).jobs == set()
    result = mergeflow(workdir, "lock", "--refresh", env=env)
    assert result.returncode == 0, result.stderr
    assert f"org/m3@main -> {new} (was {old[:12]})" in result.stdout
    planned = snakemake(workdir, "-n", env=env).jobs
    # step2's engine config names the pinned commit, so it and the manifests that quote it change.
    config_jobs = {"engine_config[step2]", "step_manifest[step2]", "step_manifest[step3]"}
    assert planned == STEP2_ONWARDS | config_jobs | {"fetch_model[m3]", "evaluate[inputs/m3]"}


def test_lock_pins_commit_and_file_hashes_and_fetches_only_what_merges_read(baseline, env, hub):
    entry = yaml.safe_load((baseline / "config" / "models.lock").read_text())["models"]["org/m3@main"]
    first = list(hub.hub.repos["org/m3"].commits.values())[0]
    assert entry["commit"] == first.oid
    wanted = {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"}
    assert set(entry["files"]) == wanted
    assert all(meta["sha256"] == hashlib.sha256(first.files[name]).hexdigest() for name, meta in entry["files"].items())
    snapshot = Path(env["HF_HOME"]) / "hub" / "models--org--m3" / "snapshots" / first.oid
    assert {p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file()} == wanted


def test_failed_gate_with_stop_skips_everything_built_on_it(workdir, offline_env):
    write_config(workdir, gate={"metric": "tiny/exact_match", "min": 0.5, "stop": True})
    run = snakemake(workdir, env=offline_env)
    # step2's and step3's manifests may be rewritten before step1's gate is known; nothing else is.
    # promote reruns after select (cheap hard links) and writes the same digest.
    assert run.jobs - {"step_manifest[step2]", "step_manifest[step3]"} == {
        "step_manifest[step1]", "select[step1]", "promote[step1]",
        "gate[step1--a50]", "gate[step1--a75]", "gate[step1]", "manifest", "report",
    }
    stops = [line for line in run.output.splitlines() if line.startswith("mergeflow: step1 failed the gate")]
    assert len(stops) == 1 and stops[0].endswith("steps built on it do not run: step2, step3")
    nodes = {n["name"]: n for n in json.loads((workdir / "results" / "manifest.json").read_text())["nodes"]}
    assert "eval" not in nodes["step2"] and "eval" not in nodes["step3"]  # the report shows them as not run
    assert snakemake(workdir, "-n", env=offline_env).jobs == set()


def test_upload_publishes_the_chosen_step_with_its_lineage(workdir, env, hub):
    write_config(workdir, upload={"enabled": True, "steps": ["step3"], "repo": "org/{step}-merged"})
    assert snakemake(workdir, "-n", env=env).jobs == {"upload[step3]"}
    snakemake(workdir, env=env)
    record = json.loads((workdir / "results" / "step3" / "upload.json").read_text())
    files = hub.hub.repos["org/step3-merged"].resolve("main").files
    assert record["commit"] == hub.hub.repos["org/step3-merged"].refs["main"]
    local = {p.name: p.read_bytes() for p in (workdir / "results" / "step3" / "model").iterdir()}
    assert files["model.safetensors"] == local["model.safetensors"]
    card = files["README.md"].decode()
    commit = yaml.safe_load((workdir / "config" / "models.lock").read_text())["models"]["org/m3@main"]["commit"]
    assert "base_model:\n- org/m3" in card
    for line in ("- **step3** (slerp)", "  - **step2** (task_arithmetic)", f"`org/m3@{commit}`", "`models/m1`"):
        assert line in card
    assert snakemake(workdir, "-n", env=env).jobs == set()

"""``mergeflow reproduce`` of merges published on the test Hub, one made by real mergekit 0.1.5."""

from __future__ import annotations

import json

import pytest
import yaml
from verify_support import mergeflow, model_files
from engine.oracle import mergekit_merge  # tests/engine: the mergekit 0.1.5 oracle

from mergeflow.pipeline.hub import read_lock

PUBLISHED = "2024-02-01T12:00:00.000Z"
CONFIG = """\
merge_method: ties
base_model: {base}
models:
  - model: {m1}
    parameters: {{weight: 0.6, density: 0.5}}
  - model: {m2}
    parameters: {{weight: 0.4, density: 0.7}}
parameters: {{normalize: true}}
dtype: bfloat16
"""


@pytest.fixture(scope="module")
def published(models, hub, tmp_path_factory):
    """org/ties-merge: made by mergekit from org/m1's first commit; org/m1 changed after publication."""
    commits = {
        "base": hub.hub.commit("org/base", model_files(models["base"]), "initial", date="2023-12-01T00:00:00.000Z"),
        "m1": hub.hub.commit("org/m1", model_files(models["m1"]), "initial", date="2024-01-10T00:00:00.000Z"),
        "m2": hub.hub.commit("org/m2", model_files(models["m2"]), "initial", date="2024-01-20T00:00:00.000Z"),
    }
    commits["m1_v2"] = hub.hub.commit("org/m1", model_files(models["m1_v2"]), "retrained", date="2024-03-01T00:00:00.000Z")
    out = tmp_path_factory.mktemp("published") / "merge"
    mergekit_merge(CONFIG.format(**{k: models[k] for k in ("base", "m1", "m2")}), out)
    files = model_files(out)
    files["mergekit_config.yml"] = CONFIG.format(base="org/base", m1="org/m1", m2="org/m2").encode()
    commits["merge"] = hub.hub.commit("org/ties-merge", files, "upload merge", date=PUBLISHED)
    return commits


def test_a_mergekit_merge_is_reproduced_bit_identically_with_inputs_as_of_publication(published, tmp_path, env):
    out = tmp_path / "rebuilt"
    result = mergeflow("reproduce", "org/ties-merge", str(out), "--json", str(tmp_path / "r.json"), env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"org/m1 -> {published['m1']}" in result.stdout
    assert "1 newer not used" in result.stdout
    assert "identical:" in result.stdout
    record = json.loads((tmp_path / "r.json").read_text())
    assert record["published"] == f"org/ties-merge@{published['merge']}"
    assert record["verification"]["verdict"] == "identical"
    pins = {p["repo"]: p["commit"] for p in record["steps"][0]["inputs"]}
    assert pins == {"org/base": published["base"], "org/m1": published["m1"], "org/m2": published["m2"]}
    lock = read_lock(out / "mergeflow.lock")
    assert {e["commit"] for e in lock.values()} == set(pins.values())
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["reproduction"]["steps"][0]["inputs"][1]["commit"] == published["m1"]
    assert {i["identity"] for i in provenance["inputs"]} == {f"{r}@{c}" for r, c in pins.items()}
    assert not list(tmp_path.glob(".rebuilt*")), "no staging dir left behind"


def test_the_newest_input_commit_does_not_reproduce_and_the_diagnosis_names_it(published, tmp_path, env):
    out = tmp_path / "rebuilt"
    result = mergeflow("reproduce", "org/ties-merge", str(out), "--inputs-as-of", "2024-03-02",
                       "--json", str(tmp_path / "r.json"), env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"org/m1 -> {published['m1_v2']}" in result.stdout
    assert "different:" in result.stdout
    record = json.loads((tmp_path / "r.json").read_text())
    diagnosis = record["diagnosis"]
    assert "org/m1" in diagnosis["feeding_inputs"]
    assert published["m1"] in [c["commit"] for c in diagnosis["nearby_commits"]["org/m1"]]
    assert f"org/m1 has other commits near the date: {published['m1'][:12]}" in result.stdout
    [tried] = diagnosis["candidates"]  # the one other commit of org/m1, tried on one tensor
    assert tried["inputs"] == {"org/m1": published["m1"]} and tried["reproduces"]
    assert f"is reproduced with org/m1@{published['m1']}" in result.stdout


def test_a_config_error_is_found_from_headers_without_downloading_weights(published, models, hub, tmp_path, env):
    bad = "merge_method: linear\nslices:\n  - sources:\n      - model: org/m2\n        layer_range: [0, 5]\n"
    hub.hub.commit("org/bad-merge", {**model_files(models["m2"]), "mergekit_config.yml": bad.encode()})
    hub.served.clear()
    result = mergeflow("reproduce", "org/bad-merge", str(tmp_path / "out"), env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip().splitlines() == [
        "mergeflow reproduce: error: config key 'slices[0].sources[0].layer_range': [0, 5] exceeds the 2 layers of "
        f"org/m2@{published['m2']}"]
    assert not [p for p in hub.served if p.endswith(".safetensors")]
    assert not (tmp_path / "out").exists()


def test_an_unseeded_random_method_is_flagged_up_front(published, models, hub, tmp_path, env):
    config = yaml.safe_load(CONFIG.format(base="org/base", m1="org/m1", m2="org/m2")) | {"merge_method": "dare_ties"}
    hub.hub.commit("org/dare-merge", {**model_files(models["m2"]), "mergekit_config.yml": yaml.safe_dump(config).encode()},
                   date=PUBLISHED)
    result = mergeflow("reproduce", "org/dare-merge", str(tmp_path / "out"), env=env)
    assert result.returncode == 1
    first_lines = result.stdout.splitlines()[:2]
    assert "draws random numbers and no seed was published, so exact reproduction is impossible" in first_lines[1]


def test_bad_references_exit_2_in_one_line(tmp_path, env):
    for args in (["org/nothing-here", str(tmp_path / "a")], ["org/m1", str(tmp_path / "b")]):
        result = mergeflow("reproduce", *args, env=env)
        assert result.returncode == 2, result.stdout + result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr

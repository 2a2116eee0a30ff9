"""A small recipe built from fixture results, laid out the way the workflow lays out a run.

Fixture values (tests/quality/fixtures/eval/*.json; demo = mean of demo_add and demo_rev, n=200):

    node        demo_add  demo_rev  demo    demo_add_nll
    base        0.40      0.95      0.675   0.80
    add         0.80      0.60      0.70    0.30
    rev         0.20      1.00      0.60    1.20
    copy        0.10      0.50      0.30    1.50
    step1--w50  0.35      1.00      0.675   0.70
    step1--w75  0.60      0.97      0.785   0.45
    step1--w90  0.75      0.70      0.725   0.35
    step2       0.58      0.96      0.77    0.50

step1 has no results of its own: it is whichever variant was selected. step3 never ran.

``recipe`` adds per-item samples (as ``mergeflow evaluate`` logs them) to every leaf task's
exact_match and nll, built so that paired answers are known: exact_match items are a prefix of
ones (item i is right iff i < value·n), so two models' right answers are nested and every
discordant item favours the better one; nll items alternate value ± 0.1, the same pattern for
every model, so each paired difference equals the delta. text_ppl has no samples (stderr view).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
MERGE_YAML = "merge_method: linear\nmodels:\n  - model: add\n    parameters: {weight: 0.75}\n  - model: rev\n    parameters: {weight: 0.25}\ndtype: float32\n"


def manifest_dict(gate: dict | None = None) -> dict:
    def step(name: str, parents: list[str], **extra) -> dict:
        return {
            "name": name,
            "kind": "step",
            "method": "linear",
            "parents": parents,
            "config": MERGE_YAML,
            "provenance": "provenance.json",
            "eval": f"eval/{name}.json",
            "gate": f"out/{name}/gate.json",
            **extra,
        }

    variants = [
        {
            **step(f"step1--w{w}", ["add", "rev"]),
            "kind": "variant",
            "variant_of": "step1",
            "overrides": {"weight": w / 100},
        }
        for w in (50, 75, 90)
    ]
    step1 = step("step1", ["add", "rev"], variants=[v["name"] for v in variants])
    del step1["eval"]
    step1["selected"] = "out/step1/selected.json"
    inputs = [
        {
            "name": n,
            "kind": "input",
            "parents": [],
            "eval": f"eval/{n}.json",
            "source": f"workflow/demo/models/{n}",
        }
        for n in ("base", "add", "rev", "copy")
    ]
    return {
        "nodes": [
            *inputs,
            *variants,
            step1,
            step("step2", ["step1", "copy"]),
            step("step3", ["step2", "base"]),
        ],
        "gate": (
            gate
            if gate is not None
            else {"metric": "demo/exact_match", "max_drop": 0.05, "stop": True}
        ),
        "select": {"step1": {"metric": "demo/exact_match"}},
    }


@pytest.fixture
def manifest_data() -> dict:
    return manifest_dict()


def add_samples(raw: dict) -> dict:
    """``raw`` with known per-item samples (see the module docstring)."""
    groups = raw.get("group_subtasks", {})
    samples = {}
    for task, entries in raw["results"].items():
        n = raw["n-samples"].get(task, {}).get("effective")
        if groups.get(task) or not n:
            continue
        kept = {}
        if "exact_match,none" in entries:
            right = round(entries["exact_match,none"] * n)
            kept["exact_match,none"] = [1.0] * right + [0.0] * (n - right)
        if "nll,none" in entries:
            mean = entries["nll,none"]
            kept["nll,none"] = [mean + (0.1 if i % 2 else -0.1) for i in range(n)]
        samples[task] = {
            key: {
                "aggregation": "mean",
                "doc_ids": list(range(n)),
                "doc_hashes": [f"{task}-{i}" for i in range(n)],
                "values": values,
            }
            for key, values in kept.items()
        }
    return {**raw, "mergeflow_samples": samples}


@pytest.fixture
def recipe(tmp_path, monkeypatch):
    """A run directory holding the fixture results (with samples); returns a function writing
    the manifest."""
    shutil.copytree(FIXTURES / "eval", tmp_path / "eval")
    for path in (tmp_path / "eval").glob("*.json"):
        path.write_text(json.dumps(add_samples(json.loads(path.read_text()))))
    shutil.copy(FIXTURES / "provenance.json", tmp_path / "provenance.json")
    monkeypatch.chdir(tmp_path)

    def write(gate: dict | None = None) -> Path:
        path = tmp_path / "manifest.json"
        path.write_text(json.dumps(manifest_dict(gate), indent=1))
        return path

    return write


# The file names manifest_dict gives each node's gate and selection, where later commands read them.
OUTPUTS = {"gate": "gate.json", "select": "selected.json"}


def node_command(command: str, step: str, output: str | None = None) -> dict:
    """Run ``mergeflow gate|select`` for one node of the manifest in the current directory; by
    default the result goes where the manifest says gate and report read it."""
    from mergeflow.cli import main

    output = output or f"out/{step}/{OUTPUTS[command]}"
    assert main([command, "--manifest", "manifest.json", "--step", step, "--output", output]) == 0
    return json.loads(Path(output).read_text())

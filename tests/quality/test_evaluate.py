"""`mergeflow evaluate` on a shipped demo model with the shipped tasks: real lm-eval, offline."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mergeflow.quality.evaluate import EvalOptions, local_task_names, needs_builtin_tasks
from mergeflow.quality.metrics import metrics_table
from mergeflow.quality.samples import items_of
from mergeflow.quality.statistics import strata

REPO = Path(__file__).resolve().parents[2]
TASKS = REPO / "workflow" / "demo" / "tasks"
MODELS = REPO / "workflow" / "demo" / "models"


def mergeflow(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("HF_HUB_OFFLINE", None)  # the command must set it itself
    return subprocess.run(
        [sys.executable, "-m", "mergeflow.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_demo_tasks_are_known_locally():
    names = local_task_names(str(TASKS))
    assert {"demo", "demo_nll", "demo_add", "demo_rev_nll", "demo_copy"} <= names
    assert not needs_builtin_tasks(EvalOptions(tasks=("demo", "demo_nll"), include_path=str(TASKS)))
    assert needs_builtin_tasks(EvalOptions(tasks=("demo", "hellaswag"), include_path=str(TASKS)))


def test_real_evaluation_of_a_demo_model(tmp_path):
    # From another directory, so that the task data must resolve relative to the task files.
    out = tmp_path / "eval" / "results.json"
    done = mergeflow(
        "evaluate",
        str(MODELS / "add"),
        "--output",
        str(out),
        "--include-path",
        str(TASKS),
        "--tasks",
        "demo",
        "demo_nll",
        "--limit",
        "40",
        "demo_nll=20",
        "--batch-size",
        "16",
        "--model-args",
        "attn_implementation=eager",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    raw = json.loads(out.read_text())
    assert raw["mergeflow_eval_options"]["offline"] is True
    # Two lm-eval passes (demo at 40 documents, demo_nll at 20) over one loaded model.
    assert raw["config"]["limit"] == [40, 20] and "samples" not in raw
    assert raw["config"]["model_args"]["attn_implementation"] == "eager"
    assert raw["mergeflow_eval_options"]["model_args"] == {"attn_implementation": "eager"}
    assert [p.name for p in out.parent.iterdir()] == ["results.json"]  # no temp file left
    table = metrics_table([("add", raw)]).set_index(["task", "metric"])
    # The addition specialist adds well (88.5 % on all 200 prompts) and has kept most of the
    # other two skills (reversal 75.5 %, copy 92 %).
    assert table.loc[("demo_add", "exact_match"), "value"] >= 0.8
    assert table.loc[("demo_rev", "exact_match"), "value"] >= 0.5
    assert table.loc[("demo_copy", "exact_match"), "value"] >= 0.85
    assert (table.xs("nll", level="metric").value < 0.5).all()  # chance: ln(45) ≈ 3.8 nats
    assert table.loc[("demo_add", "exact_match"), "n"] == 40
    assert table.loc[("demo", "exact_match"), "n"] == 120  # three tasks of 40
    assert table.loc[("demo_add_nll", "nll"), "n"] == 20
    # Every item's score is kept, and re-aggregates to lm-eval's number.
    items = items_of(raw, "demo_add", "exact_match")
    assert len(items.keys) == 40 and items.binary and items.aggregation == "mean"
    assert items.num.mean() == table.loc[("demo_add", "exact_match"), "value"]
    nll = items_of(raw, "demo_rev_nll", "nll")
    assert nll.num.mean() == pytest.approx(table.loc[("demo_rev_nll", "nll"), "value"])
    assert strata(raw, "demo", "exact_match") == [
        (t, 1 / 3) for t in ("demo_add", "demo_rev", "demo_copy")
    ]


def test_evaluation_failure_is_one_line_and_nonzero(tmp_path):
    broken = tmp_path / "model"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    out = tmp_path / "results.json"
    done = mergeflow(
        "evaluate",
        str(broken),
        "--output",
        str(out),
        "--include-path",
        str(TASKS),
        "--tasks",
        "demo",
        "--offline",
        cwd=tmp_path,
    )
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"mergeflow evaluate {broken}: ")
    assert not out.exists()


def test_outside_the_repo_there_are_no_demo_defaults(tmp_path):
    done = mergeflow(
        "evaluate", str(MODELS / "add"), "--output", str(tmp_path / "r.json"), cwd=tmp_path
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"mergeflow evaluate {MODELS / 'add'}: ValueError: no tasks: give tasks or a suite "
        "(open_llm_v1, open_llm_v2)"
    ]

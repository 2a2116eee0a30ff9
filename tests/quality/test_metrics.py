import json
import math
from pathlib import Path

import pytest

from mergeflow.quality.metrics import (
    COLUMNS,
    direction,
    lookup,
    metric_name,
    metrics_table,
    tidy_rows,
)

FIXTURES = Path(__file__).parent / "fixtures"


def load(name):
    return json.loads((FIXTURES / name).read_text())


def test_real_lm_eval_output_becomes_tidy_rows():
    """The shape of a real `mergeflow evaluate` run of the demo's add model (limit 20)."""
    raw = load("real_lm_eval_add.json")
    rows = {(r["task"], r["metric"]): r for r in tidy_rows(raw, "add")}
    assert set(rows) == {
        ("demo", "exact_match"),
        ("demo_add", "exact_match"),
        ("demo_rev", "exact_match"),
        ("demo_copy", "exact_match"),
        ("demo_nll", "nll"),
        ("demo_add_nll", "nll"),
        ("demo_rev_nll", "nll"),
        ("demo_copy_nll", "nll"),
    }
    add = rows[("demo_add", "exact_match")]
    assert add["value"] == raw["results"]["demo_add"]["exact_match,none"]
    assert add["stderr"] == raw["results"]["demo_add"]["exact_match_stderr,none"]
    assert add["n"] == raw["n-samples"]["demo_add"]["effective"] == 20
    assert rows[("demo", "exact_match")]["n"] == 60  # the group's sample_count
    assert {r["model"] for r in rows.values()} == {raw["config"]["model_args"]["pretrained"]}
    # Groups come first: their aggregate is the headline.
    assert [r["task"] for r in tidy_rows(raw, "add")][:2] == ["demo", "demo_nll"]


def test_na_stderr_becomes_nan_and_n_is_effective():
    raw = load("eval/base.json")
    rows = {(r["task"], r["metric"]): r for r in tidy_rows(raw, "base")}
    ppl = rows[("text_ppl", "word_perplexity")]
    assert math.isnan(ppl["stderr"]) and ppl["n"] == 20  # effective, not the original 62
    assert set(rows) >= {("text_ppl", "bits_per_byte")}


def test_filters_other_than_none_are_kept_in_the_name():
    assert metric_name("exact_match,none") == "exact_match"
    assert metric_name("exact_match,strict-match") == "exact_match,strict-match"
    raw = {
        "results": {
            "gsm": {
                "alias": "gsm",
                "exact_match,strict-match": 0.5,
                "exact_match_stderr,strict-match": 0.1,
                "exact_match,flexible-extract": 0.6,
                "exact_match_stderr,flexible-extract": 0.1,
            }
        },
        "n-samples": {"gsm": {"original": 10, "effective": 10}},
        "config": {"model_args": "pretrained=some/dir,dtype=float32"},
    }
    rows = tidy_rows(raw, "s")
    assert [r["metric"] for r in rows] == [
        "exact_match,strict-match",
        "exact_match,flexible-extract",
    ]
    assert rows[0]["model"] == "some/dir"


def with_direction(task, metric, higher):
    """A one-task results dict whose metric has the direction lm-eval recorded."""
    raw = {
        "results": {task: {f"{metric},none": 0.5, f"{metric}_stderr,none": 0.01}},
        "n-samples": {task: {"effective": 10}},
        "config": {"model_args": "pretrained=m"},
    }
    if higher is not None:
        raw["higher_is_better"] = {task: {metric: higher}}
    return raw


@pytest.mark.parametrize(
    "task, metric, higher",
    [
        # Names the old name heuristic got backwards: they say nothing about a loss...
        ("wmt16", "ter", False),
        ("polemo2", "brier_score", False),
        ("arith", "mse", False),
        ("toxigen", "toxicity", False),
        ("mc", "acc", True),
        # ...or look like one while lm-eval marks them higher-is-better.
        ("custom", "loss_reduction", True),
        ("custom", "nll_gain", True),
    ],
)
def test_direction_is_the_one_lm_eval_recorded(task, metric, higher):
    table = metrics_table([("a", with_direction(task, metric, higher))])
    assert table.higher_is_better.iloc[0] == higher
    assert direction(table, f"{task}/{metric}") is higher


def test_unknown_or_conflicting_direction_is_an_error():
    table = metrics_table([("a", with_direction("t", "score", None))])
    assert table.higher_is_better.isna().all()
    with pytest.raises(ValueError, match="recorded no higher_is_better"):
        direction(table, "t/score")
    both = metrics_table(
        [("a", with_direction("t", "score", True)), ("b", with_direction("t", "score", False))]
    )
    with pytest.raises(ValueError, match="disagree"):
        direction(both, "t/score")


def test_fixture_directions_come_from_the_results():
    table = metrics_table([(n, load(f"eval/{n}.json")) for n in ("add", "rev")])
    assert direction(table, "demo/exact_match") is True
    assert direction(table, "demo_add_nll/nll") is False
    assert direction(table, "text_ppl/word_perplexity") is False


def test_table_and_lookup():
    table = metrics_table([(n, load(f"eval/{n}.json")) for n in ("add", "rev")])
    assert list(table.columns) == COLUMNS
    value, stderr = lookup(table, "rev", "demo/exact_match")
    assert value == pytest.approx(0.60) and stderr > 0
    with pytest.raises(KeyError, match="it has: demo/exact_match"):
        lookup(table, "rev", "demo/acc")
    with pytest.raises(KeyError, match="no results"):
        lookup(table, "step9", "demo/exact_match")
    with pytest.raises(ValueError, match="TASK/METRIC"):
        lookup(table, "rev", "exact_match")

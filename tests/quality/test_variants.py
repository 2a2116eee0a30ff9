import json
import math

import pytest

from mergeflow.cli import main
from mergeflow.quality.variants import rank, select

from .conftest import node_command


def names(ranking):
    return [entry["name"] for entry in ranking]


def test_higher_is_better_ranks_descending():
    assert names(rank({"a": 0.5, "b": 0.9, "c": 0.7}, True)) == ["b", "c", "a"]


def test_lower_is_better_ranks_ascending():
    assert names(rank({"a": 0.5, "b": 0.9, "c": 0.7}, False)) == ["a", "c", "b"]
    assert names(rank({"a": 12.0, "b": 9.0}, False)) == ["b", "a"]


def test_ties_break_by_name_whatever_the_input_order():
    for values in (
        {"s--b": 0.5, "s--a": 0.5, "s--c": 0.2},
        {"s--c": 0.2, "s--a": 0.5, "s--b": 0.5},
    ):
        assert names(rank(values, True)) == ["s--a", "s--b", "s--c"]
        assert names(rank(values, False)) == ["s--c", "s--a", "s--b"]


def test_missing_values_rank_last_and_never_win():
    assert names(rank({"a": math.nan, "b": 0.1}, True)) == ["b", "a"]
    with pytest.raises(ValueError, match="no variant"):
        select("s", {"a": math.nan}, "demo/exact_match", True)


def test_select_returns_the_winner_and_the_ranking():
    result = select("s", {"s--x": 0.4, "s--y": 0.6}, "demo/exact_match", True)
    assert result == {
        "step": "s",
        "metric": "demo/exact_match",
        "higher_is_better": True,
        "selected": "s--y",
        "ranking": [{"name": "s--y", "value": 0.6}, {"name": "s--x", "value": 0.4}],
    }


def test_cli_selects_from_the_fixture_results(recipe):
    recipe()
    result = node_command("select", "step1", "out/sel.json")
    assert result["selected"] == "step1--w75"
    assert names(result["ranking"]) == ["step1--w75", "step1--w90", "step1--w50"]
    assert result["ranking"][0]["value"] == pytest.approx(0.785)


def test_cli_selection_follows_the_select_metric_direction(recipe):
    path = recipe()
    manifest = json.loads(path.read_text())
    manifest["select"]["step1"]["metric"] = "demo_add_nll/nll"
    path.write_text(json.dumps(manifest))
    result = node_command("select", "step1", "out/sel.json")
    assert result["selected"] == "step1--w90"  # nll 0.35 is lowest


def test_cli_step_without_select_entry_fails(recipe, capsys):
    recipe()
    assert (
        main(["select", "--manifest", "manifest.json", "--step", "step2", "--output", "out/x.json"])
        == 1
    )
    assert "no entry for step2" in capsys.readouterr().err

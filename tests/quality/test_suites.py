"""Suites and evaluation options, checked without lm-eval or the network."""

import pytest

from mergeflow.quality.cli import _limits, _model_args
from mergeflow.quality.evaluate import EvalOptions, merge_passes
from mergeflow.quality.suites import expand, normalise_v2, normalised


def test_open_llm_v1_expands_to_the_leaderboard_tasks_at_their_shots():
    specs = {s.name: s.num_fewshot for s in expand("open_llm_v1")}
    assert specs == {
        "arc_challenge": 25,
        "hellaswag": 10,
        "mmlu": 5,
        "truthfulqa_mc2": 0,
        "winogrande": 5,
        "gsm8k": 5,
    }


def test_open_llm_v2_and_extra_tasks():
    specs = expand("open_llm_v2", ("demo", "leaderboard_bbh"), num_fewshot=2)
    names = [s.name for s in specs]
    assert names[:6] == [
        "leaderboard_ifeval",
        "leaderboard_bbh",
        "leaderboard_math_hard",
        "leaderboard_gpqa",
        "leaderboard_musr",
        "leaderboard_mmlu_pro",
    ]
    assert names[6:] == ["demo"]  # a task the suite has runs once, at the suite's count
    shots = {s.name: s.num_fewshot for s in specs}
    assert shots["leaderboard_bbh"] == 3 and shots["leaderboard_mmlu_pro"] == 5
    assert shots["demo"] == 2
    with pytest.raises(ValueError, match="unknown suite 'open_llm_v3'"):
        expand("open_llm_v3")
    with pytest.raises(ValueError, match="no tasks"):
        expand(None)


def test_passes_group_tasks_by_shots_and_limit():
    options = EvalOptions(suite="open_llm_v1", limit=100, task_limits=(("mmlu", 0.1),))
    assert options.passes() == [
        (25, 100, ["arc_challenge"]),
        (10, 100, ["hellaswag"]),
        (5, 0.1, ["mmlu"]),
        (0, 100, ["truthfulqa_mc2"]),
        (5, 100, ["winogrande", "gsm8k"]),
    ]
    with pytest.raises(ValueError, match="not evaluated: wikitext"):
        EvalOptions(tasks=("demo",), task_limits=(("wikitext", 5),)).passes()


def test_cli_limit_and_model_args():
    assert _limits(["40"]) == (40, ())
    assert _limits(["0.5", "mmlu=200", "gsm8k=0.25"]) == (0.5, (("mmlu", 200), ("gsm8k", 0.25)))
    assert _model_args("attn_implementation=sdpa,max_length=4096") == (
        ("attn_implementation", "sdpa"),
        ("max_length", "4096"),
    )
    options = EvalOptions(tasks=("t",), dtype="bfloat16", model_args=(("dtype", "float16"),))
    assert options.hf_model_args("m") == {"pretrained": "m", "dtype": "float16"}
    with pytest.raises(ValueError, match="pretrained"):
        EvalOptions(tasks=("t",), model_args=(("pretrained", "x"),)).hf_model_args("m")


def test_passes_merge_into_one_results_dict():
    one = {"results": {"a": {"acc,none": 0.5}}, "config": {"limit": 10}, "n-shot": {"a": 0}}
    two = {"results": {"b": {"acc,none": 0.7}}, "config": {"limit": None}, "n-shot": {"b": 5}}
    merged = merge_passes([one, two])
    assert set(merged["results"]) == {"a", "b"} and merged["n-shot"] == {"a": 0, "b": 5}
    assert merged["config"]["limit"] == [10, None]


def test_v2_normalisation():
    assert normalised(0.25, 0.25) == 0 and normalised(1.0, 0.25) == 100
    assert normalised(0.1, 0.25) == 0  # below chance is 0
    assert normalised(0.625, 0.25) == pytest.approx(50)

    def mc(choices, n=4):
        return [{"arguments": [None] * choices} for _ in range(n)]

    results = {
        "group_subtasks": {
            "leaderboard_bbh": ["bbh_a", "bbh_b"],
            "leaderboard_gpqa": ["gpqa_main"],
            "leaderboard_ifeval": [],
        },
        "configs": {
            "bbh_a": {"output_type": "multiple_choice"},
            "bbh_b": {"output_type": "multiple_choice"},
            "gpqa_main": {"output_type": "multiple_choice"},
            "leaderboard_ifeval": {"output_type": "generate_until"},
        },
        "samples": {
            "bbh_a": mc(2),
            "bbh_b": mc(5),
            "gpqa_main": mc(4),
            "leaderboard_ifeval": [{"arguments": [None]}],
        },
        "results": {
            "bbh_a": {"acc_norm,none": 0.75},  # chance 1/2 → 50
            "bbh_b": {"acc_norm,none": 0.6},  # chance 1/5 → 50
            "gpqa_main": {"acc_norm,none": 0.25},  # chance → 0
            "leaderboard_ifeval": {
                "prompt_level_strict_acc,none": 0.4,
                "inst_level_strict_acc,none": 0.6,
            },
        },
    }
    scores = normalise_v2(results)
    assert scores["bbh"] == pytest.approx(50)
    assert scores["gpqa"] == pytest.approx(0)
    assert scores["ifeval"] == pytest.approx(50)  # mean of 40 and 60, generative: no chance
    assert scores["average"] == pytest.approx((50 + 0 + 50) / 3)
    assert "musr" not in scores  # not evaluated, not averaged


"""Paired tests on hand-made per-item samples whose answers are known in closed form."""

import math

import numpy as np
import pytest

from mergeflow.quality.samples import Items, compact_samples, items_of
from mergeflow.quality.statistics import (
    PERMUTATIONS,
    mcnemar,
    paired_test,
    stderr_test,
    strata,
)
from mergeflow.quality.verdicts import overall


def items(values, aggregation="mean", den=None):
    values = np.asarray(values, dtype=float)
    keys = tuple((i, f"h{i}") for i in range(len(values)))
    den = np.ones_like(values) if den is None else np.asarray(den, dtype=float)
    return Items(aggregation, keys, values, den)


def test_mcnemar_exact_p_and_interval():
    # 8 items only the step gets right, 1 only the parent, 11 both or neither.
    a = np.array([1] * 8 + [0] * 1 + [1] * 5 + [0] * 6)
    b = np.array([0] * 8 + [1] * 1 + [1] * 5 + [0] * 6)
    low, high, p = mcnemar(a, b, 0.95)
    assert p == pytest.approx(2 * (1 + 9) / 2**9)  # 2 · P(X ≤ 1), X ~ Bin(9, ½) = 0.0390625
    assert 0 < low < (8 - 1) / 20 < high  # significant at 95%: the interval excludes 0
    _, high99, p99 = mcnemar(a, b, 0.99)
    assert p99 == p and high99 > high
    assert mcnemar(a, a, 0.95) == (0.0, 0.0, 1.0)  # no discordant item: no difference


def test_interval_and_exact_test_agree():
    for wins, losses in [(5, 0), (6, 0), (9, 2), (10, 2), (30, 18), (31, 18)]:
        a = np.array([1] * wins + [0] * losses)
        low, _, p = mcnemar(a, 1 - a, 0.95)
        assert (p < 0.05) == (low > 0)


def test_constant_paired_differences():
    """Every item moves by the same amount: the interval is that point; no swap of the two
    models is as extreme except the one that swaps back (n=12: exact p = 2 / 2¹²)."""
    base = np.linspace(0.5, 1.5, 12)
    result = paired_test([(items(base + 0.1), 1.0)], [(items(base), 1.0)], 0.95, seed=1)
    assert result.method == "permutation"
    assert result.ci_low == pytest.approx(0.1) and result.ci_high == pytest.approx(0.1)
    assert result.p_value < 0.01
    assert result.p_value == pytest.approx(2 / 2**12, abs=3 / math.sqrt(PERMUTATIONS) * 0.05)


def test_no_difference_is_zero_with_p_one():
    same = items([0.3, 0.1, 0.7])
    result = paired_test([(same, 1.0)], [(same, 1.0)], 0.95, seed=0)
    assert (result.ci_low, result.ci_high, result.p_value) == (0.0, 0.0, 1.0)


def test_same_seed_same_answer_and_items_are_aligned_by_id():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=50), rng.normal(size=50) + 0.2
    first = paired_test([(items(a), 1.0)], [(items(b), 1.0)], 0.95, seed=7)
    again = paired_test([(items(a), 1.0)], [(items(b), 1.0)], 0.95, seed=7)
    assert first == again
    # The parent's items in another order are paired by document, not by position.
    shuffled = items(b)
    order = np.arange(50)[::-1]
    shuffled = Items("mean", tuple(shuffled.keys[i] for i in order), b[order], np.ones(50))
    assert paired_test([(items(a), 1.0)], [(shuffled, 1.0)], 0.95, seed=7) == first


def test_weighted_perplexity_is_reaggregated_per_resample():
    """word_perplexity = exp(−Σ loglikelihood / Σ words): a lower loglikelihood on every item
    is a higher perplexity, tested as such."""
    words = np.array([10, 20, 30, 40] * 5, dtype=float)
    ll = -words * 2.0
    worse = items(ll - words * 0.1, "weighted_perplexity", words)
    better = items(ll, "weighted_perplexity", words)
    result = paired_test([(worse, 1.0)], [(better, 1.0)], 0.95, seed=3)
    delta = math.exp(2.1) - math.exp(2.0)
    assert result.ci_low == pytest.approx(delta) and result.ci_high == pytest.approx(delta)
    assert result.p_value < 0.001


def test_stderr_fallback_is_the_normal_approximation():
    result = stderr_test(0.1, 0.03, 0.04, 0.95, "no per-item samples")
    assert result.method == "stderr" and result.note == "no per-item samples"
    assert result.p_value == pytest.approx(0.0455, abs=1e-4)  # z = 0.1 / 0.05 = 2
    assert result.ci_low == pytest.approx(0.1 - 1.959964 * 0.05)
    assert stderr_test(0.1, math.nan, 0.04, 0.95, "").method == "none"


def test_group_weights_are_read_off_lm_evals_numbers():
    raw = {
        "group_subtasks": {"g": ["a", "b"], "a": [], "b": []},
        "results": {
            "g": {"acc,none": 0.5},
            "a": {"acc,none": 0.4},
            "b": {"acc,none": 0.6},
        },
        "n-samples": {"a": {"effective": 10}, "b": {"effective": 30}},
    }
    assert strata(raw, "g", "acc") == [("a", 0.5), ("b", 0.5)]  # plain mean
    raw["results"]["g"]["acc,none"] = 0.55  # (0.4·10 + 0.6·30) / 40
    assert strata(raw, "g", "acc") == [("a", 0.25), ("b", 0.75)]
    raw["results"]["g"]["acc,none"] = 0.9  # neither: no paired test
    assert strata(raw, "g", "acc") is None
    assert strata(raw, "a", "acc") == [("a", 1.0)]


def test_lm_eval_samples_are_kept_compact():
    results = {
        "configs": {"t": {"metric_list": [{"metric": "acc", "aggregation": "mean"}]}},
        "samples": {
            "t": [
                {"doc_id": i, "doc_hash": f"h{i}", "filter": "none", "metrics": ["acc"], "acc": v}
                for i, v in enumerate([1.0, 0.0, True])
            ]
            + [],
            "ppl": [
                {
                    "doc_id": 0,
                    "doc_hash": "x",
                    "filter": "none",
                    "metrics": ["word_perplexity", "bleu"],
                    "word_perplexity": (-12.5, 5),
                    "bleu": ("ref", "pred"),  # corpus-level: cannot be re-aggregated per item
                }
            ],
        },
    }
    compact = compact_samples(results)
    assert compact["t"]["acc,none"]["values"] == [1.0, 0.0, 1.0]
    assert compact["t"]["acc,none"]["aggregation"] == "mean"
    assert compact["ppl"]["word_perplexity,none"]["aggregation"] == "weighted_perplexity"
    assert "bleu,none" not in compact["ppl"]
    ppl = items_of({"mergeflow_samples": compact}, "ppl", "word_perplexity")
    assert ppl.num.tolist() == [-12.5] and ppl.den.tolist() == [5.0]


@pytest.mark.parametrize(
    "statuses, base, text, css",
    [
        ({"a": "better", "b": "better"}, None, "better than every parent", "better"),
        # Within noise of the step it builds on is not green, whatever the other parent says.
        (
            {"s1": "within noise", "c": "better"},
            "s1",
            "within noise of s1; better than c",
            "neutral",
        ),
        (
            {"s1": "better", "c": "within noise"},
            "s1",
            "better than s1; within noise of c",
            "better",
        ),
        ({"s1": "worse", "c": "better"}, "s1", "worse than s1; better than c", "worse"),
        ({"s1": "better", "c": "worse"}, "s1", "better than s1; worse than c", "mixed"),
        ({"s1": "within noise", "c": "worse"}, "s1", "within noise of s1; worse than c", "worse"),
        # Without a step to build on: better than one input and level with the other is neutral.
        ({"a": "better", "b": "within noise"}, None, "better than a; within noise of b", "neutral"),
        ({"a": "better", "b": "worse"}, None, "better than a; worse than b", "mixed"),
        ({"a": "within noise", "b": "within noise"}, None, "within noise of a, b", "neutral"),
        ({}, None, "no comparable parent", "neutral"),
    ],
)
def test_verdict_colours(statuses, base, text, css):
    assert overall(statuses, base) == (text, css)

"""Standard evaluation suites: the Open LLM Leaderboard task sets, by name.

``evaluation.suite: open_llm_v1`` (or ``--suite``) expands to the tasks of the first Open LLM
Leaderboard with their few-shot counts; ``open_llm_v2`` to the second's, whose scores are also
normalised the way the leaderboard does (:func:`normalise_v2`). lm-eval runs these tasks from
the Hub's datasets (or a warm datasets cache): they need the network the first time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TaskSpec:
    """One lm-eval task (or group) with the few-shot count the suite evaluates it at."""

    name: str
    num_fewshot: int | None = None


# The first leaderboard (2023-2024): six tasks at their published few-shot counts.
OPEN_LLM_V1 = (
    TaskSpec("arc_challenge", 25),
    TaskSpec("hellaswag", 10),
    TaskSpec("mmlu", 5),
    TaskSpec("truthfulqa_mc2", 0),
    TaskSpec("winogrande", 5),
    TaskSpec("gsm8k", 5),
)

# The second leaderboard (2024-2025): lm-eval's leaderboard_* groups, at the few-shot counts of
# their own task configs (which the leaderboard used).
OPEN_LLM_V2 = (
    TaskSpec("leaderboard_ifeval", 0),
    TaskSpec("leaderboard_bbh", 3),
    TaskSpec("leaderboard_math_hard", 4),
    TaskSpec("leaderboard_gpqa", 0),
    TaskSpec("leaderboard_musr", 0),
    TaskSpec("leaderboard_mmlu_pro", 5),
)

SUITES = {"open_llm_v1": OPEN_LLM_V1, "open_llm_v2": OPEN_LLM_V2}


def expand(
    suite: str | None, tasks: tuple[str, ...] = (), num_fewshot: int | None = None
) -> list[TaskSpec]:
    """The suite's tasks, then the plain ``tasks`` (at ``num_fewshot``, or each task's default);
    a task named twice runs once, at the suite's count."""
    if suite is not None and suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; known: {', '.join(SUITES)}")
    specs = list(SUITES.get(suite, ()))
    names = {s.name for s in specs}
    specs += [TaskSpec(t, num_fewshot) for t in dict.fromkeys(tasks) if t not in names]
    if not specs:
        raise ValueError("no tasks: give tasks or a suite (open_llm_v1, open_llm_v2)")
    return specs


# --------------------------------------------------------------------------- v2 normalisation

# (benchmark, lm-eval group, metric) of the second leaderboard's six scores.
V2_SCORES = (
    ("ifeval", "leaderboard_ifeval", ("prompt_level_strict_acc", "inst_level_strict_acc")),
    ("bbh", "leaderboard_bbh", ("acc_norm",)),
    ("math_hard", "leaderboard_math_hard", ("exact_match",)),
    ("gpqa", "leaderboard_gpqa", ("acc_norm",)),
    ("musr", "leaderboard_musr", ("acc_norm",)),
    ("mmlu_pro", "leaderboard_mmlu_pro", ("acc",)),
)
V2_TASK = "open_llm_v2"


def normalised(score: float, baseline: float) -> float:
    """The leaderboard's rescaling: random guessing is 0, a perfect score 100, below chance 0."""
    if baseline >= 1:
        return 0.0
    return max(0.0, (score - baseline) / (1 - baseline)) * 100


def chance_levels(results: dict[str, Any]) -> dict[str, float]:
    """Each multiple-choice task's score by random guessing: the mean over its items of
    1 / number of choices (one loglikelihood request per choice in lm-eval's logged samples).
    Generative tasks have chance 0."""
    levels = {}
    for task, examples in (results.get("samples") or {}).items():
        output = results.get("configs", {}).get(task, {}).get("output_type")
        if output == "multiple_choice" and examples:
            levels[task] = sum(1 / max(1, len(e.get("arguments", []))) for e in examples) / len(
                examples
            )
        else:
            levels[task] = 0.0
    return levels


def _leaves(results: dict[str, Any], task: str) -> list[str]:
    groups = results.get("group_subtasks", {})
    if not groups.get(task):
        return [task]
    return [leaf for child in groups[task] for leaf in _leaves(results, child)]


def _value(results: dict[str, Any], task: str, metric: str) -> float | None:
    entries = results.get("results", {}).get(task, {})
    for key, value in entries.items():
        if key.split(",", 1)[0] == metric and "_stderr" not in key:
            try:
                return float(value)
            except (TypeError, ValueError):
                return None
    return None


def normalise_v2(results: dict[str, Any]) -> dict[str, float]:
    """The second leaderboard's normalised scores (0-100) and their average.

    As the leaderboard documents it: each subtask's score is rescaled so that its random-guess
    level (1/choices for multiple choice, 0 for generation) maps to 0 and a perfect score to 100,
    clipped at 0; a benchmark's score is the mean of its subtasks' normalised scores (BBH, MUSR,
    MATH, GPQA, MMLU-Pro); IFEval's is the mean of its prompt-level and instruction-level strict
    accuracies. ``average`` is the mean of the benchmarks present. Needs the logged samples (for
    the choice counts), so it runs inside ``mergeflow evaluate``.
    """
    chance = chance_levels(results)
    scores: dict[str, float] = {}
    for name, group, metrics in V2_SCORES:
        parts = []
        for metric in metrics:
            for leaf in _leaves(results, group):
                value = _value(results, leaf, metric)
                if value is not None:
                    parts.append(normalised(value, chance.get(leaf, 0.0)))
        if parts:
            scores[name] = sum(parts) / len(parts)
    if scores:
        scores["average"] = sum(scores.values()) / len(scores)
    return scores


def add_v2_scores(results: dict[str, Any]) -> None:
    """Record :func:`normalise_v2` as an ``open_llm_v2`` task of the results, so that reports,
    gates and selections can use ``open_llm_v2/average`` like any metric (higher is better)."""
    scores = normalise_v2(results)
    if not scores:
        return
    results.setdefault("results", {})[V2_TASK] = {
        "alias": "Open LLM Leaderboard v2 (normalised)",
        **{f"{name},none": value for name, value in scores.items()},
        **{f"{name}_stderr,none": "N/A" for name in scores},
    }
    results.setdefault("higher_is_better", {})[V2_TASK] = {name: True for name in scores}

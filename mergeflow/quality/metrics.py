"""Raw lm-eval results → one tidy table, and the facts every consumer of it needs.

The gate, the variant ranking and the report all read metrics through :func:`tidy_rows` and
:func:`lookup`, so "which number is demo/exact_match of step1" has exactly one answer.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import pandas as pd

COLUMNS = ["step", "model", "task", "metric", "value", "stderr", "n"]

# Substrings that mark a loss-like metric, for which lower is better. Every other metric
# (accuracy, exact match, F1, BLEU...) is higher-is-better.
LOWER_IS_BETTER = ("perplexity", "bits_per_byte", "loss", "nll")


def higher_is_better(metric: str) -> bool:
    """Direction of a metric, from its name alone, so that fixtures and gates agree with it."""
    return not any(marker in metric for marker in LOWER_IS_BETTER)


def spec_higher_is_better(spec: str) -> bool:
    """Direction of a ``TASK/METRIC``: its metric part decides (a task named ``*_loss`` may
    still be scored by accuracy)."""
    return higher_is_better(split_spec(spec)[1])


def improvement(delta: float, metric: str) -> float:
    """A delta turned so that positive always means better."""
    return delta if higher_is_better(metric) else -delta


def metric_name(key: str) -> str:
    """``exact_match,none`` → ``exact_match``; another filter stays (``exact_match,strict-match``)
    because two filters of one metric are two different numbers."""
    return key[: -len(",none")] if key.endswith(",none") else key


def model_label(raw: dict[str, Any]) -> str:
    """What lm-eval evaluated: the ``pretrained`` path when it recorded one."""
    args = raw.get("config", {}).get("model_args", "")
    if isinstance(args, dict):
        return str(args.get("pretrained", ""))
    for part in str(args).split(","):
        if part.startswith("pretrained="):
            return part[len("pretrained=") :]
    return str(args)


def _as_float(value: Any) -> float:
    """lm-eval writes ``"N/A"`` where it has no stderr (perplexities); that becomes NaN."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def tidy_rows(raw: dict[str, Any], step: str) -> list[dict[str, Any]]:
    """One row per (task, metric) of an lm-eval results dict.

    Metric keys are the ``metric,filter`` entries (the comma tells them from ``alias`` or
    ``sample_len``). ``n`` is the number of documents actually scored: ``n-samples.effective``
    for a task, the ``sample_count`` lm-eval records for a group aggregate.
    """
    model = model_label(raw)
    n_samples = raw.get("n-samples", {})
    groups = raw.get("group_subtasks", {})
    results = raw.get("results", {})
    rows = []
    # Groups first: their aggregate is the number a reader looks for before the subtasks.
    for task in sorted(results, key=lambda t: t not in groups):
        entries = results[task]
        for key, value in entries.items():
            if "," not in key or "_stderr," in key or isinstance(value, (dict, list, str)):
                continue
            metric, filt = key.split(",", 1)
            if key in entries.get("sample_count", {}):
                n = entries["sample_count"][key]
            else:
                n = n_samples.get(task, {}).get("effective")
            rows.append(
                {
                    "step": step,
                    "model": model,
                    "task": task,
                    "metric": metric_name(key),
                    "value": float(value),
                    "stderr": _as_float(entries.get(f"{metric}_stderr,{filt}")),
                    "n": n,
                }
            )
    return rows


def metrics_table(results: Iterable[tuple[str, dict[str, Any]]]) -> pd.DataFrame:
    """Tidy table of several nodes' results, in the given node order."""
    rows = [row for step, raw in results for row in tidy_rows(raw, step)]
    table = pd.DataFrame(rows, columns=COLUMNS)
    table["n"] = table["n"].astype("Int64")
    return table


def split_spec(spec: str) -> tuple[str, str]:
    """``demo/exact_match`` → (task ``demo``, metric ``exact_match``)."""
    task, sep, metric = spec.rpartition("/")
    if not sep or not task or not metric:
        raise ValueError(f"metric {spec!r} must be written TASK/METRIC, e.g. demo/exact_match")
    return task, metric


def lookup(table: pd.DataFrame, step: str, spec: str) -> tuple[float, float]:
    """(value, stderr) of ``TASK/METRIC`` for one node; a KeyError names what is there instead."""
    task, metric = split_spec(spec)
    hit = table[(table.step == step) & (table.task == task) & (table.metric == metric)]
    if hit.empty:
        have = table[table.step == step]
        if have.empty:
            raise KeyError(f"{step} has no results (not evaluated, or no variant selected yet)")
        known = ", ".join(sorted(f"{t}/{m}" for t, m in zip(have.task, have.metric)))
        raise KeyError(f"{step} has no {spec} in its results (it has: {known})")
    row = hit.iloc[0]
    return float(row.value), float(row.stderr)

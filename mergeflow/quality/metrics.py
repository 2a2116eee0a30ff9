"""Raw lm-eval results → one tidy table, and the facts every consumer of it needs.

The gate, the variant ranking and the report all read metrics through :func:`tidy_rows` and
:func:`lookup`, so "which number is demo/exact_match of step1" has exactly one answer.

A metric's direction is the ``higher_is_better`` lm-eval records in its results for every task
and metric (from the task's ``metric_list`` or the metric's registered default); nothing is
guessed from a metric's name, since names like ``ter`` or ``brier_score`` are lower-is-better
without saying so. A metric lm-eval records no direction for has ``higher_is_better`` None, and
every decision that needs a direction (gate, selection, verdicts) refuses it with one line.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import pandas as pd

COLUMNS = ["step", "model", "task", "metric", "value", "stderr", "n", "higher_is_better"]


def recorded_direction(raw: dict[str, Any], task: str, key: str) -> bool | None:
    """lm-eval's ``higher_is_better`` of one ``metric,filter`` key of ``task`` (None if absent).

    lm-eval keys the directions by the bare metric name, so every filter of a metric shares it.
    """
    value = raw.get("higher_is_better", {}).get(task, {}).get(key.split(",", 1)[0])
    return None if value is None else bool(value)


def improvement(delta: float, higher: bool) -> float:
    """A delta turned so that positive always means better."""
    return delta if higher else -delta


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
                    "higher_is_better": recorded_direction(raw, task, key),
                }
            )
    return rows


def metrics_table(results: Iterable[tuple[str, dict[str, Any]]]) -> pd.DataFrame:
    """Tidy table of several nodes' results, in the given node order."""
    rows = [row for step, raw in results for row in tidy_rows(raw, step)]
    table = pd.DataFrame(rows, columns=COLUMNS)
    table["n"] = table["n"].astype("Int64")
    table["higher_is_better"] = table["higher_is_better"].astype("boolean")
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


def direction(table: pd.DataFrame, spec: str) -> bool:
    """``higher_is_better`` of ``TASK/METRIC`` as lm-eval recorded it for the nodes in ``table``.

    A ValueError names the metric when lm-eval recorded no direction for it, or when two nodes'
    results disagree (two lm-eval versions, or an edited task): a gate or a ranking must not
    silently pick one.
    """
    task, metric = split_spec(spec)
    recorded = table[(table.task == task) & (table.metric == metric)].higher_is_better
    known = set(recorded.dropna().astype(bool))
    if len(known) > 1:
        raise ValueError(f"{spec}: the results disagree on whether higher is better")
    if not known:
        if recorded.empty:
            raise KeyError(f"no node has {spec} in its results")
        raise ValueError(f"{spec}: lm-eval recorded no higher_is_better for it")
    return known.pop()

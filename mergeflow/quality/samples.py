"""Per-item scores: what lm-eval logs with ``log_samples``, kept compact for paired statistics.

Every model is evaluated on the same items, so two models can be compared item by item (see
:mod:`mergeflow.quality.statistics`). lm-eval's logged samples carry the documents, prompts and
responses too (megabytes per task); ``mergeflow evaluate`` keeps only what a paired test needs,
under ``mergeflow_samples`` in its results JSON::

    {TASK: {"METRIC,FILTER": {"aggregation": "mean",          # lm-eval's aggregation name
                              "doc_ids": [0, 1, ...],
                              "doc_hashes": ["ab12...", ...],  # lm-eval's hash of each document
                              "values": [1.0, 0.0, ...]}}}     # per item; [num, den] pairs for
                                                               # weighted aggregations
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

KEY = "mergeflow_samples"

# The aggregations a paired test can recompute from per-item values: each is g(Σnum / Σden)
# over the items, with (num, den) = (value, 1) for a scalar value.
AGGREGATIONS = {
    "mean": lambda x: x,
    "perplexity": lambda x: np.exp(-x),
    "weighted_perplexity": lambda x: np.exp(-x),
    "bits_per_byte": lambda x: -x / np.log(2),
}


def _aggregation_name(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    return getattr(value, "__name__", None)


def _aggregations(results: dict[str, Any], task: str) -> dict[str, str | None]:
    """Each metric's aggregation, from the task config lm-eval records, else its registry."""
    names = {}
    for entry in results.get("configs", {}).get(task, {}).get("metric_list") or []:
        if isinstance(entry, dict) and "metric" in entry:
            names[str(entry["metric"])] = _aggregation_name(entry.get("aggregation"))
    return names


def _registered_aggregation(metric: str) -> str | None:
    try:
        from lm_eval.api.registry import get_metric_aggregation

        return _aggregation_name(get_metric_aggregation(metric))
    except Exception:  # noqa: BLE001 - an unregistered metric just has no known aggregation
        return None


def _item_value(value: Any) -> float | list[float] | None:
    """A per-item score as JSON: a number, or a (num, den) pair; anything else (the strings
    corpus metrics like BLEU log) is not kept."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float, np.floating, np.integer)):
        return float(value)
    if isinstance(value, (list, tuple)) and len(value) == 2:
        try:
            return [float(value[0]), float(value[1])]
        except (TypeError, ValueError):
            return None
    return None


def compact_samples(results: dict[str, Any]) -> dict[str, Any]:
    """lm-eval's ``results["samples"]`` reduced to per-item scores (see the module docstring)."""
    out: dict[str, Any] = {}
    for task, examples in (results.get("samples") or {}).items():
        aggregations = _aggregations(results, task)
        metrics: dict[str, dict[str, Any]] = {}
        for example in examples:
            for metric in example.get("metrics", []):
                value = _item_value(example.get(metric))
                key = f"{metric},{example.get('filter', 'none')}"
                if value is None or metrics.get(key, {}).get("dropped"):
                    metrics.setdefault(key, {})["dropped"] = True
                    continue
                entry = metrics.setdefault(key, {"doc_ids": [], "doc_hashes": [], "values": []})
                entry["doc_ids"].append(example.get("doc_id"))
                entry["doc_hashes"].append(example.get("doc_hash"))
                entry["values"].append(value)
        kept = {}
        for key, entry in metrics.items():
            if entry.get("dropped"):
                continue
            metric = key.split(",", 1)[0]
            name = aggregations.get(metric) or _registered_aggregation(metric)
            kept[key] = {"aggregation": name, **entry}
        if kept:
            out[task] = kept
    return out


@dataclass(frozen=True)
class Items:
    """One model's per-item scores on one task metric, as a ratio estimator's parts."""

    aggregation: str | None
    keys: tuple  # (doc_id, doc_hash) per item: two models are paired only on the same items
    num: np.ndarray
    den: np.ndarray

    def aligned(self, order: tuple) -> Items:
        index = {key: i for i, key in enumerate(self.keys)}
        take = np.array([index[key] for key in order], dtype=np.int64)
        return Items(self.aggregation, order, self.num[take], self.den[take])

    @property
    def binary(self) -> bool:
        return bool(np.all(self.den == 1) and np.all((self.num == 0) | (self.num == 1)))


def items_of(raw: dict[str, Any], task: str, metric: str) -> Items | None:
    """The per-item scores of ``task``'s ``metric`` (our tidy name, e.g. ``exact_match`` or
    ``exact_match,strict-match``) in one node's results, or None where none were logged."""
    key = metric if "," in metric else f"{metric},none"
    entry = (raw.get(KEY) or {}).get(task, {}).get(key)
    if not entry or not entry.get("values"):
        return None
    values = entry["values"]
    if isinstance(values[0], list):
        num = np.array([v[0] for v in values], dtype=np.float64)
        den = np.array([v[1] for v in values], dtype=np.float64)
    else:
        num = np.asarray(values, dtype=np.float64)
        den = np.ones_like(num)
    hashes = entry.get("doc_hashes") or [None] * len(values)
    keys = tuple(zip(entry["doc_ids"], hashes))
    return Items(entry.get("aggregation"), keys, num, den)

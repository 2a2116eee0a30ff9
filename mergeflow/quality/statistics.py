"""Is a step's change against a parent real? Paired tests on the items both were scored on.

Every model of a recipe is evaluated on the same items, so the comparison is paired: per item,
the two scores differ by the merge, not by which items were drawn. That removes the between-item
spread from the noise, and makes a paired test both sounder and far more sensitive than
comparing two stderrs.

For each (step, parent, task, metric):

- **delta**: step minus parent, as in the metrics table;
- for a 0/1 metric averaged over items (accuracy, exact match; also a group of such tasks
  weighted by size): the **exact McNemar test** (two-sided binomial test on the d items where
  exactly one model is right), and as its interval the exact Clopper-Pearson interval of the
  share of those d items the step wins, turned into a difference (× d/n, 2π − 1), so that
  interval and test always agree;
- for every other metric (continuous scores, perplexities and bits-per-byte, groups with equal
  weights): a **paired bootstrap** interval (``BOOTSTRAP`` resamples of the items, the same items
  for both models, percentile interval; a group resampled within each subtask and re-aggregated
  with the weights lm-eval used, equal or by size, read off its recorded numbers) and a **paired
  permutation test** (``PERMUTATIONS`` random swaps of the two models' scores per item,
  two-sided), both re-aggregating items as lm-eval does;
- **significant** when p < 1 − level.

Only where per-item samples are missing (results from before ``log_samples``, or metrics whose
items cannot be re-aggregated, like corpus BLEU) the unpaired view is used: the normal
approximation with the combined stderr √(se₁² + se₂²), and the method column says so. Without a
stderr either (lm-eval's "N/A" for perplexities) nothing is tested and nothing is flagged.

Everything is seeded from the names compared, so a report is reproducible byte for byte.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, Iterable

import numpy as np
import pandas as pd

from mergeflow.quality.defaults import DEFAULT_LEVEL
from mergeflow.quality.metrics import improvement
from mergeflow.quality.samples import AGGREGATIONS, Items, items_of

BOOTSTRAP = 2000
PERMUTATIONS = 2000

METHODS = {
    "mcnemar": "paired: exact McNemar test, exact (Clopper-Pearson) CI over the items the two "
    "models score differently",
    "permutation": "paired: permutation test (2000 swaps), CI by paired bootstrap (2000 resamples)",
    "stderr": "unpaired: normal approximation from the two stderrs (no per-item samples)",
    "none": "not tested: no per-item samples and no stderr",
}

COLUMNS = [
    "step",
    "parent",
    "task",
    "metric",
    "higher_is_better",
    "value",
    "stderr",
    "parent_value",
    "parent_stderr",
    "delta",
    "ci_low",
    "ci_high",
    "p_value",
    "n_paired",
    "method",
    "note",
    "significant",
    "status",
]


@dataclass(frozen=True)
class Test:
    """The outcome of one comparison: CI bounds and p-value of ``delta`` (NaN where untested)."""

    ci_low: float
    ci_high: float
    p_value: float
    method: str
    n_paired: int = 0
    note: str = ""


def seed_of(*names: str) -> int:
    """A seed from the names compared: the same comparison gets the same resamples anywhere."""
    return int.from_bytes(hashlib.sha256("\0".join(names).encode()).digest()[:8], "little")


# --------------------------------------------------------------------------- strata


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))


def strata(raw: dict[str, Any], task: str, metric: str) -> list[tuple[str, float]] | None:
    """The leaf tasks a metric is aggregated from, with their weights (summing to 1).

    A task is its own single stratum. A group's weights are read off the numbers lm-eval wrote:
    the group's value is either the plain mean of its subtasks' or their size-weighted mean
    (lm-eval's ``weight_by_size``); if it is neither, None (no paired test for it).
    """
    groups = raw.get("group_subtasks", {})
    if not groups.get(task):  # lm-eval lists plain tasks with no subtasks
        return [(task, 1.0)]
    key = metric if "," in metric else f"{metric},none"
    results = raw.get("results", {})
    children = [c for c in groups[task] if key in results.get(c, {})]
    if not children or key not in results.get(task, {}):
        return None
    values = [float(results[c][key]) for c in children]
    sizes = [float(_size(raw, c, key)) for c in children]
    target = float(results[task][key])
    if _close(target, sum(values) / len(values)):
        weights = [1.0 / len(children)] * len(children)
    elif sum(sizes) and _close(target, sum(v * n for v, n in zip(values, sizes)) / sum(sizes)):
        weights = [n / sum(sizes) for n in sizes]
    else:
        return None
    out = []
    for child, weight in zip(children, weights):
        inner = strata(raw, child, metric)
        if inner is None:
            return None
        out += [(leaf, weight * w) for leaf, w in inner]
    return out


def _size(raw: dict[str, Any], task: str, key: str) -> int:
    entries = raw.get("results", {}).get(task, {})
    if key in entries.get("sample_count", {}):
        return int(entries["sample_count"][key])
    return int(raw.get("n-samples", {}).get(task, {}).get("effective") or 0)


# --------------------------------------------------------------------------- the tests


def _stat(items: Items, index: np.ndarray | None = None) -> np.ndarray:
    """The aggregate of ``items`` (resampled by ``index``, one row per resample)."""
    transform = AGGREGATIONS[items.aggregation]
    if index is None:
        return transform(items.num.sum() / items.den.sum())
    return transform(items.num[index].sum(axis=-1) / items.den[index].sum(axis=-1))


def mcnemar(a: np.ndarray, b: np.ndarray, level: float) -> tuple[float, float, float]:
    """Exact McNemar test of paired 0/1 scores: (CI low, CI high, two-sided p) of mean(a − b).

    Of the d discordant items the step wins w; under "no difference" w ~ Binomial(d, ½). The
    interval is Clopper-Pearson's for the share π of wins, as the difference d/n · (2π − 1); it
    excludes 0 exactly when p < 1 − level.
    """
    from scipy.special import bdtr, betaincinv  # scipy.special imports in a tenth of scipy.stats

    wins, losses = int(np.sum((a == 1) & (b == 0))), int(np.sum((a == 0) & (b == 1)))
    d, n = wins + losses, len(a)
    if d == 0:
        return 0.0, 0.0, 1.0
    p = min(1.0, 2 * float(bdtr(min(wins, losses), d, 0.5)))
    alpha = 1 - level
    low = float(betaincinv(wins, losses + 1, alpha / 2)) if wins else 0.0
    high = float(betaincinv(wins + 1, losses, 1 - alpha / 2)) if losses else 1.0
    return d / n * (2 * low - 1), d / n * (2 * high - 1), p


def _rows(n: int, total: int, budget: int = 2_000_000) -> Iterable[int]:
    """Resample counts per chunk, so that a chunk's index matrix stays within ``budget``."""
    step = max(1, budget // max(n, 1))
    for start in range(0, total, step):
        yield min(step, total - start)


def paired_test(
    mine: list[tuple[Items, float]],
    theirs: list[tuple[Items, float]],
    level: float,
    seed: int,
) -> Test:
    """The paired test of Σ wₛ·aggₛ(mine) − Σ wₛ·aggₛ(theirs) over strata ``s``.

    Both sides must hold the same items in each stratum (aligned here by document id and hash).
    """
    rng = np.random.default_rng(seed)
    alpha = 1 - level
    pairs = [(a, b.aligned(a.keys), w) for (a, w), (b, _) in zip(mine, theirs)]
    n = sum(len(a.keys) for a, _, _ in pairs)
    sizes = np.array([len(a.keys) for a, _, _ in pairs], dtype=float)
    weights = np.array([w for _, _, w in pairs])
    pooled = len(pairs) == 1 or np.allclose(weights, sizes / sizes.sum())
    if pooled and all(a.binary and b.binary for a, b, _ in pairs):
        num_a = np.concatenate([a.num for a, _, _ in pairs])
        num_b = np.concatenate([b.num for _, b, _ in pairs])
        return Test(*mcnemar(num_a, num_b, level), "mcnemar", n)
    if all(np.array_equal(a.num, b.num) and np.array_equal(a.den, b.den) for a, b, _ in pairs):
        return Test(0.0, 0.0, 1.0, "permutation", n)
    boot = np.zeros(BOOTSTRAP)
    for a, b, w in pairs:
        filled = 0
        for rows in _rows(len(a.keys), BOOTSTRAP):
            index = rng.integers(0, len(a.keys), size=(rows, len(a.keys)))
            boot[filled : filled + rows] += w * (_stat(a, index) - _stat(b, index))
            filled += rows
    low, high = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    observed = sum(w * (_stat(a) - _stat(b)) for a, b, w in pairs)
    swapped = np.zeros(PERMUTATIONS)
    for a, b, w in pairs:
        filled = 0
        for rows in _rows(len(a.keys), PERMUTATIONS):
            swap = rng.integers(0, 2, size=(rows, len(a.keys))).astype(bool)
            transform = AGGREGATIONS[a.aggregation]

            def agg(num_x, num_y, den_x, den_y, flip=swap):
                num = np.where(flip, num_y, num_x).sum(axis=1)
                return transform(num / np.where(flip, den_y, den_x).sum(axis=1))

            swapped[filled : filled + rows] += w * (
                agg(a.num, b.num, a.den, b.den) - agg(b.num, a.num, b.den, a.den)
            )
            filled += rows
    tolerance = 1e-12 * max(1.0, abs(observed))
    extreme = int(np.sum(np.abs(swapped) >= abs(observed) - tolerance))
    return Test(float(low), float(high), (1 + extreme) / (PERMUTATIONS + 1), "permutation", n)


def stderr_test(delta: float, se: float, parent_se: float, level: float, note: str) -> Test:
    """The unpaired fallback: normal approximation with the combined stderr."""
    noise = math.hypot(se, parent_se)
    if math.isnan(noise):
        return Test(math.nan, math.nan, math.nan, "none", 0, note)
    z = NormalDist().inv_cdf(1 - (1 - level) / 2)
    if noise == 0:
        p = 1.0 if delta == 0 else 0.0
    else:
        p = 2 * (1 - NormalDist().cdf(abs(delta) / noise))
    return Test(delta - z * noise, delta + z * noise, p, "stderr", 0, note)


def sample_strata(
    raw: dict[str, Any], task: str, metric: str
) -> tuple[list[tuple[Items, float]] | None, str]:
    """Per-item scores of every stratum of ``task``'s ``metric``, or None and why not."""
    parts = strata(raw, task, metric)
    if parts is None:
        return None, "group weights unknown"
    out = []
    for leaf, weight in parts:
        items = items_of(raw, leaf, metric)
        if items is None:
            return None, "no per-item samples"
        if items.aggregation not in AGGREGATIONS:
            return None, f"aggregation {items.aggregation} not recomputable per item"
        out.append((items, weight))
    return out, ""


def best_test(
    mine: dict[str, Any],
    theirs: dict[str, Any],
    row: Any,
    level: float,
    names: tuple[str, str],
) -> Test:
    """The best available test of one comparison row (paired where both have samples)."""
    a, why = sample_strata(mine, row.task, row.metric)
    b, why_b = sample_strata(theirs, row.task, row.metric)
    note = why or why_b
    if a is not None and b is not None:
        same = len(a) == len(b) and all(
            set(x.keys) == set(y.keys) and x.aggregation == y.aggregation
            for (x, _), (y, _) in zip(a, b)
        )
        if same:
            return paired_test(a, b, level, seed_of(*names, row.task, row.metric))
        note = "the two were scored on different items"
    return stderr_test(row.delta, row.stderr, row.parent_stderr, level, note)


def verdict_of(significant: bool, delta: float, higher: Any, method: str) -> str:
    if method == "none":
        return "no stderr"
    if not significant:
        return "within noise"
    if higher is None or pd.isna(higher):
        return "changed (direction unknown)"
    return "better" if improvement(delta, bool(higher)) > 0 else "worse"


def compare_pairs(
    table: pd.DataFrame,
    results: dict[str, dict[str, Any]],
    pairs: list[tuple[str, str]],
    level: float = DEFAULT_LEVEL,
) -> pd.DataFrame:
    """Every metric of ``step`` against the same metric of ``parent``, for each (step, parent).

    ``results`` are the nodes' raw results (with their per-item samples); ``table`` their
    tidy metrics table (:func:`mergeflow.quality.metrics.metrics_table`).
    """
    frame = pd.DataFrame(list(pairs), columns=["step", "parent"])
    mine = table.drop(columns=["model"])
    theirs = mine.drop(columns=["higher_is_better"]).rename(
        columns={
            "step": "parent",
            "value": "parent_value",
            "stderr": "parent_stderr",
            "n": "parent_n",
        }
    )
    out = frame.merge(mine, on="step").merge(theirs, on=["parent", "task", "metric"])
    out["delta"] = out.value - out.parent_value
    tests = [
        best_test(results[r.step], results[r.parent], r, level, (r.step, r.parent))
        for r in out.itertuples()
    ]
    for field in ("ci_low", "ci_high", "p_value", "n_paired", "method", "note"):
        out[field] = [getattr(t, field) for t in tests]
    alpha = 1 - level
    out["significant"] = [t.method != "none" and t.p_value < alpha for t in tests]
    out["status"] = [
        verdict_of(sig, d, h, t.method)
        for sig, d, h, t in zip(out.significant, out.delta, out.higher_is_better, tests)
    ]
    return out.reindex(columns=COLUMNS)

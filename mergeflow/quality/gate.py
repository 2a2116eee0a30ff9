"""The quality gate: does a merged step keep what its parents could do?

Configured once for the whole recipe (the manifest's ``gate`` block, copied from the workflow
config)::

    gate: {metric: demo/exact_match, max_drop: 0.05, stop: true}   # relative to the best parent
    gate: {metric: demo/exact_match, min: 0.6}                      # absolute floor
    gate: {metric: demo_nll/nll, max: 1.2}                          # ceiling of a loss
    gate: {metric: demo/exact_match, max_drop: 0, significant: true}  # only a real drop fails

Relative gates compare against the *best* parent, because a merge that is only better than its
weakest input has still lost something a user already had. Direction is the ``higher_is_better``
lm-eval recorded for the metric, so "drop" means "got worse" for losses too.

With ``significant: true`` (relative gates only) a step fails only when the drop beyond
``max_drop`` is significant: the whole confidence interval of its paired difference to the best
parent (see :mod:`mergeflow.quality.statistics`) lies beyond ``-max_drop``. A drop that is within
noise passes, and the reason says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from mergeflow.quality.metrics import split_spec


@dataclass(frozen=True)
class Gate:
    metric: str
    higher_is_better: bool
    max_drop: float | None = None
    bound: float | None = None  # the absolute floor: ``min`` (higher is better) or ``max``
    stop: bool = False
    significant: bool = False

    def describe(self) -> str:
        """The rule in words, for the report."""
        if self.max_drop is not None:
            worse = "below" if self.higher_is_better else "above"
            rule = f"{self.metric} at most {self.max_drop:g} {worse} the best parent"
            if self.significant:
                rule += ", failing only when the drop beyond that is significant"
        else:
            rule = f"{self.metric} {'>=' if self.higher_is_better else '<='} {self.bound:g}"
        return rule + ("; a failing step stops the steps built on it" if self.stop else "")


def parse_gate(block: Mapping[str, Any], higher: bool) -> Gate:
    """Validate a ``gate`` block for a metric of direction ``higher`` (lm-eval's
    ``higher_is_better``); the floor's key must match it, so that a typo like ``min`` on a
    perplexity cannot silently pass everything."""
    known = {"metric", "max_drop", "min", "max", "stop", "significant"}
    unknown = set(block) - known
    if unknown:
        raise ValueError(f"gate: unknown keys {sorted(unknown)}; allowed: {sorted(known)}")
    if "metric" not in block:
        raise ValueError("gate: 'metric' is required, e.g. demo/exact_match")
    metric = str(block["metric"])
    split_spec(metric)
    floor_key, wrong_key = ("min", "max") if higher else ("max", "min")
    if wrong_key in block:
        direction = "higher" if higher else "lower"
        raise ValueError(
            f"gate: {metric} is {direction}-is-better, so its absolute bound is "
            f"'{floor_key}', not '{wrong_key}'"
        )
    given = [k for k in ("max_drop", floor_key) if k in block]
    if len(given) != 1:
        raise ValueError(f"gate: give exactly one of 'max_drop' or '{floor_key}' for {metric}")
    max_drop = float(block["max_drop"]) if "max_drop" in block else None
    if max_drop is not None and max_drop < 0:
        raise ValueError("gate: max_drop must be >= 0")
    bound = float(block[floor_key]) if floor_key in block else None
    significant = bool(block.get("significant", False))
    if significant and max_drop is None:
        raise ValueError(
            f"gate: 'significant' needs 'max_drop' (a drop against a parent), not '{floor_key}'"
        )
    return Gate(
        metric=metric,
        higher_is_better=higher,
        max_drop=max_drop,
        bound=bound,
        stop=bool(block.get("stop", False)),
        significant=significant,
    )


def verdict(
    gate: Gate,
    step: str,
    value: float,
    parent_values: Mapping[str, float],
    may_stop: bool = True,
    intervals: Mapping[str, tuple[float, float, str]] | None = None,
) -> dict[str, Any]:
    """The gate JSON for one step.

    ``parent_values`` maps each parent to its value of the gate metric (ignored for a floor).
    ``may_stop`` is False for variants: nothing is built on a variant directly, only on the
    step's selected variant, so a failing variant is marked but stops nothing.
    ``intervals`` (for ``significant``) maps each parent to the confidence interval of
    step − parent and the method that gave it (:mod:`mergeflow.quality.statistics`).
    """
    higher = gate.higher_is_better
    sign = 1.0 if higher else -1.0
    word = "min" if higher else "max"
    if gate.max_drop is not None:
        if not parent_values:
            raise ValueError(f"gate: {step} has no parents to compare against (max_drop)")
        best_parent = (max if higher else min)(parent_values, key=lambda p: parent_values[p])
        reference = parent_values[best_parent]
        threshold = reference - sign * gate.max_drop
        basis = (
            f"best parent {best_parent} {reference:.4g} {'-' if higher else '+'} {gate.max_drop:g}"
        )
    else:
        best_parent, reference, threshold = None, None, gate.bound
        basis = f"{word} {threshold:.4g}"
    # The tolerance keeps "exactly at the threshold" a pass despite float subtraction.
    passed = not math.isnan(value) and sign * (value - threshold) >= -1e-12
    relation = ">=" if higher else "<="
    within_noise = significance = ""
    if not passed and gate.significant:
        low, high, method = (intervals or {}).get(best_parent, (math.nan, math.nan, "none"))
        # In "better" units the interval is [sign·low, sign·high] (reordered for losses).
        best_case = max(sign * low, sign * high)
        significance = f"; significant: CI of the difference [{low:+.4g}, {high:+.4g}] ({method})"
        if math.isnan(best_case) or best_case >= -gate.max_drop - 1e-12:
            passed = True
            within_noise = (
                "the drop cannot be tested (no samples, no stderr)"
                if math.isnan(best_case)
                else f"the drop is within noise: CI of the difference [{low:+.4g}, {high:+.4g}]"
                f" ({method})"
            )
    if within_noise:
        reason = (
            f"{step}: {gate.metric} {value:.4g} is not {relation} {threshold:.4g} ({basis}), "
            f"but passes because gate.significant is set and {within_noise}"
        )
    elif passed:
        reason = f"{step}: {gate.metric} {value:.4g} {relation} {threshold:.4g} ({basis})"
    else:
        reason = (
            f"{step} failed the gate: {gate.metric} {value:.4g} is not {relation} "
            f"{threshold:.4g} ({basis}){significance}"
        )
    stop = gate.stop and may_stop and not passed
    if stop:
        reason += "; steps built on it do not run"
    return {
        "step": step,
        "passed": passed,
        "metric": gate.metric,
        "value": value,
        "reference": reference,
        "reference_step": best_parent,
        "threshold": threshold,
        "reason": reason,
        "stop": stop,
        "significant": gate.significant,
    }


def no_gate(step: str) -> dict[str, Any]:
    """The verdict when the recipe configures no gate: everything passes, nothing stops."""
    return {
        "step": step,
        "passed": True,
        "metric": None,
        "value": None,
        "reference": None,
        "reference_step": None,
        "threshold": None,
        "reason": f"{step}: no gate configured",
        "stop": False,
    }

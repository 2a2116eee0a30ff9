"""A/B variants of a step: rank them by one metric and pick the one the next step builds on."""

from __future__ import annotations

import math
from typing import Mapping


def rank(values: Mapping[str, float], higher: bool) -> list[dict[str, float | str]]:
    """Variants best first, for a metric of direction ``higher`` (lm-eval's higher_is_better).

    Ties are broken by name so that a rerun picks the same variant; a variant without a value
    (NaN) ranks last rather than winning by accident.
    """
    sign = -1.0 if higher else 1.0

    def order(name: str) -> tuple[bool, float, str]:
        missing = math.isnan(values[name])
        return (missing, 0.0 if missing else sign * values[name], name)

    return [{"name": name, "value": values[name]} for name in sorted(values, key=order)]


def select(step: str, values: Mapping[str, float], metric: str, higher: bool) -> dict:
    """The selection JSON: the ranking by ``metric`` (of direction ``higher``) and the winner."""
    if not values:
        raise ValueError(f"select: step {step} has no variants")
    ranking = rank(values, higher)
    if math.isnan(ranking[0]["value"]):
        raise ValueError(f"select: no variant of {step} has a value for {metric}")
    return {
        "step": step,
        "metric": metric,
        "higher_is_better": higher,
        "selected": ranking[0]["name"],
        "ranking": ranking,
    }

"""The recipe-level answers: which step a node builds on, its overall verdict, why it did not
run, which steps a recipe ends with, and which metric leads the report."""

from __future__ import annotations

import pandas as pd

from mergeflow.quality.manifest import Manifest, Node, eval_path


def base_step(manifest: Manifest, node: Node) -> str | None:
    """The step a node builds on: its first parent that is itself a merge (None when every
    parent is an input model)."""
    return next((p for p in node.parents if manifest.node(p).kind != "input"), None)


def overall(statuses: dict[str, str], base: str | None) -> tuple[str, str]:
    """One-phrase verdict over a node's parents, with a CSS class: what a reader needs first.

    Against the step it builds on first (``base``), then the other parents. Green only when
    the node is better than its base (or, without one, than every parent) and worse than none;
    red when worse than its base, or worse than a parent without being better than the base
    (or, without a base, than any parent); "mixed" when better there and worse elsewhere;
    otherwise neutral: within noise of the step it builds on is no improvement.
    """
    if not statuses:
        return "no comparable parent", "neutral"
    order = [base] if base in statuses else []
    order += [p for p in statuses if p != base]
    words = {
        "better": "better than",
        "worse": "worse than",
        "within noise": "within noise of",
        "no stderr": "untested against",
        "changed (direction unknown)": "different from (direction unknown)",
    }
    phrases: list[tuple[str, list[str]]] = []
    for parent in order:
        word = words[statuses[parent]]
        if phrases and phrases[-1][0] == word:
            phrases[-1][1].append(parent)
        else:
            phrases.append((word, [parent]))
    text = "; ".join(f"{word} {', '.join(names)}" for word, names in phrases)
    if len(statuses) > 1 and all(s == "better" for s in statuses.values()):
        text = "better than every parent"
    worse = any(s == "worse" for s in statuses.values())
    if base in statuses:
        if statuses[base] == "worse":
            return text, "worse"
        better = statuses[base] == "better"
    else:
        better = all(s == "better" for s in statuses.values())
    if worse:
        return text, "mixed" if better or any(s == "better" for s in statuses.values()) else "worse"
    return text, "better" if better else "neutral"


def not_run_reason(manifest: Manifest, name: str, gates: dict[str, dict]) -> str:
    """Why a node has no results: its own gate file says so, or an ancestor failed a stopping
    gate, or it simply has not been evaluated."""
    own = gates.get(name) or {}
    if not own.get("passed", True) and own.get("reason"):
        return str(own["reason"])
    for ancestor in manifest.ancestors(name):
        verdict = gates.get(ancestor) or {}
        if verdict.get("stop") and not verdict.get("passed", True):
            return f"not run: {ancestor} failed the gate and gate.stop is set"
    path = eval_path(manifest, name)
    if path is None:
        return "not run: no variant selected yet" if manifest.node(name).variants else "not run"
    return f"not run: no results at {path}"


def final_steps(manifest: Manifest) -> list[str]:
    """The steps nothing else is merged from: what a recipe produces."""
    used = {p for n in manifest.nodes.values() for p in n.parents}
    return [n.name for n in manifest.nodes.values() if n.kind == "step" and n.name not in used]


def headline_metric(manifest: Manifest, table: pd.DataFrame) -> str | None:
    """The metric the at-a-glance table leads with: the gate's, else a selection's, else the
    first one measured."""
    if manifest.gate and manifest.gate.get("metric"):
        return str(manifest.gate["metric"])
    for choice in manifest.select.values():
        return str(choice["metric"])
    if table.empty:
        return None
    return f"{table.task.iloc[0]}/{table.metric.iloc[0]}"

"""Words, numbers and cells of the report: how one comparison, gate verdict or provenance
record reads. Plain data for the template (a cell is a dict, rich text a list of parts)."""

from __future__ import annotations

import hashlib
import math
import re
from typing import Any

import pandas as pd

from mergeflow.quality.formatting import (
    decimals,
    fmt,
    fmt_interval,
    fmt_p,
    fmt_signed,
    fmt_value,
    level_text,
)
from mergeflow.quality.manifest import Node
from mergeflow.quality.metrics import improvement, model_label
from mergeflow.quality.statistics import METHODS

STATUS_CSS = {
    "better": "better",
    "worse": "worse",
    "within noise": "noise",
    "no stderr": "nostderr",
    "changed (direction unknown)": "mixed",
}


def cell(text: Any = "", css: str = "", **extra: Any) -> dict[str, Any]:
    """A table cell: ``text`` with a CSS class; optional ``title`` (tooltip), ``href``,
    ``bold``, ``lines`` (a list of cells shown one per line), ``sub`` (small lines under the
    text), ``colspan``, ``parts`` (rich text)."""
    return {"text": "" if text is None else str(text), "css": css, **extra}


def part(text: Any, css: str = "", href: str | None = None, bold: bool = False) -> dict:
    """A piece of rich text: plain, in a coloured span, or a link."""
    return {"text": str(text), "css": css, "href": href, "bold": bold}


def anchor(name: str) -> str:
    return "node-" + re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def arrow_of(higher: Any) -> str:
    """↑ beside a metric where higher is better, ↓ where lower is, ? where lm-eval said neither."""
    if higher is None or pd.isna(higher):
        return "?"
    return "↑" if higher else "↓"


def change_arrow(row: Any) -> str:
    """▲ for a change for the better, ▼ for the worse, = for none (direction-aware)."""
    if row.delta == 0:
        return "="
    if row.higher_is_better is None or pd.isna(row.higher_is_better):
        return "≠"
    return "▲" if improvement(row.delta, bool(row.higher_is_better)) > 0 else "▼"


def spread_of(row: Any) -> float:
    """About one standard error of a delta: a quarter of its CI (NaN without one, or where the
    interval is a point, e.g. every item moved by the same amount)."""
    width = row.ci_high - row.ci_low
    return width / 4 if width > 1e-9 else math.nan


def delta_text(row: Any, parent: bool = False) -> str:
    """``▲ +0.050 [+0.021, +0.079] p=0.001``: direction, size, CI and p-value."""
    spread = spread_of(row)
    text = f"{change_arrow(row)} {fmt_signed(row.delta, spread, row.value)}"
    if row.method == "none":
        text += " · no test"
    else:
        text += f" {fmt_interval(row.ci_low, row.ci_high, spread)} {fmt_p(row.p_value)}"
        if row.method == "stderr":
            text += " (stderr)"
    return (f"vs {row.parent}: " if parent else "") + text


def delta_title(row: Any, level: float) -> str:
    how = METHODS[row.method]
    if row.note:
        how += f" ({row.note})"
    ci = f"{level_text(level)} CI" if row.method != "none" else "no CI"
    return (
        f"{row.status}: {fmt_value(row.value, row.stderr)} vs {row.parent} "
        f"{fmt_value(row.parent_value, row.parent_stderr)}; {ci}; {how}"
    )


def gate_words(verdict: dict | None, higher: bool | None) -> tuple[str, str, str]:
    """(label, CSS class, the numbers behind it) of one gate verdict."""
    if not verdict:
        return "—", "neutral", ""
    if verdict.get("metric") is None and verdict.get("passed"):
        return "no gate", "neutral", ""
    label = "PASS" if verdict.get("passed") else "FAIL"
    value, threshold = verdict.get("value"), verdict.get("threshold")
    detail = ""
    if value is not None and threshold is not None and not math.isnan(value) and higher is not None:
        relation = ("≥" if higher else "≤") if verdict.get("passed") else ("<" if higher else ">")
        if verdict.get("passed") and (value - threshold) * (1 if higher else -1) < 0:
            relation = "<" if higher else ">"  # passed within noise (gate.significant)
        digits = max(decimals(None, value), decimals(None, threshold))
        detail = f"{fmt(value, digits)} {relation} {fmt(threshold, digits)}"
    return label, label.lower(), detail


def digest_of(hashes: dict[str, str]) -> str:
    """One short fingerprint for a {name: sha256} map: equal maps, equal fingerprints."""
    text = "".join(f"{name}:{sha}\n" for name, sha in sorted(hashes.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def provenance_items(prov: dict[str, Any] | None) -> list[dict[str, str]]:
    """The facts that identify a merge, without listing every tensor hash: (key, value, code)."""
    if not prov:
        return []
    items = []
    for key in ("mergeflow_version", "config_sha256", "seed"):
        if key in prov:
            items.append({"key": key, "value": str(prov[key]), "code": True})
    for entry in prov.get("inputs", []):
        files = entry.get("files", {})
        label = entry.get("name") or entry.get("reference") or ""
        identity = entry.get("identity", "")
        same = identity in ("", label)
        items.append(
            {
                "key": f"input {label}",
                "value": f"{'' if same else '= ' + identity + ': '}{len(files)} file(s), digest "
                f"{digest_of(files)}",
                "code": False,
            }
        )
    tensors = prov.get("tensors", {})
    if tensors:
        items.append(
            {
                "key": "tensors",
                "value": f"{len(tensors)}, digest of all hashes {digest_of(tensors)}",
                "code": False,
            }
        )
    # The config is shown verbatim elsewhere; other scalars (method, torch version...) are short.
    shown = {"mergeflow_version", "config_sha256", "seed", "inputs", "tensors", "config"}
    for key, value in prov.items():
        if key not in shown and isinstance(value, (str, int, float, bool)):
            items.append({"key": key, "value": str(value), "code": False})
    return items


def eval_summary(raw: dict[str, Any]) -> str:
    """How the numbers were obtained, so that two reports are only compared like for like."""
    cfg = raw.get("config", {})
    shots = sorted(set(raw.get("n-shot", {}).values()))
    seconds = raw.get("total_evaluation_time_seconds")
    parts = [
        f"lm-eval {raw.get('lm_eval_version', '?')}",
        f"model {model_label(raw)}",
        f"limit {cfg.get('limit') or 'none'}",
        f"{'/'.join(map(str, shots)) or '?'}-shot",
        f"batch {cfg.get('batch_size')}",
        f"{cfg.get('model_dtype', '')} on {cfg.get('device', '?')}",
    ]
    if seconds is not None:
        parts.append(f"{float(seconds):.1f} s")
    if not raw.get("mergeflow_samples"):
        parts.append("no per-item samples")
    return "Evaluation: " + " · ".join(parts)


def overrides_text(node: Node) -> str:
    """``{"models": {"add": {"weight": 0.75}}}`` → ``models.add.weight=0.75``."""

    def flat(value: Any, prefix: str) -> list[str]:
        if isinstance(value, dict) and value:
            return [item for k, v in value.items() for item in flat(v, f"{prefix}{k}.")]
        return [f"{prefix.rstrip('.')}={value}"]

    return " ".join(flat(node.overrides, "")) if node.overrides else "(the step's own parameters)"

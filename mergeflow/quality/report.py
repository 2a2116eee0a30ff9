"""The per-step quality report: ``metrics.csv`` and one self-contained ``index.html``.

A user decides from this page what to ship, so it answers first, for every step, whether it is
better or worse than what it was made from and whether that difference is beyond noise; lineage,
plots, configs and provenance follow for whoever wants to check.

Manifest schema
---------------
The workflow writes one JSON manifest describing the recipe; ``mergeflow gate``, ``mergeflow
select`` and ``mergeflow report`` all read it. Paths are relative to the current directory.
Files a node names need not exist yet: a missing ``eval`` means the node has not run (or was
skipped after a gate stop) and the report shows it as "not run".

.. code-block:: text

    {
      "nodes": [NODE, ...],            # recipe order: inputs, then each step after its variants
      "gate": GATE,                    # optional, see mergeflow.quality.gate
      "select": {"STEP": {"metric": "TASK/METRIC"}, ...}   # one entry per step with variants
    }

    NODE (every key not marked optional is required for that kind):
      name        unique; variants are conventionally named STEP--SUFFIX
      kind        "input" | "step" | "variant"
      parents     node names it was merged from ([] for inputs)
      eval        lm-eval results JSON written by `mergeflow evaluate`; a step with variants may
                  leave it out: its results are then those of its selected variant
      source      optional (input): where the model came from, e.g. a Hub id or a local path
      method      (step, variant) merge method, e.g. "linear"
      config      (step, variant) the verbatim mergekit YAML of the merge
      provenance  (step, variant) provenance.json of the merge engine: mergeflow_version,
                  config_sha256, seed, inputs [{name, identity, files: {file: sha256}}],
                  tensors {name: sha256}
      gate        optional: gate JSON written by `mergeflow gate` (or by the workflow for a
                  step it skipped: {"step", "passed": false, "reason", ...})
      variants    (step with variants) names of its variant nodes
      selected    (step with variants) selection JSON written by `mergeflow select`
      variant_of  (variant) the step it belongs to
      overrides   optional (variant): its parameter overrides, e.g. {"weight": 0.75}

    GATE: {"metric": "TASK/METRIC", "max_drop": F | "min": F | "max": F, "stop": bool}

Metrics are named ``TASK/METRIC`` with lm-eval's names (``demo/exact_match``); see
:mod:`mergeflow.quality.metrics` for how lm-eval's keys map to them.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from mergeflow.quality.files import read_json, write_atomic
from mergeflow.quality.gate import parse_gate
from mergeflow.quality.metrics import (
    higher_is_better,
    improvement,
    lookup,
    metrics_table,
    model_label,
    split_spec,
)
from mergeflow.quality.variants import rank

KINDS = ("input", "step", "variant")


# --------------------------------------------------------------------------- the manifest


@dataclass(frozen=True)
class Node:
    name: str
    kind: str
    parents: tuple[str, ...] = ()
    eval: str | None = None
    source: str | None = None
    method: str | None = None
    config: str | None = None
    provenance: str | None = None
    gate: str | None = None
    variants: tuple[str, ...] = ()
    selected: str | None = None
    variant_of: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Manifest:
    nodes: dict[str, Node]
    gate: dict[str, Any] | None = None
    select: dict[str, dict[str, Any]] = field(default_factory=dict)

    def node(self, name: str) -> Node:
        try:
            return self.nodes[name]
        except KeyError:
            raise KeyError(
                f"manifest has no node {name!r}; nodes: {', '.join(self.nodes)}"
            ) from None

    def ancestors(self, name: str) -> list[str]:
        """Every node ``name`` is built from, variants included, nearest first."""
        seen: list[str] = []
        todo = list(self.lineage_parents(name))
        while todo:
            current = todo.pop(0)
            if current not in seen:
                seen.append(current)
                todo.extend(self.lineage_parents(current))
        return seen

    def lineage_parents(self, name: str) -> tuple[str, ...]:
        """Edges of the lineage graph: a step with variants comes from its variants (one of
        them is selected); every other node from its merge parents."""
        node = self.node(name)
        return node.variants or node.parents


def parse_manifest(data: dict[str, Any]) -> Manifest:
    """Validate the manifest's shape, so that a wiring mistake fails here with a clear message
    rather than as a missing row deep inside the report."""
    nodes: dict[str, Node] = {}
    for entry in data.get("nodes", []):
        unknown = set(entry) - set(Node.__dataclass_fields__)
        if unknown:
            raise ValueError(f"manifest node {entry.get('name')!r}: unknown keys {sorted(unknown)}")
        node = Node(
            **{
                **entry,
                "parents": tuple(entry.get("parents", ())),
                "variants": tuple(entry.get("variants", ())),
                "overrides": dict(entry.get("overrides") or {}),
            }
        )
        if node.kind not in KINDS:
            raise ValueError(f"manifest node {node.name!r}: kind must be one of {KINDS}")
        if node.name in nodes:
            raise ValueError(f"manifest: node {node.name!r} appears twice")
        nodes[node.name] = node
    for node in nodes.values():
        for ref in (*node.parents, *node.variants, *([node.variant_of] if node.variant_of else [])):
            if ref not in nodes:
                raise ValueError(f"manifest node {node.name!r} refers to unknown node {ref!r}")
        if node.kind == "input" and node.parents:
            raise ValueError(f"manifest: input {node.name!r} cannot have parents")
        if node.kind != "input" and not node.parents:
            raise ValueError(f"manifest: {node.kind} {node.name!r} needs parents")
        if node.variants and not node.selected:
            raise ValueError(f"manifest: step {node.name!r} has variants but no 'selected' path")
    return Manifest(nodes=nodes, gate=data.get("gate"), select=dict(data.get("select") or {}))


def load_manifest(path: str | Path) -> Manifest:
    return parse_manifest(read_json(path))


def read_optional_json(path: str | None) -> Any:
    return read_json(path) if path and Path(path).is_file() else None


def eval_path(manifest: Manifest, name: str) -> str | None:
    """The results file that stands for a node: its own, or its selected variant's."""
    node = manifest.node(name)
    if node.eval:
        return node.eval
    selection = read_optional_json(node.selected)
    return manifest.node(selection["selected"]).eval if selection else None


def load_results(manifest: Manifest) -> dict[str, dict[str, Any]]:
    """Raw lm-eval results of every node that has them, in manifest order."""
    results = {}
    for name in manifest.nodes:
        raw = read_optional_json(eval_path(manifest, name))
        if raw is not None:
            results[name] = raw
    return results


def manifest_table(manifest: Manifest) -> pd.DataFrame:
    return metrics_table(load_results(manifest).items())


# --------------------------------------------------------------------------- comparisons


def compare(table: pd.DataFrame, manifest: Manifest) -> pd.DataFrame:
    """Every metric of every merged node against the same metric of each of its parents.

    A delta is *significant* only when it exceeds the combined standard error
    √(se_node² + se_parent²); without a stderr on either side (lm-eval reports perplexities as
    "N/A") it is never significant, and ``status`` says "no stderr" instead of guessing.
    """
    parent_of = [(n.name, p) for n in manifest.nodes.values() for p in n.parents]
    pairs = pd.DataFrame(parent_of, columns=["step", "parent"])
    mine = table.drop(columns=["model"])
    theirs = mine.rename(
        columns={
            "step": "parent",
            "value": "parent_value",
            "stderr": "parent_stderr",
            "n": "parent_n",
        }
    )
    out = pairs.merge(mine, on="step").merge(theirs, on=["parent", "task", "metric"])
    out["delta"] = out.value - out.parent_value
    out["noise"] = (out.stderr**2 + out.parent_stderr**2) ** 0.5
    out["significant"] = (out.delta.abs() > out.noise) & out.noise.notna()
    better = [improvement(d, m) > 0 for d, m in zip(out.delta, out.metric)]
    out["status"] = [
        (
            "no stderr"
            if math.isnan(noise)
            else ("better" if b else "worse") if sig else "within noise"
        )
        for noise, sig, b in zip(out.noise, out.significant, better)
    ]
    return out[
        [
            "step",
            "parent",
            "task",
            "metric",
            "value",
            "stderr",
            "parent_value",
            "parent_stderr",
            "delta",
            "noise",
            "significant",
            "status",
        ]
    ]


def against_best_parent(deltas: pd.DataFrame) -> pd.DataFrame:
    """For every (step, task, metric), the comparison with the parent that did best on it: the
    one question behind "did this merge lose something a user already had?"."""
    if deltas.empty:
        return deltas
    sign = [1.0 if higher_is_better(m) else -1.0 for m in deltas.metric]
    score = deltas.parent_value * sign
    best = score.groupby([deltas.step, deltas.task, deltas.metric]).idxmax()
    return deltas.loc[best.values]


def overall(statuses: dict[str, str]) -> tuple[str, str]:
    """One-phrase verdict over a node's parents, with a CSS class: what a reader needs first."""
    better = [p for p, s in statuses.items() if s == "better"]
    worse = [p for p, s in statuses.items() if s == "worse"]
    if not statuses:
        return "no comparable parent", "neutral"
    if worse and better:
        return f"mixed: better than {', '.join(better)}, worse than {', '.join(worse)}", "mixed"
    if worse:
        return f"worse than {', '.join(worse)}", "worse"
    if better and len(better) == len(statuses):
        return "better than every parent", "better"
    if better:
        return f"better than {', '.join(better)}; within noise of the rest", "better"
    return "no significant change", "neutral"


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


def variant_ranking(
    manifest: Manifest, table: pd.DataFrame, step: str
) -> tuple[str, list[dict]] | None:
    """The ranking of a step's variants by its ``select`` metric, from whichever have results."""
    node = manifest.node(step)
    choice = manifest.select.get(step)
    if not node.variants or not choice:
        return None
    metric = str(choice["metric"])
    present = set(table.step)
    values = {v: lookup(table, v, metric)[0] for v in node.variants if v in present}
    return metric, rank(values, metric)


# --------------------------------------------------------------------------- plots


KIND_COLORS = {"input": "#718096", "variant": "#90cdf4", "step": "#2b6cb0"}


def plot_task(table: pd.DataFrame, task: str, kinds: dict[str, str]) -> bytes:
    """One PNG per task: each of its metrics across the nodes, with stderr bars.

    Every metric gets its own axis because accuracies and losses live on different scales; the
    points are not joined, since the nodes are a recipe, not a time series.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = table[table.task == task]
    metrics = list(dict.fromkeys(rows.metric))
    width = max(4.5, 0.7 * rows.step.nunique() + 2)
    fig, axes = plt.subplots(len(metrics), 1, figsize=(width, 2.6 * len(metrics)), squeeze=False)
    for ax, metric in zip(axes[:, 0], metrics):
        part = rows[rows.metric == metric]
        x = list(range(len(part)))
        for kind, color in KIND_COLORS.items():
            mask = [kinds.get(step) == kind for step in part.step]
            if any(mask):
                ax.errorbar(
                    [i for i, keep in zip(x, mask) if keep],
                    part.value[mask],
                    yerr=part.stderr[mask].fillna(0),
                    fmt="o",
                    color=color,
                    capsize=3,
                    label=kind,
                )
        ax.set_xticks(x, list(part.step), rotation=30, ha="right", fontsize=8)
        arrow = "↑ better" if higher_is_better(metric) else "↓ better"
        ax.set_ylabel(f"{metric} ({arrow})", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].set_title(task, fontsize=10)
    axes[0, 0].legend(fontsize=7, loc="best")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


def plot_filename(task: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", task) + ".png"


# --------------------------------------------------------------------------- HTML pieces

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1200px;color:#1a202c;padding:0 16px}
h1{font-size:22px;margin-bottom:4px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #e2e8f0;padding-bottom:4px}
h3{font-size:15px;margin:22px 0 6px}
table{border-collapse:collapse;margin:6px 0 12px}th,td{border:1px solid #e2e8f0;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f7fafc;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.better{background:#c6f6d5;color:#22543d}.worse{background:#fed7d7;color:#742a2a}.mixed{background:#fefcbf;color:#744210}
.neutral{color:#4a5568}.noise{color:#718096}.nostderr{color:#718096;font-style:italic}
.pass{background:#c6f6d5;color:#22543d;font-weight:600}.fail{background:#fed7d7;color:#742a2a;font-weight:600}
.notrun{color:#718096;font-style:italic}.best{font-weight:700}.muted{color:#718096;font-size:12px}
pre{background:#f7fafc;border:1px solid #e2e8f0;padding:8px;overflow:auto;font-size:12px}
details{margin:4px 0 10px}summary{cursor:pointer;color:#2c5282}
img{max-width:100%;border:1px solid #e2e8f0;margin:6px 0}
.legend span{padding:1px 6px;margin-right:6px}.chips span{display:inline-block;padding:0 4px;margin:1px;font-size:12px}
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: float, digits: int = 4) -> str:
    return (
        "n/a"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else f"{value:.{digits}f}"
    )


def value_cell(value: float, stderr: float) -> str:
    se = "" if math.isnan(stderr) else f" ± {fmt(stderr)}"
    return f'<td class="num">{fmt(value)}{se}</td>'


def delta_cell(row: pd.Series) -> str:
    """A delta against one parent: green or red only when significant, grey otherwise."""
    css = {"better": "better", "worse": "worse", "within noise": "noise", "no stderr": "nostderr"}[
        row.status
    ]
    arrow = "▲" if improvement(row.delta, row.metric) > 0 else "▼" if row.delta != 0 else "="
    noise = "no stderr: never flagged" if math.isnan(row.noise) else f"noise ±{fmt(row.noise)}"
    title = f"{row.status}; vs {row.parent} {fmt(row.parent_value)}; {noise}"
    return f'<td class="num {css}" title="{esc(title)}">{arrow} {row.delta:+.4f} <span class="muted">({esc(row.status)})</span></td>'


def table_html(headers: list[str], rows: list[list[str]]) -> str:
    """Rows are lists of already-rendered ``<td>`` cells."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join(f"<tr>{''.join(r)}</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def td(text: Any, css: str = "") -> str:
    cls = f' class="{css}"' if css else ""
    return f"<td{cls}>{esc(text)}</td>"


def gate_cell(verdict: dict | None) -> str:
    if not verdict:
        return td("—", "neutral")
    label = "PASS" if verdict.get("passed") else "FAIL"
    return f'<td class="{label.lower()}" title="{esc(verdict.get("reason", ""))}">{label}</td>'


def lineage_svg(manifest: Manifest, state: dict[str, str], selected: set[str]) -> str:
    """The recipe as a left-to-right graph, drawn inline (no external library or URL).

    Columns are depths in the lineage. Solid edges lead from merge parents; dashed ones from a
    step's variants to the step, the selected variant's drawn bold. Fill is the gate verdict.
    """
    depth: dict[str, int] = {}

    def depth_of(name: str) -> int:
        if name not in depth:
            depth[name] = 1 + max(map(depth_of, manifest.lineage_parents(name)), default=-1)
        return depth[name]

    columns: dict[int, list[str]] = {}
    for name in manifest.nodes:
        columns.setdefault(depth_of(name), []).append(name)
    box_w, box_h, gap_x, gap_y, pad = 150, 38, 60, 14, 10
    pos = {
        name: (pad + d * (box_w + gap_x), pad + i * (box_h + gap_y))
        for d, names in columns.items()
        for i, name in enumerate(names)
    }
    width = pad * 2 + (max(columns) + 1) * (box_w + gap_x) - gap_x
    height = pad * 2 + max(map(len, columns.values())) * (box_h + gap_y) - gap_y
    parts = [f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">']
    for name in manifest.nodes:
        x2, y2 = pos[name]
        for parent in manifest.lineage_parents(name):
            x1, y1 = pos[parent]
            a, b = (x1 + box_w, y1 + box_h / 2), (x2, y2 + box_h / 2)
            mid = (a[0] + b[0]) / 2
            if not manifest.node(name).variants:
                style = 'stroke="#a0aec0"'
            elif parent in selected:
                style = 'stroke="#2b6cb0" stroke-width="2.5"'
            else:
                style = 'stroke="#cbd5e0" stroke-dasharray="4 3"'
            path = f"M{a[0]},{a[1]} C{mid},{a[1]} {mid},{b[1]} {b[0]},{b[1]}"
            parts.append(f'<path d="{path}" fill="none" {style}/>')
    fills = {"pass": "#c6f6d5", "fail": "#fed7d7", "notrun": "#edf2f7"}
    for name, (x, y) in pos.items():
        node = manifest.node(name)
        stroke = "#718096" if node.kind == "input" else "#2b6cb0"
        extra = ' stroke-width="3"' if name in selected else ""
        extra += ' stroke-dasharray="3 2"' if state.get(name) == "notrun" else ""
        cx = x + box_w / 2
        parts.append(
            f"<g><title>{esc(name)}: {esc(node.kind)}, {esc(state.get(name) or 'no gate')}</title>"
            f'<rect x="{x}" y="{y}" width="{box_w}" height="{box_h}" rx="6" '
            f'fill="{fills.get(state.get(name, ""), "#ffffff")}" stroke="{stroke}"{extra}/>'
            f'<text x="{cx}" y="{y + 16}" text-anchor="middle" font-size="12" font-weight="600">'
            f"{esc(name)}</text>"
            f'<text x="{cx}" y="{y + 30}" text-anchor="middle" font-size="10" fill="#4a5568">'
            f"{esc(node.method or node.kind)}</text></g>"
        )
    parts.append("</svg>")
    return "".join(parts)


def digest_of(hashes: dict[str, str]) -> str:
    """One short fingerprint for a {name: sha256} map: equal maps, equal fingerprints."""
    text = "".join(f"{name}:{sha}\n" for name, sha in sorted(hashes.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def provenance_summary(prov: dict[str, Any] | None) -> str:
    """The facts that identify a merge, without listing every tensor hash."""
    if not prov:
        return '<p class="notrun">no provenance file</p>'
    items = []
    for key in ("mergeflow_version", "config_sha256", "seed"):
        if key in prov:
            items.append(f"<li><b>{esc(key)}</b>: <code>{esc(prov[key])}</code></li>")
    for entry in prov.get("inputs", []):
        files = entry.get("files", {})
        label = entry.get("name") or entry.get("reference") or ""
        identity = entry.get("identity", "")
        same = identity in ("", label)
        items.append(
            f"<li><b>input {esc(label)}</b>{'' if same else ' = ' + esc(identity)}: "
            f"{len(files)} file(s), digest <code>{digest_of(files)}</code></li>"
        )
    tensors = prov.get("tensors", {})
    if tensors:
        items.append(
            f"<li><b>tensors</b>: {len(tensors)}, digest of all hashes <code>{digest_of(tensors)}</code></li>"
        )
    # The config is shown verbatim elsewhere; other scalars (method, torch version...) are short.
    shown = {"mergeflow_version", "config_sha256", "seed", "inputs", "tensors", "config"}
    for key, value in prov.items():
        if key not in shown and isinstance(value, (str, int, float, bool)):
            items.append(f"<li><b>{esc(key)}</b>: {esc(value)}</li>")
    return f"<ul>{''.join(items)}</ul>"


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
    return '<p class="muted">' + esc(" · ".join(parts)) + "</p>"


# --------------------------------------------------------------------------- the page


@dataclass
class ReportInputs:
    """Everything the report reads from disk, so that rendering is a pure function of it."""

    manifest: Manifest
    results: dict[str, dict[str, Any]]
    gates: dict[str, dict[str, Any]]
    selections: dict[str, dict[str, Any]]
    provenance: dict[str, dict[str, Any]]


def collect(manifest: Manifest) -> ReportInputs:
    def each(attr: str) -> dict[str, Any]:
        found = {n.name: read_optional_json(getattr(n, attr)) for n in manifest.nodes.values()}
        return {name: data for name, data in found.items() if data is not None}

    return ReportInputs(
        manifest=manifest,
        results=load_results(manifest),
        gates=each("gate"),
        selections=each("selected"),
        provenance=each("provenance"),
    )


class Page:
    """The report's sections, in the order a reader needs them: verdicts first, evidence after."""

    def __init__(self, inputs: ReportInputs, plots: dict[str, bytes]):
        self.inputs, self.plots, self.m = inputs, plots, inputs.manifest
        self.table = metrics_table(inputs.results.items())
        self.deltas = compare(self.table, self.m)
        self.best_parent = against_best_parent(self.deltas)
        self.headline = headline_metric(self.m, self.table)
        self.merged = [n for n in self.m.nodes.values() if n.kind != "input"]
        self.selected = {s["selected"] for s in inputs.selections.values()}

    def ran(self, name: str) -> bool:
        return name in self.inputs.results

    def node_state(self, name: str) -> str:
        """The gate verdict ("pass" or "fail"), "notrun", or "" where no gate ran."""
        verdict = self.inputs.gates.get(name)
        if not self.ran(name):
            return "notrun"
        if verdict is not None:
            return "pass" if verdict.get("passed") else "fail"
        return ""

    def deltas_of(self, name: str, task: str, metric: str) -> dict[str, pd.Series]:
        d = self.deltas
        hits = d[(d.step == name) & (d.task == task) & (d.metric == metric)]
        return {row["parent"]: row for _, row in hits.iterrows()}

    def html(self) -> str:
        direction = ""
        if self.headline:
            better = "higher" if higher_is_better(split_spec(self.headline)[1]) else "lower"
            direction = f" ({better} is better)"
        head = (
            '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f"<title>mergeflow quality report</title><style>{CSS}</style></head><body>"
            "<h1>mergeflow quality report</h1>"
            f'<p class="muted">{len(self.m.nodes)} nodes · {len(self.inputs.results)} evaluated · '
            f"headline metric <b>{esc(self.headline)}</b>{direction}</p>"
        )
        sections = [
            self.glance(),
            self.gate(),
            self.lineage(),
            self.variants(),
            self.details(),
            self.input_models(),
            self.plot_section(),
        ]
        return head + "\n".join(sections) + "\n</body></html>\n"

    def glance(self) -> str:
        out = [
            "<h2>At a glance</h2>",
            '<p class="legend"><span class="better">better, beyond noise</span>'
            '<span class="worse">worse, beyond noise</span><span class="noise">within noise</span>'
            "A delta is flagged only when |Δ| &gt; √(se<sub>step</sub>² + se<sub>parent</sub>²); "
            "metrics without a stderr (perplexities) are never flagged.</p>",
        ]
        if not self.headline:
            return "".join(out)
        task, metric = split_spec(self.headline)
        width = max((len(n.parents) for n in self.merged), default=0)
        rows = []
        for node in self.merged:
            cells = [
                td(node.name, "best" if node.name in self.selected else ""),
                td(node.kind),
                td(node.method or ""),
                td(", ".join(node.parents)),
            ]
            gate = gate_cell(self.inputs.gates.get(node.name))
            if not self.ran(node.name):
                reason = not_run_reason(self.m, node.name, self.inputs.gates)
                rows.append(
                    cells
                    + [f'<td class="notrun" colspan="{width + 2}">{esc(reason)}</td>', gate, td("")]
                )
                continue
            hit = self.table[
                (self.table.step == node.name)
                & (self.table.task == task)
                & (self.table.metric == metric)
            ]
            cells.append(
                value_cell(hit.value.iloc[0], hit.stderr.iloc[0])
                if len(hit)
                else td("missing", "notrun")
            )
            by_parent = self.deltas_of(node.name, task, metric)
            cells += [
                delta_cell(by_parent[p]) if p in by_parent else td("—", "neutral")
                for p in node.parents
            ]
            cells += [td("")] * (width - len(node.parents))
            text, css = overall({p: row["status"] for p, row in by_parent.items()})
            rows.append(cells + [td(text, css), gate, self.other_changes(node.name, task, metric)])
        headers = ["node", "kind", "method", "parents", self.headline]
        headers += [f"Δ vs parent {i + 1}" for i in range(width)]
        headers += ["verdict", "gate", "other metrics vs their best parent, beyond noise"]
        out.append(table_html(headers, rows))
        return "".join(out)

    def other_changes(self, name: str, task: str, metric: str) -> str:
        """Significant gains and losses on every other metric, so that a good headline cannot
        hide a skill the merge lost."""
        b = self.best_parent
        rows = b[(b.step == name) & b.significant & ~((b.task == task) & (b.metric == metric))]
        chips = [
            f'<span class="{row.status}">{"▲" if row.status == "better" else "▼"} '
            f"{esc(row.task)}/{esc(row.metric)} {row.delta:+.3f} vs {esc(row.parent)}</span>"
            for row in rows.sort_values("status").itertuples()
        ]
        return f'<td class="chips">{" ".join(chips) or "none"}</td>'

    def gate(self) -> str:
        if not self.m.gate:
            return '<h2>Quality gate</h2><p class="muted">No gate configured.</p>'
        rows = []
        for node in self.merged:
            verdict = self.inputs.gates.get(node.name)
            if verdict:
                rows.append(
                    [
                        td(node.name),
                        gate_cell(verdict),
                        f'<td class="num">{fmt(verdict.get("value"))}</td>',
                        f'<td class="num">{fmt(verdict.get("threshold"))}</td>',
                        td(verdict.get("reason", "")),
                        td("yes" if verdict.get("stop") else "no"),
                    ]
                )
        table = table_html(
            ["node", "verdict", "value", "threshold", "reason", "stops what follows"], rows
        )
        return f"<h2>Quality gate</h2><p>Rule: {esc(parse_gate(self.m.gate).describe())}</p>" + (
            table if rows else ""
        )

    def lineage(self) -> str:
        rows = []
        for node in self.m.nodes.values():
            notes = node.source or ""
            if node.variants:
                chosen = self.inputs.selections.get(node.name, {}).get(
                    "selected", "not selected yet"
                )
                notes = f"best of {', '.join(node.variants)} → {chosen}"
            elif node.kind == "variant":
                notes = f"variant of {node.variant_of} {overrides_text(node)}"
            rows.append(
                [
                    td(node.name),
                    td(node.kind),
                    td(node.method or ""),
                    td(" + ".join(node.parents) or "—"),
                    td(notes),
                ]
            )
        states = {name: self.node_state(name) for name in self.m.nodes}
        svg = lineage_svg(self.m, states, self.selected)
        legend = (
            '<p class="legend muted"><span class="pass">gate passed</span><span class="fail">gate failed'
            '</span><span class="notrun">not run</span>bold border: the selected variant</p>'
        )
        return (
            "<h2>Lineage</h2>"
            + svg
            + legend
            + table_html(["node", "kind", "method", "parents", "notes"], rows)
        )

    def variants(self) -> str:
        out = []
        for node in self.m.nodes.values():
            if not node.variants:
                continue
            ranking = variant_ranking(self.m, self.table, node.name)
            if ranking is None:
                out.append(f'<p class="muted">{esc(node.name)}: no select metric configured</p>')
                continue
            metric, order = ranking
            chosen = self.inputs.selections.get(node.name, {}).get("selected")
            rows = []
            for i, entry in enumerate(order, 1):
                name = entry["name"]
                css = "best" if name == chosen else ""
                value, stderr = lookup(self.table, name, metric)
                rows.append(
                    [
                        td(i, css),
                        td(name, css),
                        td(overrides_text(self.m.node(name))),
                        value_cell(value, stderr),
                        gate_cell(self.inputs.gates.get(name)),
                        td("selected" if name == chosen else "", css),
                    ]
                )
            out.append(f"<h3>{esc(node.name)}: ranked by {esc(metric)}</h3>")
            out.append(table_html(["rank", "variant", "overrides", metric, "gate", ""], rows))
            missing = [v for v in node.variants if not self.ran(v)]
            if missing:
                out.append(f'<p class="notrun">not evaluated: {esc(", ".join(missing))}</p>')
        return "<h2>Variants</h2>" + "".join(out) if out else ""

    def details(self) -> str:
        out = ["<h2>Steps in detail</h2>"]
        for node in self.merged:
            origin = f"{node.kind} · {node.method or ''} · from {' + '.join(node.parents)}"
            out.append(
                f'<h3 id="{esc(node.name)}">{esc(node.name)} <span class="muted">{esc(origin)}</span></h3>'
            )
            if not self.ran(node.name):
                out.append(
                    f'<p class="notrun">{esc(not_run_reason(self.m, node.name, self.inputs.gates))}</p>'
                )
            else:
                out.append(eval_summary(self.inputs.results[node.name]))
                verdict = self.inputs.gates.get(node.name)
                if verdict:
                    css = "pass" if verdict.get("passed") else "fail"
                    out.append(
                        f'<p>Gate: <span class="{css}">{esc(verdict.get("reason", ""))}</span></p>'
                    )
                out.append(self.metric_table(node))
            out.append(self.origin(node))
        return "".join(out)

    def origin(self, node: Node) -> str:
        """Config and provenance. A step with variants *is* its selected variant, so it shows
        that variant's; until one is selected, the config the variants start from."""
        chosen = self.inputs.selections.get(node.name, {}).get("selected")
        source = self.m.node(chosen) if chosen else node
        note = ""
        if chosen:
            note = f'<p class="muted">{esc(node.name)} is its selected variant {esc(chosen)}.</p>'
        elif node.variants:
            note = (
                '<p class="muted">No variant selected yet: the config the variants start from.</p>'
            )
        out = [note]
        if source.config:
            out.append(
                f"<details><summary>merge config</summary><pre>{esc(source.config)}</pre></details>"
            )
        prov = self.inputs.provenance.get(source.name) or self.inputs.provenance.get(node.name)
        out.append(f"<details><summary>provenance</summary>{provenance_summary(prov)}</details>")
        return "".join(out)

    def metric_table(self, node: Node) -> str:
        """Every metric of one node with its delta against each parent."""
        rows = []
        for r in self.table[self.table.step == node.name].itertuples():
            by_parent = self.deltas_of(node.name, r.task, r.metric)
            arrow = "↑" if higher_is_better(r.metric) else "↓"
            cells = [
                td(r.task),
                td(f"{r.metric} {arrow}"),
                value_cell(r.value, r.stderr),
                f'<td class="num">{esc(r.n)}</td>',
            ]
            cells += [
                delta_cell(by_parent[p]) if p in by_parent else td("—", "neutral")
                for p in node.parents
            ]
            rows.append(cells)
        return table_html(
            ["task", "metric", "value ± stderr", "n"] + [f"Δ vs {p}" for p in node.parents], rows
        )

    def input_models(self) -> str:
        inputs = [n for n in self.m.nodes.values() if n.kind == "input"]
        if not inputs:
            return ""
        columns = list(dict.fromkeys(zip(self.table.task, self.table.metric)))
        indexed = self.table.set_index(["step", "task", "metric"])
        rows = []
        for node in inputs:
            cells = [td(node.name), td(node.source or "")]
            for task, metric in columns:
                key = (node.name, task, metric)
                if key in indexed.index:
                    cells.append(value_cell(indexed.loc[key, "value"], indexed.loc[key, "stderr"]))
                else:
                    cells.append(td("not run", "notrun"))
            rows.append(cells)
        headers = ["input", "source"] + [f"{t}/{m}" for t, m in columns]
        return "<h2>Input models</h2>" + table_html(headers, rows)

    def plot_section(self) -> str:
        images = [
            f'<img alt="{esc(task)}: metrics across steps" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'
            for task, png in self.plots.items()
        ]
        return "<h2>Metrics across steps</h2>" + (
            "".join(images) or '<p class="muted">No results yet.</p>'
        )


def overrides_text(node: Node) -> str:
    """``{"models": {"add": {"weight": 0.75}}}`` → ``models.add.weight=0.75``."""

    def flat(value: Any, prefix: str) -> list[str]:
        if isinstance(value, dict) and value:
            return [item for k, v in value.items() for item in flat(v, f"{prefix}{k}.")]
        return [f"{prefix.rstrip('.')}={value}"]

    return " ".join(flat(node.overrides, "")) if node.overrides else "(the step's own parameters)"


def render(inputs: ReportInputs, plots: dict[str, bytes]) -> str:
    """The HTML page. Plots arrive as PNG bytes and are embedded as data URIs."""
    return Page(inputs, plots).html()


def build(manifest_path: str | Path, out_dir: str | Path) -> dict[str, Path]:
    """Write metrics.csv, index.html and plots/<task>.png under ``out_dir``."""
    inputs = collect(load_manifest(manifest_path))
    table = metrics_table(inputs.results.items())
    out_dir = Path(out_dir)
    kinds = {name: node.kind for name, node in inputs.manifest.nodes.items()}
    plots = {task: plot_task(table, task, kinds) for task in dict.fromkeys(table.task)}
    written = {"metrics": out_dir / "metrics.csv", "html": out_dir / "index.html"}
    write_atomic(written["metrics"], table.to_csv(index=False, na_rep="NaN"))
    for task, png in plots.items():
        path = out_dir / "plots" / plot_filename(task)
        write_atomic(path, png)
        written[f"plot:{task}"] = path
    write_atomic(written["html"], render(inputs, plots))
    return written

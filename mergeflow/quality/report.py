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

from mergeflow.quality.files import read_json, read_optional_json, write_atomic
from mergeflow.quality.gate import parse_gate
from mergeflow.quality.metrics import (
    higher_is_better,
    improvement,
    lookup,
    metrics_table,
    model_label,
    spec_higher_is_better,
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
    expect: str | None = None  # a published model the step is verified against
    verify: str | None = None  # that verification's JSON (mergeflow verify --json)


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


def compare_pairs(table: pd.DataFrame, pairs: list[tuple[str, str]]) -> pd.DataFrame:
    """Every metric of ``step`` against the same metric of ``parent``, for each (step, parent).

    A delta is *significant* only when it exceeds the combined standard error
    √(se_node² + se_parent²); without a stderr on either side (lm-eval reports perplexities as
    "N/A") it is never significant, and ``status`` says "no stderr" instead of guessing.
    ``sigmas`` says by how much: |delta| in units of that combined stderr (1 is the threshold).
    """
    frame = pd.DataFrame(list(pairs), columns=["step", "parent"])
    mine = table.drop(columns=["model"])
    theirs = mine.rename(
        columns={
            "step": "parent",
            "value": "parent_value",
            "stderr": "parent_stderr",
            "n": "parent_n",
        }
    )
    out = frame.merge(mine, on="step").merge(theirs, on=["parent", "task", "metric"])
    out["delta"] = out.value - out.parent_value
    out["noise"] = (out.stderr**2 + out.parent_stderr**2) ** 0.5
    out["significant"] = (out.delta.abs() > out.noise) & out.noise.notna()
    # 0/0 (two identical values without spread, e.g. 1.0 ± 0 twice) is no difference at all.
    sigmas = out.delta.abs() / out.noise
    out["sigmas"] = sigmas.where(~((out.delta == 0) & (out.noise == 0)), 0.0)
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
            "sigmas",
            "significant",
            "status",
        ]
    ]


def compare(table: pd.DataFrame, manifest: Manifest) -> pd.DataFrame:
    """Every metric of every merged node against the same metric of each of its parents (see
    :func:`compare_pairs` for when a delta counts)."""
    return compare_pairs(table, [(n.name, p) for n in manifest.nodes.values() for p in n.parents])


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
        rest = [p for p in statuses if p not in better]
        return f"better than {', '.join(better)}; within noise of {', '.join(rest)}", "better"
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


def final_steps(manifest: Manifest) -> list[str]:
    """The steps nothing else is merged from: what a recipe produces."""
    used = {p for n in manifest.nodes.values() for p in n.parents}
    return [n.name for n in manifest.nodes.values() if n.kind == "step" and n.name not in used]


# --------------------------------------------------------------------------- number formatting


def decimals(spread: float | None, value: float | None = None) -> int:
    """Decimals that show a number to the precision its uncertainty allows: two significant
    digits of the stderr, between 3 and 6 decimals. Without a stderr, 3 decimals, or 3
    significant digits for a small number (an nll of 0.0012 must not print as 0.001)."""
    if spread is not None and not math.isnan(spread) and not math.isinf(spread) and spread > 0:
        return max(3, min(6, 1 - math.floor(math.log10(spread))))
    if value is not None and not math.isnan(value) and 0 < abs(value) < 0.01:
        return min(6, 2 - math.floor(math.log10(abs(value))))
    return 3


def fmt(value: float | None, digits: int = 3) -> str:
    return (
        "n/a"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else f"{value:.{digits}f}"
    )


def fmt_value(value: float | None, stderr: float | None, digits: int | None = None) -> str:
    """``0.903 ± 0.012``; just the value where there is no stderr. ``digits`` overrides the
    decimals (a table row printed to one precision)."""
    if value is None or math.isnan(value):
        return "n/a"
    digits = decimals(stderr, value) if digits is None else digits
    if stderr is None or math.isnan(stderr):
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} ± {stderr:.{digits}f}"


def fmt_delta(delta: float, noise: float, value: float | None = None) -> str:
    """A signed delta, to the precision of its noise (``+0.050``, ``-0.0012``)."""
    return f"{delta:+.{decimals(noise, value if value is not None else delta)}f}"


def fmt_sigmas(sigmas: float) -> str:
    """How many combined stderrs a delta spans: ``3.0σ``; ``≥100σ`` where the noise is ~0."""
    if sigmas is None or math.isnan(sigmas):
        return ""
    return "≥100σ" if sigmas >= 100 else f"{sigmas:.1f}σ"


def direction_arrow(metric: str) -> str:
    """↑ beside a metric where higher is better, ↓ where lower is (losses)."""
    return "↑" if higher_is_better(metric) else "↓"


def arrow(row: Any) -> str:
    """▲ for a change for the better, ▼ for the worse, = for none (direction-aware)."""
    if row.delta == 0:
        return "="
    return "▲" if improvement(row.delta, row.metric) > 0 else "▼"


STATUS_CSS = {
    "better": "better",
    "worse": "worse",
    "within noise": "noise",
    "no stderr": "nostderr",
}


def delta_text(row: Any, parent: bool = False) -> str:
    """``▲ +0.050 · 3.0σ``: direction, size and size in noise units of one comparison."""
    spread = fmt_sigmas(row.sigmas)
    text = f"{arrow(row)} {fmt_delta(row.delta, row.noise, row.value)}"
    if row.status == "no stderr":
        text += " · no stderr"
    elif spread:
        text += f" · {spread}"
    return (f"vs {row.parent}: " if parent else "") + text


def delta_title(row: Any) -> str:
    noise = (
        "no stderr: never flagged"
        if math.isnan(row.noise)
        else f"noise (combined stderr) ±{fmt(row.noise, decimals(row.noise))}"
    )
    return (
        f"{row.status}: {fmt_value(row.value, row.stderr)} vs {row.parent} "
        f"{fmt_value(row.parent_value, row.parent_stderr)}; {noise}"
    )


# --------------------------------------------------------------------------- plots


KIND_COLORS = {"input": "#718096", "variant": "#90cdf4", "step": "#2b6cb0"}
KIND_LABELS = {"input": "input model", "variant": "variant", "step": "step (= its chosen variant)"}


def node_groups(manifest: Manifest) -> dict[str, str]:
    """The stage each node belongs to on a plot's x axis: "inputs", or the step it is part of."""
    return {
        n.name: "inputs" if n.kind == "input" else (n.variant_of or n.name)
        for n in manifest.nodes.values()
    }


def plot_task(
    table: pd.DataFrame,
    task: str,
    kinds: dict[str, str],
    groups: dict[str, str],
) -> bytes:
    """One PNG per task: each of its metrics across the nodes, with stderr bars.

    Every metric gets its own panel because accuracies and losses live on different scales;
    the points are not joined, since the nodes are a recipe, not a time series. The x axis is
    in recipe order, split into stages (the inputs, then each step with its variants); a dotted
    line marks the best input model, the bar a merge has to clear, and each step's value is
    written next to it.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    rows = table[table.task == task]
    metrics = list(dict.fromkeys(rows.metric))
    nodes = list(dict.fromkeys(rows.step))
    position = {name: i for i, name in enumerate(nodes)}
    width = min(12.0, max(6.5, 0.55 * len(nodes) + 2.0))
    fig, axes = plt.subplots(
        len(metrics),
        1,
        figsize=(width, 1.3 + 2.8 * len(metrics)),
        squeeze=False,
        sharex=True,
        layout="constrained",
    )
    stages = [groups.get(name, "") for name in nodes]
    bounds = [i for i in range(1, len(nodes)) if stages[i] != stages[i - 1]]
    for ax, metric in zip(axes[:, 0], metrics):
        part = rows[rows.metric == metric]
        x = [position[s] for s in part.step]
        for kind, color in KIND_COLORS.items():
            mask = [kinds.get(step) == kind for step in part.step]
            if any(mask):
                ax.errorbar(
                    [i for i, keep in zip(x, mask) if keep],
                    part.value[mask],
                    yerr=part.stderr[mask].fillna(0),
                    fmt="o",
                    markersize=7 if kind == "step" else 6,
                    color=color,
                    ecolor=color,
                    elinewidth=1.5,
                    capsize=4,
                    zorder=3,
                )
        inputs = part[[kinds.get(s) == "input" for s in part.step]]
        if len(inputs):
            best = inputs.value.idxmax() if higher_is_better(metric) else inputs.value.idxmin()
            ax.axhline(inputs.value[best], color="#4a5568", linestyle=":", linewidth=1.2, zorder=1)
            # Labelled in the right margin, where no point can hide it.
            ax.annotate(
                f"best input\n{inputs.step[best]}",
                xy=(1, inputs.value[best]),
                xycoords=("axes fraction", "data"),
                xytext=(4, 0),
                textcoords="offset points",
                ha="left",
                va="center",
                fontsize=9,
                color="#4a5568",
                annotation_clip=False,
            )
        for step, value in zip(part.step, part.value):
            if kinds.get(step) == "step":
                ax.annotate(
                    f"{value:.{decimals(None, value)}f}",
                    xy=(position[step], value),
                    xytext=(8, 0),
                    textcoords="offset points",
                    va="center",
                    fontsize=9.5,
                    color=KIND_COLORS["step"],
                    fontweight="bold",
                )
        for bound in bounds:
            ax.axvline(bound - 0.5, color="#cbd5e0", linewidth=1, zorder=0)
        ax.set_xlim(-0.6, len(nodes) + 0.2)  # room for the last value's label
        direction = "higher is better ↑" if higher_is_better(metric) else "lower is better ↓"
        ax.set_ylabel(f"{metric}\n({direction})", fontsize=10.5)
        ax.tick_params(axis="y", labelsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
    top = axes[0, 0]
    starts = [0, *bounds]
    ends = [*bounds, len(nodes)]
    for start, end in zip(starts, ends):
        if stages[start]:
            top.annotate(
                stages[start],
                xy=((start + end - 1) / 2, 1),
                xycoords=("data", "axes fraction"),
                xytext=(0, 3),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=10,
                color="#4a5568",
                fontstyle="italic",
            )
    bottom = axes[-1, 0]
    bottom.set_xticks(range(len(nodes)), nodes, rotation=30, ha="right", fontsize=10.5)
    present = [k for k in KIND_COLORS if any(kinds.get(s) == k for s in nodes)]
    handles = [
        Line2D([], [], marker="o", linestyle="", color=KIND_COLORS[k], label=KIND_LABELS[k])
        for k in present
    ]
    handles.append(Line2D([], [], color="#4a5568", linestyle=":", label="best input model"))
    handles.append(Line2D([], [], color="#4a5568", label="bars: ±1 stderr"))
    fig.suptitle(task, fontsize=13, fontweight="bold")
    fig.legend(handles=handles, loc="outside lower center", ncol=3, fontsize=9.5, frameon=False)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


def plot_filename(task: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", task) + ".png"


# --------------------------------------------------------------------------- HTML pieces

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:20px auto;max-width:1280px;color:#1a202c;padding:0 16px}
h1{font-size:22px;margin:0 0 2px}h2{font-size:18px;margin-top:34px;border-bottom:2px solid #e2e8f0;padding-bottom:4px}
h3{font-size:15px;margin:24px 0 6px}h4{font-size:14px;margin:14px 0 4px}
nav{position:sticky;top:0;background:#fff;border-bottom:1px solid #e2e8f0;padding:6px 0;margin-bottom:8px;font-size:13px;z-index:1}
nav a{margin-right:14px}a{color:#2c5282;text-decoration:none}a:hover{text-decoration:underline}
table{border-collapse:collapse;margin:6px 0 12px;font-size:13px}th,td{border:1px solid #e2e8f0;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f7fafc;font-weight:600}th.group{text-align:center;background:#edf2f7}td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.scroll{overflow-x:auto}
.better{background:#c6f6d5;color:#22543d}.worse{background:#fed7d7;color:#742a2a}.mixed{background:#fefcbf;color:#744210}
.neutral{color:#4a5568}.noise{color:#718096}.nostderr{color:#718096;font-style:italic}
.pass{background:#c6f6d5;color:#22543d;font-weight:600}.fail{background:#fed7d7;color:#742a2a;font-weight:600}
.notrun{color:#718096;font-style:italic}.best{font-weight:700}.muted{color:#718096;font-size:12px}
.sub{font-size:12px;font-weight:400;color:#4a5568;white-space:nowrap}td.verdict{font-weight:600}
.list div{padding:1px 4px;margin:1px 0;font-variant-numeric:tabular-nums}.list.nowrap div{white-space:nowrap}
.list div.better,.list div.worse{font-weight:600}.list.changes div{font-size:12px;font-weight:400}
td.verdict{max-width:200px}
.summary{background:#f7fafc;border:1px solid #e2e8f0;border-radius:6px;padding:10px 16px 10px 30px;margin:12px 0}
.summary li{margin:3px 0}.summary span.better,.summary span.worse,.summary span.mixed,.summary span.pass,.summary span.fail{padding:0 5px;border-radius:3px}
pre{background:#f7fafc;border:1px solid #e2e8f0;padding:8px;overflow:auto;font-size:12px}
details{margin:4px 0 10px}summary{cursor:pointer;color:#2c5282}
.plots{display:grid;grid-template-columns:repeat(auto-fill,minmax(600px,1fr));gap:12px}
.plots img{width:100%;border:1px solid #e2e8f0}
.legend span{padding:1px 6px;margin-right:6px;border-radius:3px}
tr.variant td:first-child{padding-left:24px;color:#4a5568}
td:first-child{white-space:nowrap}
.origin{display:grid;grid-template-columns:minmax(0,1fr) minmax(0,1fr);gap:12px;align-items:start}
.origin h4{margin:4px 0}.origin ul{margin:0;padding-left:18px;font-size:12px;overflow-wrap:anywhere}.origin pre{margin:0}
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def value_cell(value: float, stderr: float, css: str = "") -> str:
    return f'<td class="{f"num {css}".strip()}">{esc(fmt_value(value, stderr))}</td>'


def delta_cell(row: Any) -> str:
    """A delta against one parent: green or red only when significant, grey otherwise."""
    css = STATUS_CSS[row.status]
    return f'<td class="num {css}" title="{esc(delta_title(row))}">{esc(delta_text(row))}</td>'


def table_html(headers: list[str], rows: list[list[str]], classes: list[str] | None = None) -> str:
    """Rows are lists of already-rendered ``<td>`` cells; ``classes`` optional row classes."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    classes = classes or [""] * len(rows)
    body = "".join(
        (f'<tr class="{c}">' if c else "<tr>") + "".join(r) + "</tr>" for r, c in zip(rows, classes)
    )
    return (
        f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
        "</div>"
    )


def td(text: Any, css: str = "") -> str:
    cls = f' class="{css}"' if css else ""
    return f"<td{cls}>{esc(text)}</td>"


def gate_words(verdict: dict | None) -> tuple[str, str, str]:
    """(label, CSS class, the numbers behind it) of one gate verdict."""
    if not verdict:
        return "—", "neutral", ""
    if verdict.get("metric") is None and verdict.get("passed"):
        return "no gate", "neutral", ""
    label = "PASS" if verdict.get("passed") else "FAIL"
    value, threshold = verdict.get("value"), verdict.get("threshold")
    detail = ""
    if value is not None and threshold is not None and not math.isnan(value):
        higher = spec_higher_is_better(str(verdict["metric"]))
        relation = ("≥" if higher else "≤") if verdict.get("passed") else ("<" if higher else ">")
        digits = max(decimals(None, value), decimals(None, threshold))
        detail = f"{fmt(value, digits)} {relation} {fmt(threshold, digits)}"
    return label, label.lower(), detail


def gate_cell(verdict: dict | None, numbers: bool = True) -> str:
    """PASS or FAIL, with the value and threshold under it unless ``numbers`` is False."""
    label, css, detail = gate_words(verdict)
    if label in ("—", "no gate"):
        return td(label, css)
    sub = f'<div class="sub">{esc(detail)}</div>' if detail and numbers else ""
    return f'<td class="{css}" title="{esc(verdict.get("reason", ""))}">{label}{sub}</td>'


def lineage_svg(
    manifest: Manifest,
    state: dict[str, str],
    selected: set[str],
    values: dict[str, str] | None = None,
) -> str:
    """The recipe as a left-to-right graph, drawn inline (no external library or URL).

    Columns are depths in the lineage; an input model sits in the column just before the first
    node built from it, so that its edges stay short. Solid edges lead from merge parents;
    dashed ones from a step's variants to the step, the selected variant's drawn bold. Fill is
    the gate verdict; the third line of a box is ``values[name]`` (the headline metric).
    """
    values = values or {}
    children: dict[str, list[str]] = {name: [] for name in manifest.nodes}
    for name in manifest.nodes:
        for parent in manifest.lineage_parents(name):
            children[parent].append(name)
    depth: dict[str, int] = {}

    def depth_of(name: str) -> int:
        if name not in depth:
            depth[name] = 1 + max(map(depth_of, manifest.lineage_parents(name)), default=-1)
        return depth[name]

    for name in manifest.nodes:
        depth_of(name)
    for name, node in manifest.nodes.items():
        if node.kind == "input" and children[name]:
            depth[name] = max(0, min(depth[c] for c in children[name]) - 1)

    columns: dict[int, list[str]] = {}
    for name in manifest.nodes:
        columns.setdefault(depth[name], []).append(name)
    row: dict[str, float] = {}
    for d in sorted(columns):
        names = columns[d]

        def barycenter(name: str) -> tuple[int, float]:
            parents = manifest.lineage_parents(name)
            if manifest.node(name).kind == "input" or not parents:
                return (1, 0.0)  # inputs after the nodes that continue a chain
            return (0, sum(row[p] for p in parents) / len(parents))

        names.sort(key=barycenter)  # stable: recipe order breaks ties
        for i, name in enumerate(names):
            row[name] = i
    rows_max = max(map(len, columns.values()))
    longest = max(len(name) for name in manifest.nodes)
    box_w, box_h, gap_x, gap_y, pad = max(150, 8 * longest + 24), 52, 56, 14, 10
    pos = {}
    for d, names in columns.items():
        offset = (rows_max - len(names)) * (box_h + gap_y) / 2
        for i, name in enumerate(names):
            pos[name] = (pad + d * (box_w + gap_x), pad + offset + i * (box_h + gap_y))
    width = pad * 2 + (max(columns) + 1) * (box_w + gap_x) - gap_x
    height = pad * 2 + rows_max * (box_h + gap_y) - gap_y
    parts = [
        f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="recipe lineage" font-family="system-ui,sans-serif">'
    ]
    for name in manifest.nodes:
        x2, y2 = pos[name]
        for parent in manifest.lineage_parents(name):
            x1, y1 = pos[parent]
            a, b = (x1 + box_w, y1 + box_h / 2), (x2, y2 + box_h / 2)
            mid = (a[0] + b[0]) / 2
            if not manifest.node(name).variants:
                style = 'stroke="#a0aec0" stroke-width="1.5"'
            elif parent in selected:
                style = 'stroke="#2b6cb0" stroke-width="3"'
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
        kind = node.method or node.kind
        if node.kind == "variant":
            kind = f"variant · {kind}"
        third = values.get(name) or ("not run" if state.get(name) == "notrun" else "")
        parts.append(
            f"<g><title>{esc(name)}: {esc(node.kind)}, {esc(state.get(name) or 'no gate')}</title>"
            f'<rect x="{x}" y="{y}" width="{box_w}" height="{box_h}" rx="6" '
            f'fill="{fills.get(state.get(name, ""), "#ffffff")}" stroke="{stroke}"{extra}/>'
            f'<text x="{cx}" y="{y + 16}" text-anchor="middle" font-size="12" font-weight="600">'
            f"{esc(name)}</text>"
            f'<text x="{cx}" y="{y + 30}" text-anchor="middle" font-size="10" fill="#4a5568">'
            f"{esc(kind)}</text>"
            f'<text x="{cx}" y="{y + 44}" text-anchor="middle" font-size="10.5" fill="#1a202c">'
            f"{esc(third)}</text></g>"
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
    return '<p class="muted">Evaluation: ' + esc(" · ".join(parts)) + "</p>"


def overrides_text(node: Node) -> str:
    """``{"models": {"add": {"weight": 0.75}}}`` → ``models.add.weight=0.75``."""

    def flat(value: Any, prefix: str) -> list[str]:
        if isinstance(value, dict) and value:
            return [item for k, v in value.items() for item in flat(v, f"{prefix}{k}.")]
        return [f"{prefix.rstrip('.')}={value}"]

    return " ".join(flat(node.overrides, "")) if node.overrides else "(the step's own parameters)"


# --------------------------------------------------------------------------- the page


@dataclass
class ReportInputs:
    """Everything the report reads from disk, so that rendering is a pure function of it."""

    manifest: Manifest
    results: dict[str, dict[str, Any]]
    gates: dict[str, dict[str, Any]]
    selections: dict[str, dict[str, Any]]
    provenance: dict[str, dict[str, Any]]
    verifications: dict[str, dict[str, Any]] = field(default_factory=dict)


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
        verifications=each("verify"),
    )


SECTIONS = [
    ("glance", "At a glance"),
    ("lineage", "Lineage"),
    ("gate", "Quality gate"),
    ("variants", "Variants"),
    ("plots", "Metrics across steps"),
    ("scores", "All scores"),
    ("details", "Steps in detail"),
]


def anchor(name: str) -> str:
    return "node-" + re.sub(r"[^A-Za-z0-9_.-]", "_", name)


class Page:
    """The report's sections, in the order a reader needs them: verdicts first, evidence after."""

    def __init__(self, inputs: ReportInputs, table: pd.DataFrame, plots: dict[str, bytes]):
        self.inputs, self.table, self.plots, self.m = inputs, table, plots, inputs.manifest
        self.deltas = compare(self.table, self.m)
        self.best_parent = against_best_parent(self.deltas)
        self.headline = headline_metric(self.m, self.table)
        self.merged = [n for n in self.m.nodes.values() if n.kind != "input"]
        self.steps = [n for n in self.m.nodes.values() if n.kind == "step"]
        self.selected = {s["selected"] for s in inputs.selections.values()}

    # ---------------------------------------------------------------- lookups

    def ran(self, name: str) -> bool:
        return name in self.inputs.results

    def node_state(self, name: str) -> str:
        """The gate verdict ("pass" or "fail"), "notrun", or "" where no gate ran."""
        verdict = self.inputs.gates.get(name)
        if not self.ran(name):
            return "notrun"
        if verdict is not None and verdict.get("metric") is not None:
            return "pass" if verdict.get("passed") else "fail"
        return ""

    def value_of(self, name: str, spec: str) -> tuple[float, float] | None:
        """(value, stderr) as :func:`lookup` gives it, or None where the node has no such result."""
        try:
            return lookup(self.table, name, spec)
        except KeyError:
            return None

    def deltas_of(self, name: str, task: str, metric: str) -> dict[str, Any]:
        d = self.deltas
        hits = d[(d.step == name) & (d.task == task) & (d.metric == metric)]
        return {row.parent: row for row in hits.itertuples()}

    def pair(self, name: str, other: str, spec: str) -> Any | None:
        """``name`` against ``other`` (any two nodes) on one metric, as a comparison row."""
        task, metric = split_spec(spec)
        rows = compare_pairs(self.table, [(name, other)])
        rows = rows[(rows.task == task) & (rows.metric == metric)]
        return next(rows.itertuples(), None)

    def chosen(self, step: str) -> str | None:
        return self.inputs.selections.get(step, {}).get("selected")

    # ---------------------------------------------------------------- the page

    def html(self) -> str:
        direction = ""
        if self.headline:
            better = "higher" if spec_higher_is_better(self.headline) else "lower"
            direction = f" ({better} is better)"
        inputs = sum(n.kind == "input" for n in self.m.nodes.values())
        variants = sum(n.kind == "variant" for n in self.m.nodes.values())
        nav = " ".join(f'<a href="#{key}">{esc(title)}</a>' for key, title in SECTIONS)
        head = (
            '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>mergeflow quality report</title><style>{CSS}</style></head><body>"
            "<h1>mergeflow quality report</h1>"
            f'<p class="muted">{inputs} input models · {len(self.steps)} steps · {variants} '
            f"variants · {len(self.inputs.results)} of {len(self.m.nodes)} nodes evaluated · "
            f"headline metric <b>{esc(self.headline)}</b>{direction}</p>"
            f"<nav>{nav}</nav>"
        )
        sections = [
            self.glance(),
            self.lineage(),
            self.gate(),
            self.variants(),
            self.plot_section(),
            self.scores(),
            self.details(),
            self.published_checks(),
        ]
        return head + "\n".join(sections) + "\n</body></html>\n"

    # ---------------------------------------------------------------- at a glance

    def glance(self) -> str:
        out = ['<h2 id="glance">At a glance</h2>', self.bottom_line()]
        if not self.headline:
            return "".join(out)
        task, metric = split_spec(self.headline)
        rows = []
        for node in self.steps:
            cells = [self.step_cell(node)]
            gate = gate_cell(self.inputs.gates.get(node.name))
            if not self.ran(node.name):
                reason = not_run_reason(self.m, node.name, self.inputs.gates)
                rows.append(
                    cells + [f'<td class="notrun" colspan="3">{esc(reason)}</td>', gate, td("")]
                )
                continue
            hit = self.value_of(node.name, self.headline)
            by_parent = self.deltas_of(node.name, task, metric)
            text, css = overall({p: row.status for p, row in by_parent.items()})
            cells.append(f'<td class="verdict {css}">{esc(text)}</td>')
            cells.append(value_cell(*hit) if hit else td("missing", "notrun"))
            cells.append(self.parents_cell(node, by_parent))
            rows.append(cells + [gate, self.other_changes(node.name, task, metric)])
        headers = [
            "step",
            f"verdict on {self.headline}",
            f"{self.headline} {direction_arrow(metric)}",
            "Δ vs each parent (size · in noise units σ)",
            "gate",
            "other metrics beyond noise, vs their best parent",
        ]
        out.append(table_html(headers, rows))
        out.append(
            '<p class="legend muted"><span class="better">better, beyond noise</span>'
            '<span class="worse">worse, beyond noise</span><span class="noise">within noise</span>'
            "▲/▼: better/worse, whatever the metric's direction. σ is the combined stderr "
            "√(se<sub>step</sub>² + se<sub>parent</sub>²); a delta counts only above 1σ, and "
            "metrics without a stderr (perplexities) are never flagged. A step with variants "
            "is shown with its chosen variant's numbers.</p>"
        )
        return "".join(out)

    def step_cell(self, node: Node) -> str:
        lines = [f'<a href="#{anchor(node.name)}"><b>{esc(node.name)}</b></a>']
        lines.append(
            f'<div class="sub">{esc(node.method or "")} ← {esc(" + ".join(node.parents))}</div>'
        )
        if node.variants:
            chosen = self.chosen(node.name)
            pick = f"chose {chosen}" if chosen else "no variant chosen yet"
            lines.append(f'<div class="sub">{esc(pick)} of {len(node.variants)} variants</div>')
        return f"<td>{''.join(lines)}</td>"

    def parents_cell(self, node: Node, by_parent: dict[str, Any]) -> str:
        """One line per parent; the parent that did best on the metric is marked."""
        best = None
        if by_parent:
            sign = 1.0 if higher_is_better(next(iter(by_parent.values())).metric) else -1.0
            best = max(by_parent, key=lambda p: sign * by_parent[p].parent_value)
        lines = []
        for parent in node.parents:
            row = by_parent.get(parent)
            if row is None:
                lines.append(f'<div class="notrun">vs {esc(parent)}: no result</div>')
                continue
            tag = " (best parent)" if parent == best and len(by_parent) > 1 else ""
            lines.append(
                f'<div class="{STATUS_CSS[row.status]}" title="{esc(delta_title(row))}">'
                f"{esc(delta_text(row, parent=True))}{esc(tag)}</div>"
            )
        return f'<td class="list nowrap">{"".join(lines)}</td>'

    def other_changes(self, name: str, task: str, metric: str) -> str:
        """Significant gains and losses on every other metric, so that a good headline cannot
        hide a skill the merge lost. Losses first."""
        b = self.best_parent
        mine = b[(b.step == name) & ~((b.task == task) & (b.metric == metric))]
        hits = mine[mine.significant]
        hits = hits.assign(order=hits.status.map({"worse": 0, "better": 1})).sort_values(
            ["order", "sigmas"], ascending=[True, False]
        )
        lines = [
            f'<div class="{row.status}" title="{esc(delta_title(row))}">{arrow(row)} '
            f"{esc(row.task)}/{esc(row.metric)} {fmt_delta(row.delta, row.noise, row.value)} "
            f"({fmt_sigmas(row.sigmas)}) vs {esc(row.parent)}</div>"
            for row in hits.itertuples()
        ]
        quiet = len(mine) - len(hits)
        if quiet:
            lines.append(f'<div class="noise">{quiet} more within noise or without stderr</div>')
        return f'<td class="list changes">{"".join(lines) or "none"}</td>'

    def bottom_line(self) -> str:
        """Three or four sentences: where the recipe ended, whether that is the best step,
        what the gate said, and whether the variant choices meant anything."""
        if not self.headline:
            return '<p class="muted">No results yet.</p>'
        task, metric = split_spec(self.headline)
        scored = {
            s.name: found for s in self.steps if (found := self.value_of(s.name, self.headline))
        }
        items = []
        finals = final_steps(self.m)
        for name in finals:
            link = f'<a href="#{anchor(name)}"><b>{esc(name)}</b></a>'
            hit = scored.get(name)
            if not self.ran(name) or hit is None:
                reason = not_run_reason(self.m, name, self.inputs.gates)
                line = f'Final step {link}: <span class="notrun">{esc(reason)}</span>'
                last = next((a for a in self.m.ancestors(name) if a in scored), None)
                if last:
                    line += (
                        f'; the last evaluated step before it is <a href="#{anchor(last)}">'
                        f"<b>{esc(last)}</b></a> {esc(fmt_value(*scored[last]))}"
                    )
                items.append(line)
                continue
            text, css = overall(
                {p: r.status for p, r in self.deltas_of(name, task, metric).items()}
            )
            items.append(
                f"Final step {link}: {esc(self.headline)} {esc(fmt_value(*hit))}, "
                f'<span class="{css}">{esc(text)}</span>'
            )
        sign = 1.0 if higher_is_better(metric) else -1.0
        if scored:
            best = max(scored, key=lambda s: sign * scored[s][0])
            line = (
                f'Best step on {esc(self.headline)}: <a href="#{anchor(best)}"><b>{esc(best)}</b>'
                f"</a> {esc(fmt_value(*scored[best]))}"
            )
            behind = [f for f in finals if f in scored and f != best]
            for name in behind:
                row = self.pair(name, best, self.headline)
                if row is not None:
                    line += (
                        f"; final step {esc(name)} differs by "
                        f"{esc(fmt_delta(row.delta, row.noise, row.value))} "
                        f"({esc(fmt_sigmas(row.sigmas) or 'no stderr')}): "
                        f'<span class="{STATUS_CSS[row.status]}">{esc(row.status)}</span>'
                    )
            items.append(line)
        if self.m.gate:
            verdicts = [self.inputs.gates.get(s.name) for s in self.steps]
            passed = sum(
                bool(v and v.get("passed") and self.ran(s.name))
                for v, s in zip(verdicts, self.steps)
            )
            failed = [
                s.name
                for v, s in zip(verdicts, self.steps)
                if v and not v.get("passed") and self.ran(s.name)
            ]
            notrun = [s.name for s in self.steps if not self.ran(s.name)]
            line = f"Gate: {passed} of {len(self.steps)} steps passed"
            if failed:
                line += f', <span class="fail">failed: {esc(", ".join(failed))}</span>'
            if notrun:
                line += f'; <span class="notrun">not run: {esc(", ".join(notrun))}</span>'
            items.append(
                f'{line} <span class="muted">({esc(parse_gate(self.m.gate).describe())})</span>'
            )
        picks = []
        for node in self.steps:
            ranking = variant_ranking(self.m, self.table, node.name)
            chosen = self.chosen(node.name)
            if not ranking or not chosen or len(ranking[1]) < 2:
                continue
            spec, order = ranking
            runner_up = next((e["name"] for e in order if e["name"] != chosen), None)
            row = self.pair(chosen, runner_up, spec) if runner_up else None
            if row is None:
                continue
            margin = "lead within noise" if row.status != "better" else "lead beyond noise"
            picks.append(
                f"{esc(node.name)} → {esc(chosen)} ({fmt_delta(row.delta, row.noise, row.value)}"
                f" over {esc(runner_up)}, {fmt_sigmas(row.sigmas) or 'no stderr'}: {margin})"
            )
        if picks:
            items.append("Variant choices: " + "; ".join(picks))
        return f'<ul class="summary">{"".join(f"<li>{i}</li>" for i in items)}</ul>'

    # ---------------------------------------------------------------- gate

    def gate(self) -> str:
        if not self.m.gate:
            return '<h2 id="gate">Quality gate</h2><p class="muted">No gate configured.</p>'
        rows, classes = [], []
        for node in self.merged:
            verdict = self.inputs.gates.get(node.name)
            if not verdict:
                continue
            reference = ""
            if verdict.get("reference_step"):
                reference = f"{verdict['reference_step']} {fmt_value(verdict.get('reference'), None)}"
            note = "" if verdict.get("passed") else verdict.get("reason", "")
            value, threshold = verdict.get("value"), verdict.get("threshold")
            rows.append(
                [
                    td(node.name),
                    gate_cell(verdict, numbers=False),
                    f'<td class="num">{fmt_value(value, None)}</td>',
                    f'<td class="num">{fmt_value(threshold, None)}</td>',
                    td(reference),
                    td("yes" if verdict.get("stop") else "no"),
                    td(note),
                ]
            )
            classes.append("variant" if node.kind == "variant" else "")
        table = table_html(
            ["node", "verdict", "value", "threshold", "best parent", "stopped later steps", "note"],
            rows,
            classes,
        )
        rule = parse_gate(self.m.gate).describe()
        return (
            f'<h2 id="gate">Quality gate</h2><p>Rule: {esc(rule)}. Variants are indented.</p>'
            + (table if rows else '<p class="muted">No gate has run yet.</p>')
        )

    # ---------------------------------------------------------------- lineage

    def lineage(self) -> str:
        rows = []
        for node in self.m.nodes.values():
            notes = node.source or ""
            if node.variants:
                chosen = self.chosen(node.name) or "not selected yet"
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
        values = {}
        if self.headline:
            for name in self.m.nodes:
                hit = self.value_of(name, self.headline)
                if hit:
                    values[name] = fmt_value(*hit)
        svg = lineage_svg(self.m, states, self.selected, values)
        legend = (
            '<p class="legend muted"><span class="pass">gate passed</span><span class="fail">'
            'gate failed</span><span class="notrun">not run (dashed)</span>grey border: input '
            "model · bold border and edge: the chosen variant · third line: "
            f"{esc(self.headline or '')}</p>"
        )
        return (
            '<h2 id="lineage">Lineage</h2><div class="scroll">'
            + svg
            + "</div>"
            + legend
            + "<details><summary>lineage as a table (sources, variant overrides)</summary>"
            + table_html(["node", "kind", "method", "parents", "notes"], rows)
            + "</details>"
        )

    # ---------------------------------------------------------------- variants

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
            chosen = self.chosen(node.name)
            winner = chosen or (order[0]["name"] if order else None)
            rows = []
            for i, entry in enumerate(order, 1):
                name = entry["name"]
                css = "best" if name == chosen else ""
                value, stderr = lookup(self.table, name, metric)
                row = self.pair(name, winner, metric) if winner and name != winner else None
                rows.append(
                    [
                        td(i, css),
                        td(name, css),
                        td(overrides_text(self.m.node(name))),
                        value_cell(value, stderr),
                        delta_cell(row) if row is not None else td("—", "neutral"),
                        gate_cell(self.inputs.gates.get(name)),
                        td(f"selected → {node.name}" if name == chosen else "", css),
                    ]
                )
            arrow_ = direction_arrow(split_spec(metric)[1])
            out.append(f"<h3>{esc(node.name)}: variants ranked by {esc(metric)} {arrow_}</h3>")
            out.append(
                table_html(
                    ["rank", "variant", "overrides", metric, "Δ vs winner", "gate", "chosen"], rows
                )
            )
            missing = [v for v in node.variants if not self.ran(v)]
            if missing:
                out.append(f'<p class="notrun">not evaluated: {esc(", ".join(missing))}</p>')
        if not out:
            return ""
        return '<h2 id="variants">Variants</h2>' + "".join(out)

    # ---------------------------------------------------------------- plots and scores

    def plot_section(self) -> str:
        images = [
            f'<img alt="{esc(task)}: metrics across steps" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'
            for task, png in self.plots.items()
        ]
        intro = (
            '<p class="muted">One plot per lm-eval task, nodes in recipe order: input models, '
            "then each step after its variants. Bars are ±1 stderr; the dotted line is the best "
            "input model.</p>"
        )
        return '<h2 id="plots">Metrics across steps</h2>' + (
            intro + f'<div class="plots">{"".join(images)}</div>'
            if images
            else '<p class="muted">No results yet.</p>'
        )

    def scores(self) -> str:
        """Every metric (rows) of every input model and step (columns), best of each row bold."""
        inputs = [n.name for n in self.m.nodes.values() if n.kind == "input"]
        steps = [n.name for n in self.steps]
        if self.table.empty:
            return ""
        columns = list(dict.fromkeys(zip(self.table.task, self.table.metric)))
        indexed = self.table.set_index(["step", "task", "metric"])
        rows = []
        for task, metric in columns:
            sign = 1.0 if higher_is_better(metric) else -1.0
            present = {
                name: indexed.loc[(name, task, metric)]
                for name in inputs + steps
                if (name, task, metric) in indexed.index
            }
            top = max((sign * r.value for r in present.values()), default=None)
            cells = [td(f"{task}/{metric} {direction_arrow(metric)}")]
            for name in inputs + steps:
                if name in present:
                    r = present[name]
                    css = "best" if sign * r.value == top else ""
                    cells.append(value_cell(r.value, r.stderr, css))
                else:
                    cells.append(td("not run", "notrun"))
            rows.append(cells)
        group = (
            f'<tr><th></th><th class="group" colspan="{len(inputs)}">input models</th>'
            f'<th class="group" colspan="{len(steps)}">steps</th></tr>'
        )
        table = table_html(["task/metric"] + inputs + steps, rows).replace(
            "<thead>", "<thead>" + group, 1
        )
        return (
            '<h2 id="scores">All scores</h2><p class="muted">Value ± stderr, each to the '
            "precision of its stderr; the best of each row is bold. Variants are under "
            '<a href="#variants">Variants</a> and in each step\'s details.</p>' + table
        )

    # ---------------------------------------------------------------- published checks

    def published_checks(self) -> str:
        """Steps with ``expect:``: bit-identical to the published model or not (mergeflow verify)."""
        expecting = [n for n in self.steps if n.expect]
        if not expecting:
            return ""
        rows = []
        for node in expecting:
            record = self.inputs.verifications.get(node.name)
            if record is None:
                rows.append([td(node.name), td(node.expect), td("not run", "muted"), td("")])
                continue
            identical = record.get("verdict") == "identical"
            differing = record.get("differing", [])
            names = [d["name"] for d in differing] + record.get("only_in_model", []) + record.get("only_in_reference", [])
            what = "" if identical else f"{len(names)} tensor(s) differ: {', '.join(names[:5])}" + (" ..." if len(names) > 5 else "")
            rows.append([td(node.name), td(record.get("reference", node.expect)),
                         td("identical" if identical else "different", "pass" if identical else "fail"), td(what)])
        return ('<h2 id="published">Published-model checks</h2><p class="muted">Steps with <code>expect:</code>, '
                "compared tensor by tensor with the published model (bit-identical or not).</p>"
                + table_html(["step", "expected", "verdict", "differences"], rows))

    # ---------------------------------------------------------------- details

    def details(self) -> str:
        out = ['<h2 id="details">Steps in detail</h2>']
        for node in self.steps:
            out.append(self.node_detail(node, "h3"))
            if node.variants:
                inner = "".join(self.node_detail(self.m.node(v), "h4") for v in node.variants)
                out.append(
                    f"<details><summary>{esc(node.name)}'s {len(node.variants)} variants: "
                    f"metrics, config, provenance</summary>{inner}</details>"
                )
        return "".join(out)

    def node_detail(self, node: Node, tag: str) -> str:
        origin = f"{node.kind} · {node.method or ''} · from {' + '.join(node.parents)}"
        if node.kind == "variant":
            origin += f" · {overrides_text(node)}"
        out = [
            f'<{tag} id="{anchor(node.name)}">{esc(node.name)} '
            f'<span class="muted">{esc(origin)}</span></{tag}>'
        ]
        if not self.ran(node.name):
            out.append(
                f'<p class="notrun">{esc(not_run_reason(self.m, node.name, self.inputs.gates))}</p>'
            )
        else:
            out.append(eval_summary(self.inputs.results[node.name]))
            verdict = self.inputs.gates.get(node.name)
            if verdict:
                label, css, _ = gate_words(verdict)
                out.append(
                    f'<p>Gate: <span class="{css}">{esc(label)}</span> '
                    f'<span class="neutral">{esc(verdict.get("reason", ""))}</span></p>'
                )
            out.append(self.metric_table(node))
        out.append(self.origin(node))
        return "".join(out)

    def origin(self, node: Node) -> str:
        """Config and provenance. A step with variants *is* its selected variant, so it shows
        that variant's; until one is selected, the config the variants start from."""
        chosen = self.chosen(node.name)
        source = self.m.node(chosen) if chosen else node
        note = ""
        if chosen:
            note = f'<p class="muted">{esc(node.name)} is its selected variant {esc(chosen)}.</p>'
        elif node.variants:
            note = (
                '<p class="muted">No variant selected yet: the config the variants start from.</p>'
            )
        config = (
            f"<pre>{esc(source.config)}</pre>"
            if source.config
            else '<p class="notrun">no merge config in the manifest</p>'
        )
        prov = self.inputs.provenance.get(source.name) or self.inputs.provenance.get(node.name)
        return (
            f'{note}<div class="origin"><div><h4>merge config</h4>{config}</div>'
            f"<div><h4>provenance</h4>{provenance_summary(prov)}</div></div>"
        )

    def metric_table(self, node: Node) -> str:
        """Every metric of one node with its delta against each parent."""
        rows = []
        for r in self.table[self.table.step == node.name].itertuples():
            by_parent = self.deltas_of(node.name, r.task, r.metric)
            cells = [
                td(r.task),
                td(f"{r.metric} {direction_arrow(r.metric)}"),
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


def render(inputs: ReportInputs, table: pd.DataFrame, plots: dict[str, bytes]) -> str:
    """The HTML page from the inputs and their metrics table. Plots arrive as PNG bytes and are
    embedded as data URIs."""
    return Page(inputs, table, plots).html()


def build(manifest_path: str | Path, out_dir: str | Path) -> dict[str, Path]:
    """Write metrics.csv, index.html and plots/<task>.png under ``out_dir``."""
    inputs = collect(load_manifest(manifest_path))
    table = metrics_table(inputs.results.items())
    out_dir = Path(out_dir)
    kinds = {name: node.kind for name, node in inputs.manifest.nodes.items()}
    groups = node_groups(inputs.manifest)
    plots = {task: plot_task(table, task, kinds, groups) for task in dict.fromkeys(table.task)}
    written = {"metrics": out_dir / "metrics.csv", "html": out_dir / "index.html"}
    write_atomic(written["metrics"], table.to_csv(index=False, na_rep="NaN"))
    for task, png in plots.items():
        path = out_dir / "plots" / plot_filename(task)
        write_atomic(path, png)
        written[f"plot:{task}"] = path
    write_atomic(written["html"], render(inputs, table, plots))
    return written

"""The few lines a pipeline run ends with: each step's verdict, gate, chosen variant, report path.

Printed by the workflow when it finishes (success or failure), from whatever results exist, with
the same statistics as the report. A gate that stopped steps gets a line starting ``GATE STOP``;
the run's exit status stays 0 for a gate stop (it is a result, not an error).
"""

from __future__ import annotations

from pathlib import Path

from mergeflow.quality.formatting import fmt_value, level_text
from mergeflow.quality.manifest import collect, load_manifest
from mergeflow.quality.metrics import metrics_table
from mergeflow.quality.defaults import DEFAULT_LEVEL
from mergeflow.quality.texts import gate_words
from mergeflow.quality.verdicts import base_step, not_run_reason, overall
from mergeflow.quality.view import Report


def summary_lines(
    manifest_path: str | Path, report_path: str | Path, level: float = DEFAULT_LEVEL
) -> list[str]:
    if not Path(manifest_path).is_file():
        return ["mergeflow: no results to summarise yet (see results/logs/)"]
    inputs = collect(load_manifest(manifest_path))
    report = Report(inputs, metrics_table(inputs.results.items()), {}, level)
    headline = report.headline
    if headline is None:
        return ["mergeflow: no step has been evaluated yet (see results/logs/)"]
    higher = report.higher(headline)
    direction = {True: "higher is better", False: "lower is better"}.get(higher, "direction ?")
    task, metric = headline.split("/", 1)
    lines = [f"mergeflow summary: {headline} ({direction}; {level_text(level)} paired tests)"]
    width = max(len(s.name) for s in report.steps) if report.steps else 0
    for node in report.steps:
        if not report.ran(node.name):
            reason = not_run_reason(report.m, node.name, inputs.gates)
            lines.append(f"  {node.name:<{width}}  {reason}")
            continue
        hit = report.value_of(node.name, headline)
        statuses = {p: r.status for p, r in report.deltas_of(node.name, task, metric).items()}
        verdict, _ = overall(statuses, base_step(report.m, node))
        parts = [fmt_value(*hit) if hit else "no value", verdict]
        gate = inputs.gates.get(node.name)
        if gate and gate.get("metric") is not None:
            label, _, detail = gate_words(gate, report.higher(str(gate["metric"])))
            parts.append(f"gate {label}" + (f" ({detail})" if detail else ""))
        chosen = report.chosen(node.name)
        if chosen:
            parts.append(f"chose {chosen} of {len(node.variants)} variants")
        lines.append(f"  {node.name:<{width}}  " + " · ".join(parts))
    for node in report.steps:
        gate = inputs.gates.get(node.name) or {}
        if gate.get("stop") and not gate.get("passed", True):
            stopped = [n for n in report.m.nodes if node.name in report.m.ancestors(n)]
            stopped = [n for n in stopped if report.m.node(n).kind == "step"]
            lines.append(f"GATE STOP: {gate.get('reason')}; not run: {', '.join(stopped) or '-'}")
    lines.append(f"  report: {report_path}")
    return lines


def print_summary(
    manifest_path: str | Path, report_path: str | Path, level: float = DEFAULT_LEVEL
) -> None:
    """Print :func:`summary_lines`; a problem reading the results is one line, never a crash
    of the run's final handler."""
    try:
        lines = summary_lines(manifest_path, report_path, level)
    except (KeyError, ValueError, OSError) as error:
        lines = [f"mergeflow: no summary ({type(error).__name__}: {error})"]
    print("\n".join(lines), flush=True)

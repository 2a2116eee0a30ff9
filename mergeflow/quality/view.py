"""The report's view model: every section as plain data the Jinja2 template lays out.

A user decides from this page what to ship, so it answers first, for every step, whether it is
better or worse than what it was made from and whether that difference is beyond noise; lineage,
plots, configs and provenance follow for whoever wants to check.

Nothing here writes HTML: a table is ``{"headers": [...], "rows": [[cell, ...], ...]}``, a cell
a dict (:func:`cell`), rich text a list of parts (:func:`part`); the template escapes every
string. To add a column to the at-a-glance table, add an entry to :data:`GLANCE_COLUMNS`.
"""

from __future__ import annotations

import base64
from typing import Any, Callable

import pandas as pd

from mergeflow.quality.formatting import fmt_p, fmt_signed, fmt_value, level_text
from mergeflow.quality.gate import parse_gate
from mergeflow.quality.lineage import layout
from mergeflow.quality.manifest import Node, ReportInputs
from mergeflow.quality.metrics import direction, lookup, split_spec
from mergeflow.quality.defaults import DEFAULT_LEVEL
from mergeflow.quality.statistics import METHODS, compare_pairs
from mergeflow.quality.texts import (
    STATUS_CSS,
    anchor,
    arrow_of,
    cell,
    change_arrow,
    delta_text,
    delta_title,
    eval_summary,
    gate_words,
    overrides_text,
    part,
    provenance_items,
    spread_of,
)
from mergeflow.quality.variants import rank
from mergeflow.quality.verdicts import (
    base_step,
    final_steps,
    headline_metric,
    not_run_reason,
    overall,
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
PUBLISHED = ("published", "Published-model checks")  # listed only when a step has ``expect:``


class Report:
    """Lookups over one report's inputs; :meth:`view` is the whole page as data."""

    def __init__(
        self,
        inputs: ReportInputs,
        table: pd.DataFrame,
        plots: dict[str, bytes],
        level: float = DEFAULT_LEVEL,
    ):
        self.inputs, self.table, self.plots, self.m = inputs, table, plots, inputs.manifest
        self.level = level
        pairs = [(n.name, p) for n in self.m.nodes.values() for p in n.parents]
        pairs = [(s, p) for s, p in pairs if self.ran(s) and self.ran(p)]
        self.deltas = compare_pairs(table, inputs.results, pairs, level)
        self.headline = headline_metric(self.m, table)
        self.merged = [n for n in self.m.nodes.values() if n.kind != "input"]
        self.steps = [n for n in self.m.nodes.values() if n.kind == "step"]
        self.selected = {s["selected"] for s in inputs.selections.values()}

    # ---------------------------------------------------------------- lookups

    def ran(self, name: str) -> bool:
        return name in self.inputs.results

    def higher(self, spec: str) -> bool | None:
        try:
            return direction(self.table, spec)
        except (KeyError, ValueError):
            return None

    def node_state(self, name: str) -> str:
        """The gate verdict ("pass" or "fail"), "notrun", or "" where no gate ran."""
        verdict = self.inputs.gates.get(name)
        if not self.ran(name):
            return "notrun"
        if verdict is not None and verdict.get("metric") is not None:
            return "pass" if verdict.get("passed") else "fail"
        return ""

    def value_of(self, name: str, spec: str) -> tuple[float, float] | None:
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
        if not (self.ran(name) and self.ran(other)):
            return None
        table = self.table[(self.table.task == task) & (self.table.metric == metric)]
        rows = compare_pairs(table, self.inputs.results, [(name, other)], self.level)
        return next(rows.itertuples(), None)

    def chosen(self, step: str) -> str | None:
        return self.inputs.selections.get(step, {}).get("selected")

    def gate_cell(self, verdict: dict | None, numbers: bool = True) -> dict:
        higher = self.higher(str(verdict["metric"])) if verdict and verdict.get("metric") else None
        label, css, detail = gate_words(verdict, higher)
        if label in ("—", "no gate"):
            return cell(label, css)
        sub = [detail] if detail and numbers else []
        return cell(label, css, title=verdict.get("reason", ""), sub=sub)

    def delta_cell(self, row: Any) -> dict:
        """A delta against one parent: green or red only when significant, grey otherwise."""
        return cell(
            delta_text(row), f"num {STATUS_CSS[row.status]}", title=delta_title(row, self.level)
        )

    def value_cell(self, value: float, stderr: float, css: str = "") -> dict:
        return cell(fmt_value(value, stderr), f"num {css}".strip())

    # ---------------------------------------------------------------- the page

    def view(self) -> dict[str, Any]:
        inputs = sum(n.kind == "input" for n in self.m.nodes.values())
        variants = sum(n.kind == "variant" for n in self.m.nodes.values())
        higher = self.higher(self.headline) if self.headline else None
        return {
            "sections": SECTIONS + ([PUBLISHED] if any(n.expect for n in self.steps) else []),
            "facts": f"{inputs} input models · {len(self.steps)} steps · {variants} variants · "
            f"{len(self.inputs.results)} of {len(self.m.nodes)} nodes evaluated",
            "headline": self.headline,
            "headline_direction": {True: "higher is better", False: "lower is better"}.get(
                higher, "direction unknown"
            ),
            "statistics": self.statistics(),
            "summary": self.summary(),
            "glance": self.glance(),
            "lineage": self.lineage(),
            "gate": self.gate(),
            "variants": self.variants(),
            "plots": self.plot_images(),
            "scores": self.scores(),
            "details": self.details(),
            "published": self.published_checks(),
        }

    def statistics(self) -> dict[str, Any]:
        """The method behind every verdict, stated once: level, tests, and where they fell back."""
        used = list(dict.fromkeys(self.deltas.method)) if not self.deltas.empty else []
        fallback = self.deltas[self.deltas.method.isin(["stderr", "none"])]
        notes = sorted(
            {f"{r.task}/{r.metric}: {r.note or METHODS[r.method]}" for r in fallback.itertuples()}
        )
        return {
            "level": level_text(self.level),
            "alpha": f"{1 - self.level:g}",
            "methods": [METHODS[m] for m in used],
            "fallback": notes,
        }

    # ---------------------------------------------------------------- at a glance

    def glance(self) -> dict[str, Any] | None:
        if not self.headline:
            return None
        task, metric = split_spec(self.headline)
        rows = []
        for node in self.steps:
            row = []
            for _, build in GLANCE_COLUMNS:
                built = build(self, node, task, metric)
                if built is not None:
                    row.append(built)
            rows.append(row)
        higher = self.higher(self.headline)
        headers = [
            header.format(headline=self.headline, arrow=arrow_of(higher))
            for header, _ in GLANCE_COLUMNS
        ]
        return {"headers": headers, "rows": rows, "sticky": True}

    def step_cell(self, node: Node, task: str, metric: str) -> dict:
        sub = [f"{node.method or ''} ← {' + '.join(node.parents)}"]
        if node.variants:
            chosen = self.chosen(node.name)
            pick = f"chose {chosen}" if chosen else "no variant chosen yet"
            sub.append(f"{pick} of {len(node.variants)} variants")
        return cell(node.name, href=f"#{anchor(node.name)}", bold=True, sub=sub)

    def verdict_cell(self, node: Node, task: str, metric: str) -> dict:
        if not self.ran(node.name):
            reason = not_run_reason(self.m, node.name, self.inputs.gates)
            return cell(reason, "notrun", colspan=3)
        by_parent = self.deltas_of(node.name, task, metric)
        text, css = overall(
            {p: row.status for p, row in by_parent.items()}, base_step(self.m, node)
        )
        return cell(text, f"verdict {css}")

    def headline_cell(self, node: Node, task: str, metric: str) -> dict | None:
        if not self.ran(node.name):
            return None  # the verdict cell spans this one
        hit = self.value_of(node.name, self.headline)
        return self.value_cell(*hit) if hit else cell("missing", "notrun")

    def parents_cell(self, node: Node, task: str, metric: str) -> dict | None:
        """One line per parent, the step it builds on first; the best parent is marked."""
        if not self.ran(node.name):
            return None
        by_parent = self.deltas_of(node.name, task, metric)
        best = None
        higher = self.higher(self.headline)
        if by_parent and higher is not None:
            sign = 1.0 if higher else -1.0
            best = max(by_parent, key=lambda p: sign * by_parent[p].parent_value)
        base = base_step(self.m, node)
        order = ([base] if base else []) + [p for p in node.parents if p != base]
        lines = []
        for parent in order:
            row = by_parent.get(parent)
            if row is None:
                lines.append(cell(f"vs {parent}: no result", "notrun"))
                continue
            tags = []
            if parent == base:
                tags.append("builds on")
            if parent == best and len(by_parent) > 1:
                tags.append("best parent")
            tag = f" ({', '.join(tags)})" if tags else ""
            lines.append(
                cell(
                    delta_text(row, parent=True) + tag,
                    STATUS_CSS[row.status],
                    title=delta_title(row, self.level),
                )
            )
        return cell("", "list parents", lines=lines)

    def gate_glance_cell(self, node: Node, task: str, metric: str) -> dict:
        return self.gate_cell(self.inputs.gates.get(node.name))

    def other_changes(self, node: Node, task: str, metric: str) -> dict:
        """Significant gains and losses on every other metric, so that a good headline cannot
        hide a skill the merge lost: each against the step it builds on, or (a first step)
        against the parent that did best on it. Losses first."""
        if not self.ran(node.name):
            return cell("")
        d = self.deltas
        mine = d[(d.step == node.name) & ~((d.task == task) & (d.metric == metric))]
        base = base_step(self.m, node)
        if base is not None and (mine.parent == base).any():
            mine = mine[mine.parent == base]
        elif not mine.empty:
            sign = [1.0 if h else -1.0 for h in mine.higher_is_better.fillna(True)]
            score = mine.parent_value * sign
            mine = mine.loc[score.groupby([mine.task, mine.metric]).idxmax().values]
        hits = mine[mine.significant]
        hits = hits.assign(order=hits.status.map({"worse": 0, "better": 1}).fillna(2))
        hits = hits.sort_values(["order", "p_value"], kind="stable")
        lines = [
            cell(
                f"{change_arrow(r)} {r.task}/{r.metric} "
                f"{fmt_signed(r.delta, spread_of(r), r.value)} ({fmt_p(r.p_value)}) vs {r.parent}",
                STATUS_CSS[r.status],
                title=delta_title(r, self.level),
            )
            for r in hits.itertuples()
        ]
        quiet = len(mine) - len(hits)
        if quiet:
            lines.append(cell(f"{quiet} more within noise or untested", "noise"))
        return cell("none" if not lines else "", "list changes", lines=lines)

    def summary(self) -> list[list[dict]]:
        """The bottom line, as rich-text items: where the recipe ended, whether that is the
        best step, what the gate said, and whether the variant choices meant anything."""
        if not self.headline:
            return [[part("No results yet.", "muted")]]
        task, metric = split_spec(self.headline)
        scored = {
            s.name: found for s in self.steps if (found := self.value_of(s.name, self.headline))
        }
        items = []
        finals = final_steps(self.m)
        for name in finals:
            link = part(name, href=f"#{anchor(name)}", bold=True)
            hit = scored.get(name)
            if not self.ran(name) or hit is None:
                reason = not_run_reason(self.m, name, self.inputs.gates)
                line = [part("Final step "), link, part(": "), part(reason, "notrun")]
                last = next((a for a in self.m.ancestors(name) if a in scored), None)
                if last:
                    line += [
                        part("; the last evaluated step before it is "),
                        part(last, href=f"#{anchor(last)}", bold=True),
                        part(f" {fmt_value(*scored[last])}"),
                    ]
                items.append(line)
                continue
            text, css = overall(
                {p: r.status for p, r in self.deltas_of(name, task, metric).items()},
                base_step(self.m, self.m.node(name)),
            )
            items.append(
                [
                    part("Final step "),
                    link,
                    part(f": {self.headline} {fmt_value(*hit)}, "),
                    part(text, css),
                ]
            )
        higher = self.higher(self.headline)
        if scored and higher is not None:
            sign = 1.0 if higher else -1.0
            best = max(scored, key=lambda s: sign * scored[s][0])
            line = [
                part(f"Best step on {self.headline}: "),
                part(best, href=f"#{anchor(best)}", bold=True),
                part(f" {fmt_value(*scored[best])}"),
            ]
            for name in [f for f in finals if f in scored and f != best]:
                row = self.pair(name, best, self.headline)
                if row is not None:
                    line += [
                        part(f"; final step {name} differs by {delta_text(row)}: "),
                        part(row.status, STATUS_CSS[row.status]),
                    ]
            items.append(line)
        if self.m.gate:
            items.append(self.gate_summary())
        picks = []
        for node in self.steps:
            ranking = self.variant_ranking(node.name)
            chosen = self.chosen(node.name)
            if not ranking or not chosen or len(ranking[1]) < 2:
                continue
            spec, order = ranking
            runner_up = next((e["name"] for e in order if e["name"] != chosen), None)
            row = self.pair(chosen, runner_up, spec) if runner_up else None
            if row is None:
                continue
            margin = "lead beyond noise" if row.status == "better" else "lead within noise"
            picks.append(f"{node.name} → {chosen} ({delta_text(row)} over {runner_up}: {margin})")
        if picks:
            items.append([part("Variant choices: " + "; ".join(picks))])
        return items

    def gate_summary(self) -> list[dict]:
        verdicts = [self.inputs.gates.get(s.name) for s in self.steps]
        ran = [self.ran(s.name) for s in self.steps]
        passed = sum(bool(v and v.get("passed") and r) for v, r in zip(verdicts, ran))
        failed = [
            s.name for v, s, r in zip(verdicts, self.steps, ran) if v and not v.get("passed") and r
        ]
        notrun = [s.name for s, r in zip(self.steps, ran) if not r]
        line = [part(f"Gate: {passed} of {len(self.steps)} steps passed")]
        if failed:
            line += [part(", "), part(f"failed: {', '.join(failed)}", "fail")]
        if notrun:
            line += [part("; "), part(f"not run: {', '.join(notrun)}", "notrun")]
        rule = self.gate_rule()
        if rule:
            line.append(part(f" ({rule})", "muted"))
        return line

    def gate_rule(self) -> str:
        higher = self.higher(str(self.m.gate.get("metric", ""))) if self.m.gate else None
        if higher is None:
            return ""
        return parse_gate(self.m.gate, higher).describe()

    # ---------------------------------------------------------------- gate

    def gate(self) -> dict[str, Any]:
        if not self.m.gate:
            return {"configured": False}
        rows, classes = [], []
        for node in self.merged:
            verdict = self.inputs.gates.get(node.name)
            if not verdict:
                continue
            reference = ""
            if verdict.get("reference_step"):
                reference = (
                    f"{verdict['reference_step']} {fmt_value(verdict.get('reference'), None)}"
                )
            note = (
                ""
                if verdict.get("passed") and "within noise" not in verdict.get("reason", "")
                else verdict.get("reason", "")
            )
            rows.append(
                [
                    cell(node.name),
                    self.gate_cell(verdict, numbers=False),
                    cell(fmt_value(verdict.get("value"), None), "num"),
                    cell(fmt_value(verdict.get("threshold"), None), "num"),
                    cell(reference),
                    cell("yes" if verdict.get("stop") else "no"),
                    cell(note),
                ]
            )
            classes.append("variant" if node.kind == "variant" else "")
        headers = ["node", "verdict", "value", "threshold", "best parent", "stopped later steps"]
        return {
            "configured": True,
            "rule": self.gate_rule(),
            "significant": bool(self.m.gate.get("significant")),
            "table": (
                {"headers": headers + ["note"], "rows": rows, "classes": classes} if rows else None
            ),
        }

    # ---------------------------------------------------------------- published checks

    def published_checks(self) -> dict[str, Any] | None:
        """Steps with ``expect:``: bit-identical to the published model or not (mergeflow verify)."""
        rows = []
        for node in (n for n in self.steps if n.expect):
            record = self.inputs.verifications.get(node.name)
            if record is None:
                rows.append([cell(node.name), cell(node.expect), cell("not run", "notrun"), cell("")])
                continue
            identical = record.get("verdict") == "identical"
            names = [d["name"] for d in record.get("differing", [])]
            names += record.get("only_in_model", []) + record.get("only_in_reference", [])
            shown = ", ".join(names[:5]) + (" ..." if len(names) > 5 else "")
            rows.append([
                cell(node.name),
                cell(record.get("reference", node.expect)),
                cell("identical" if identical else "different", "pass" if identical else "fail"),
                cell("" if identical else f"{len(names)} tensor(s) differ: {shown}"),
            ])
        if not rows:
            return None
        return {"headers": ["step", "expected", "verdict", "differences"], "rows": rows}

    # ---------------------------------------------------------------- lineage

    def lineage(self) -> dict[str, Any]:
        geometry = layout(self.m)
        fills = {"pass": "#c6f6d5", "fail": "#fed7d7", "notrun": "#edf2f7"}
        boxes = []
        for name, box in geometry.boxes.items():
            node = self.m.node(name)
            state = self.node_state(name)
            kind = node.method or node.kind
            if node.kind == "variant":
                kind = f"variant · {kind}"
            hit = self.value_of(name, self.headline) if self.headline else None
            third = fmt_value(*hit) if hit else ("not run" if state == "notrun" else "")
            boxes.append(
                {
                    "box": box,
                    "cx": box.x + box.w / 2,
                    "title": f"{name}: {node.kind}, {state or 'no gate'}",
                    "fill": fills.get(state, "#ffffff"),
                    "stroke": "#718096" if node.kind == "input" else "#2b6cb0",
                    "bold": name in self.selected,
                    "dashed": state == "notrun",
                    "lines": [name, kind, third],
                }
            )
        edges = []
        for edge in geometry.edges:
            if edge.kind == "merge":
                style = {"stroke": "#a0aec0", "width": 1.5, "dash": ""}
            elif edge.parent in self.selected:
                style = {"stroke": "#2b6cb0", "width": 3, "dash": ""}
            else:
                style = {"stroke": "#cbd5e0", "width": 1.5, "dash": "4 3"}
            edges.append({"path": edge.path, **style})
        rows = []
        for node in self.m.nodes.values():
            notes = node.source or ""
            if node.variants:
                notes = f"best of {', '.join(node.variants)} → {self.chosen(node.name) or 'not selected yet'}"
            elif node.kind == "variant":
                notes = f"variant of {node.variant_of} {overrides_text(node)}"
            rows.append(
                [
                    cell(node.name),
                    cell(node.kind),
                    cell(node.method or ""),
                    cell(" + ".join(node.parents) or "—"),
                    cell(notes),
                ]
            )
        return {
            "width": geometry.width,
            "height": geometry.height,
            "boxes": boxes,
            "edges": edges,
            "table": {"headers": ["node", "kind", "method", "parents", "notes"], "rows": rows},
        }

    # ---------------------------------------------------------------- variants

    def variant_ranking(self, step: str) -> tuple[str, list[dict]] | None:
        """The ranking of a step's variants by its ``select`` metric, from whichever have results."""
        node = self.m.node(step)
        choice = self.m.select.get(step)
        if not node.variants or not choice:
            return None
        metric = str(choice["metric"])
        higher = self.higher(metric)
        present = set(self.table.step)
        values = {v: lookup(self.table, v, metric)[0] for v in node.variants if v in present}
        if higher is None:
            return metric, [{"name": v, "value": x} for v, x in values.items()]
        return metric, rank(values, higher)

    def variants(self) -> list[dict[str, Any]]:
        out = []
        for node in self.m.nodes.values():
            if not node.variants:
                continue
            ranking = self.variant_ranking(node.name)
            if ranking is None:
                out.append({"title": f"{node.name}: no select metric configured", "table": None})
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
                        cell(i, css),
                        cell(name, css),
                        cell(overrides_text(self.m.node(name))),
                        self.value_cell(value, stderr),
                        self.delta_cell(row) if row is not None else cell("—", "neutral"),
                        self.gate_cell(self.inputs.gates.get(name)),
                        cell(f"selected → {node.name}" if name == chosen else "", css),
                    ]
                )
            headers = ["rank", "variant", "overrides", metric, "Δ vs winner", "gate", "chosen"]
            out.append(
                {
                    "title": f"{node.name}: variants ranked by {metric} "
                    f"{arrow_of(self.higher(metric))}",
                    "table": {"headers": headers, "rows": rows},
                    "missing": ", ".join(v for v in node.variants if not self.ran(v)),
                }
            )
        return out

    # ---------------------------------------------------------------- plots and scores

    def plot_images(self) -> list[dict[str, str]]:
        return [
            {
                "alt": f"{task}: metrics across steps",
                "src": "data:image/png;base64," + base64.b64encode(png).decode("ascii"),
            }
            for task, png in self.plots.items()
        ]

    def scores(self) -> dict[str, Any] | None:
        """Every metric (rows) of every input model and step (columns), best of each row bold."""
        inputs = [n.name for n in self.m.nodes.values() if n.kind == "input"]
        steps = [n.name for n in self.steps]
        if self.table.empty:
            return None
        columns = list(dict.fromkeys(zip(self.table.task, self.table.metric)))
        indexed = self.table.set_index(["step", "task", "metric"])
        rows = []
        for task, metric in columns:
            higher = self.higher(f"{task}/{metric}")
            present = {
                name: indexed.loc[(name, task, metric)]
                for name in inputs + steps
                if (name, task, metric) in indexed.index
            }
            top = None
            if higher is not None:
                sign = 1.0 if higher else -1.0
                top = max((sign * r.value for r in present.values()), default=None)
            cells = [cell(f"{task}/{metric} {arrow_of(higher)}")]
            for name in inputs + steps:
                if name in present:
                    r = present[name]
                    best = top is not None and sign * r.value == top
                    cells.append(self.value_cell(r.value, r.stderr, "best" if best else ""))
                else:
                    cells.append(cell("not run", "notrun"))
            rows.append(cells)
        return {
            "headers": ["task/metric"] + inputs + steps,
            "groups": [("", 1), ("input models", len(inputs)), ("steps", len(steps))],
            "rows": rows,
            "sticky": True,
        }

    # ---------------------------------------------------------------- details

    def details(self) -> list[dict[str, Any]]:
        out = []
        for node in self.steps:
            out.append(
                {
                    "node": self.node_detail(node),
                    "variants": [self.node_detail(self.m.node(v)) for v in node.variants],
                    "name": node.name,
                }
            )
        return out

    def node_detail(self, node: Node) -> dict[str, Any]:
        origin = f"{node.kind} · {node.method or ''} · from {' + '.join(node.parents)}"
        if node.kind == "variant":
            origin += f" · {overrides_text(node)}"
        detail: dict[str, Any] = {
            "name": node.name,
            "anchor": anchor(node.name),
            "origin": origin,
            "ran": self.ran(node.name),
        }
        if not self.ran(node.name):
            detail["not_run"] = not_run_reason(self.m, node.name, self.inputs.gates)
        else:
            detail["evaluation"] = eval_summary(self.inputs.results[node.name])
            verdict = self.inputs.gates.get(node.name)
            if verdict:
                label, css, _ = gate_words(verdict, None)
                detail["gate"] = {"label": label, "css": css, "reason": verdict.get("reason", "")}
            detail["metrics"] = self.metric_table(node)
        chosen = self.chosen(node.name)
        source = self.m.node(chosen) if chosen else node
        if chosen:
            detail["origin_note"] = f"{node.name} is its selected variant {chosen}."
        elif node.variants:
            detail["origin_note"] = "No variant selected yet: the config the variants start from."
        detail["config"] = source.config
        prov = self.inputs.provenance.get(source.name) or self.inputs.provenance.get(node.name)
        detail["provenance"] = provenance_items(prov)
        return detail

    def metric_table(self, node: Node) -> dict[str, Any]:
        """Every metric of one node with its delta against each parent."""
        base = base_step(self.m, node)
        parents = ([base] if base else []) + [p for p in node.parents if p != base]
        rows = []
        for r in self.table[self.table.step == node.name].itertuples():
            by_parent = self.deltas_of(node.name, r.task, r.metric)
            cells = [
                cell(r.task),
                cell(f"{r.metric} {arrow_of(r.higher_is_better)}"),
                self.value_cell(r.value, r.stderr),
                cell(r.n, "num"),
            ]
            cells += [
                self.delta_cell(by_parent[p]) if p in by_parent else cell("—", "neutral")
                for p in parents
            ]
            rows.append(cells)
        return {
            "headers": ["task", "metric", "value ± stderr", "n"] + [f"Δ vs {p}" for p in parents],
            "rows": rows,
        }


GLANCE_COLUMNS: list[tuple[str, Callable[..., dict | None]]] = [
    ("step", Report.step_cell),
    ("verdict on {headline}", Report.verdict_cell),
    ("{headline} {arrow}", Report.headline_cell),
    ("Δ vs each parent [CI] p", Report.parents_cell),
    ("gate", Report.gate_glance_cell),
    (
        "other metrics that changed significantly (vs the step it builds on, else the best parent)",
        Report.other_changes,
    ),
]

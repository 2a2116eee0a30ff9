"""The recipe manifest: which nodes exist, how they are related, where their files are.

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
      eval        lm-eval results JSON written by `mergeflow evaluate` (with its per-item scores,
                  see mergeflow.quality.samples); a step with variants may leave it out: its
                  results are then those of its selected variant
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
      adapters    optional (step, variant): the LoRA adapters its model+lora inputs apply,
                  {name: pinned source}; not nodes (never evaluated)

    GATE: {"metric": "TASK/METRIC", "max_drop": F | "min": F | "max": F, "stop": bool,
           "significant": bool}

Metrics are named ``TASK/METRIC`` with lm-eval's names (``demo/exact_match``); see
:mod:`mergeflow.quality.metrics` for how lm-eval's keys map to them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from mergeflow.quality.files import read_json, read_optional_json
from mergeflow.quality.metrics import metrics_table

KINDS = ("input", "step", "variant")


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
    adapters: dict[str, str] = field(default_factory=dict)  # LoRA adapters applied: name -> source


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
                "adapters": dict(entry.get("adapters") or {}),
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

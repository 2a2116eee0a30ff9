"""The per-step quality report: ``metrics.csv``, one PNG per task and one self-contained
``index.html``.

The pieces live in their own modules: :mod:`~mergeflow.quality.manifest` (what the recipe is),
:mod:`~mergeflow.quality.statistics` (paired tests), :mod:`~mergeflow.quality.plots`,
:mod:`~mergeflow.quality.lineage` (graph layout) and :mod:`~mergeflow.quality.view` (the page
as data). The page itself is the Jinja2 template ``reports/report.html.j2``, rendered with
autoescaping; plots are embedded as data URIs, so the file stands alone.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from mergeflow.quality.files import write_atomic
from mergeflow.quality.manifest import ReportInputs, collect, load_manifest
from mergeflow.quality.metrics import metrics_table
from mergeflow.quality.plots import node_groups, plot_filename, plot_task
from mergeflow.quality.defaults import DEFAULT_LEVEL
from mergeflow.quality.view import Report

TEMPLATE = "report.html.j2"


def template_dir() -> Path:
    """``reports/`` of this checkout (``MERGEFLOW_SRC`` where the package is installed apart
    from its sources, as the workflow's conda environments do)."""
    for root in (os.environ.get("MERGEFLOW_SRC"), Path(__file__).resolve().parents[2]):
        if root and (Path(root) / "reports" / TEMPLATE).is_file():
            return Path(root) / "reports"
    raise FileNotFoundError(f"reports/{TEMPLATE} not found (set MERGEFLOW_SRC to the checkout)")


def render(
    inputs: ReportInputs,
    table: pd.DataFrame,
    plots: dict[str, bytes],
    level: float = DEFAULT_LEVEL,
) -> str:
    """The HTML page from the inputs and their metrics table; plots arrive as PNG bytes."""
    import jinja2

    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(template_dir()),
        autoescape=True,
        keep_trailing_newline=True,
    )
    return environment.get_template(TEMPLATE).render(**Report(inputs, table, plots, level).view())


def build(
    manifest_path: str | Path, out_dir: str | Path, level: float = DEFAULT_LEVEL
) -> dict[str, Path]:
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
    write_atomic(written["html"], render(inputs, table, plots, level))
    return written

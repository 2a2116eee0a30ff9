"""Plots of the report: one PNG per lm-eval task, each metric across the recipe's nodes."""

from __future__ import annotations

import io
import re

import pandas as pd

from mergeflow.quality.formatting import decimals
from mergeflow.quality.manifest import Manifest

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
        higher = part.higher_is_better.dropna()
        higher = bool(higher.iloc[0]) if len(higher) else None
        inputs = part[[kinds.get(s) == "input" for s in part.step]]
        if len(inputs) and higher is not None:
            best = inputs.value.idxmax() if higher else inputs.value.idxmin()
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
        direction = {True: "higher is better ↑", False: "lower is better ↓"}.get(
            higher, "direction unknown"
        )
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

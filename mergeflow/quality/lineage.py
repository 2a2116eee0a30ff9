"""Where the boxes and edges of the lineage graph go: a layered left-to-right layout.

Columns are depths in the lineage; an input model sits in the column just before the first node
built from it, so that its edges stay short. An edge that spans more than one column (an input
reused by a later step, a step reused further down) gets a reserved lane in every column it
passes, as in a Sugiyama layout: boxes are stacked around those lanes, so no edge ever runs
through a box. Between two columns an edge is a curve inside the gap, where there are no boxes.
Within a column, items are ordered by the mean row of what they come from (their barycenter),
inputs last; recipe order breaks ties, so the layout is deterministic.

This module computes geometry only; the report's template draws it as inline SVG.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mergeflow.quality.manifest import Manifest

BOX_H, GAP_X, GAP_Y, LANE_H, PAD = 52, 56, 14, 10, 10


@dataclass(frozen=True)
class Box:
    name: str
    x: float
    y: float
    w: float
    h: float


@dataclass(frozen=True)
class Edge:
    parent: str
    child: str
    kind: str  # "merge" (from a merge parent) or "variant" (a variant into its step)
    path: str  # SVG path data
    points: tuple[tuple[float, float], ...] = field(default=())  # where it enters each column


@dataclass(frozen=True)
class Layout:
    width: float
    height: float
    boxes: dict[str, Box]
    edges: list[Edge]


def depths(manifest: Manifest) -> dict[str, int]:
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
    return depth


def layout(manifest: Manifest, box_w: float | None = None) -> Layout:
    """Boxes and edge paths of the lineage graph of ``manifest``."""
    depth = depths(manifest)
    longest = max((len(name) for name in manifest.nodes), default=0)
    box_w = box_w or max(150, 8 * longest + 24)
    # Items per column: node names, and lanes ("lane", parent, child, column) of long edges.
    columns: dict[int, list] = {d: [] for d in range(max(depth.values(), default=0) + 1)}
    for name in manifest.nodes:
        columns[depth[name]].append(name)
    chains: dict[tuple[str, str], list] = {}
    for child in manifest.nodes:
        for parent in manifest.lineage_parents(child):
            lanes = [("lane", parent, child, d) for d in range(depth[parent] + 1, depth[child])]
            chains[(parent, child)] = [parent, *lanes, child]
            for lane in lanes:
                columns[lane[3]].append(lane)

    def before(item) -> list:
        """What an item comes from, in the previous column."""
        if isinstance(item, tuple):
            chain = chains[(item[1], item[2])]
            return [chain[chain.index(item) - 1]]
        return [chains[(p, item)][-2] for p in manifest.lineage_parents(item)]

    row: dict = {}
    for d in sorted(columns):
        items = columns[d]

        def barycenter(item) -> tuple[int, float]:
            sources = before(item)
            if not sources:
                return (1, 0.0)  # inputs after the items that continue a chain
            return (0, sum(row[s] for s in sources) / len(sources))

        items.sort(key=barycenter)  # stable: recipe order breaks ties
        for i, item in enumerate(items):
            row[item] = i

    def height(item) -> float:
        return LANE_H if isinstance(item, tuple) else BOX_H

    extents = {
        d: sum(height(i) for i in items) + GAP_Y * (len(items) - 1) for d, items in columns.items()
    }
    tallest = max(extents.values(), default=0)
    top: dict = {}
    for d, items in columns.items():
        y = PAD + (tallest - extents[d]) / 2
        for item in items:
            top[item] = y
            y += height(item) + GAP_Y

    def x_of(d: int) -> float:
        return PAD + d * (box_w + GAP_X)

    boxes = {name: Box(name, x_of(depth[name]), top[name], box_w, BOX_H) for name in manifest.nodes}
    edges = []
    for (parent, child), chain in chains.items():
        points = []
        for item in chain:
            middle = top[item] + height(item) / 2
            d = depth[item] if not isinstance(item, tuple) else item[3]
            points.append((x_of(d), x_of(d) + box_w, middle))
        start = points[0]
        path = [f"M{start[1]:g},{start[2]:g}"]
        for (_, right, y1), (left, end, y2) in zip(points, points[1:]):
            mid = (right + left) / 2
            path.append(f"C{mid:g},{y1:g} {mid:g},{y2:g} {left:g},{y2:g}")
            if (left, end, y2) != points[-1]:
                path.append(f"H{end:g}")  # along the lane reserved in this column
        kind = "variant" if manifest.node(child).variants else "merge"
        edges.append(Edge(parent, child, kind, " ".join(path), tuple((p[0], p[2]) for p in points)))
    width = 2 * PAD + len(columns) * (box_w + GAP_X) - GAP_X
    return Layout(width=width, height=2 * PAD + tallest, boxes=boxes, edges=edges)

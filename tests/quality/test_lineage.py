"""The lineage layout: no edge runs through a box, whatever the recipe's shape."""

import random
import re

import pytest

from mergeflow.quality.lineage import layout
from mergeflow.quality.manifest import parse_manifest


def manifest(parents: dict[str, list[str]]):
    nodes = [
        {"name": name, "kind": "step" if ps else "input", "parents": ps}
        for name, ps in parents.items()
    ]
    return parse_manifest({"nodes": nodes})


def points_of(path: str, steps: int = 24):
    """Points along an SVG path made of M, C (cubic Bézier) and H commands."""
    tokens = re.findall(r"[MCH]|-?[0-9.]+", path)
    out, i, here = [], 0, (0.0, 0.0)
    while i < len(tokens):
        command = tokens[i]
        if command == "M":
            here = (float(tokens[i + 1]), float(tokens[i + 2]))
            out.append(here)
            i += 3
        elif command == "H":
            x = float(tokens[i + 1])
            out += [(here[0] + (x - here[0]) * t / steps, here[1]) for t in range(1, steps + 1)]
            here = (x, here[1])
            i += 2
        else:  # C x1 y1 x2 y2 x y
            c = [float(v) for v in tokens[i + 1 : i + 7]]
            p0, p1, p2, p3 = here, (c[0], c[1]), (c[2], c[3]), (c[4], c[5])
            for t in (k / steps for k in range(1, steps + 1)):
                u = 1 - t
                out.append(
                    tuple(
                        u**3 * a + 3 * u * u * t * b + 3 * u * t * t * d + t**3 * e
                        for a, b, d, e in zip(p0, p1, p2, p3)
                    )
                )
            here = p3
            i += 7
    return out


def crossings(geometry):
    """(edge, box) pairs where an edge passes through the inside of a box."""
    found = []
    for edge in geometry.edges:
        for point in points_of(edge.path):
            for box in geometry.boxes.values():
                inside = (
                    box.x + 0.5 < point[0] < box.x + box.w - 0.5
                    and box.y + 0.5 < point[1] < box.y + box.h - 0.5
                )
                if inside:
                    found.append((edge.parent, edge.child, box.name))
    return sorted(set(found))


def overlaps(geometry):
    boxes = list(geometry.boxes.values())
    return [
        (a.name, b.name)
        for i, a in enumerate(boxes)
        for b in boxes[i + 1 :]
        if a.x < b.x + b.w and b.x < a.x + a.w and a.y < b.y + b.h and b.y < a.y + a.h
    ]


def test_a_reused_input_goes_around_the_boxes_in_between():
    # "a" feeds s1 and s4: its edge to s4 crosses the columns of s1, s2 and s3.
    recipe = manifest(
        {
            "a": [],
            "b": [],
            "c": [],
            "d": [],
            "s1": ["a", "b"],
            "s2": ["s1", "c"],
            "s3": ["s2", "d"],
            "s4": ["s3", "a"],
            "s5": ["s4", "s1"],
        }
    )
    geometry = layout(recipe)
    assert crossings(geometry) == [] and overlaps(geometry) == []
    long = next(e for e in geometry.edges if (e.parent, e.child) == ("a", "s4"))
    assert long.path.count("H") == 3  # a lane through each column it crosses
    # Inputs stay next to the first node built from them.
    x = {name: box.x for name, box in geometry.boxes.items()}
    assert x["a"] < x["s1"] and x["c"] == x["s1"] and x["d"] == x["s2"]
    assert geometry.width >= max(b.x + b.w for b in geometry.boxes.values())
    assert geometry.height >= max(b.y + b.h for b in geometry.boxes.values())


@pytest.mark.parametrize("seed", range(40))
def test_random_recipes_never_cross_or_overlap(seed):
    rng = random.Random(seed)
    parents = {f"in{i}": [] for i in range(rng.randint(2, 5))}
    for i in range(rng.randint(1, 7)):
        known = list(parents)
        parents[f"s{i}"] = rng.sample(known, rng.randint(2, min(3, len(known))))
    geometry = layout(manifest(parents))
    assert crossings(geometry) == [] and overlaps(geometry) == []

"""Trying other input commits cheaply: merge only the first differing tensor per combination.

When a reproduction differs, the likeliest cause is that the publisher merged another commit of an
input. Re-merging everything per guess would cost a merge each; one tensor costs its inputs'
download and a single task of the engine's plan. Only deterministic methods are tried (a random
method draws in plan order, so one tensor alone would draw differently).
"""

from __future__ import annotations

import itertools
from dataclasses import replace

from mergeflow.verify.compare import difference
from mergeflow.verify.inputs import PinnedInput, header_checkpoints, pinned_config

MAX_COMBINATIONS = 8


class _Collect:
    """Stands in for the shard writer: keeps the one merged tensor in memory."""

    def __init__(self) -> None:
        self.tensors = {}

    def write(self, name, tensor) -> None:
        self.tensors[name] = tensor

    def finish(self) -> None:
        pass


def try_candidates(step, tensor: str, feeding: list[str], reference, where: str) -> list[dict]:
    """Each combination of nearby commits of the ``feeding`` inputs, with whether merging
    ``tensor`` from it gives the published bytes (``reference`` is the published side)."""
    from mergeflow.engine.checkpoint import Checkpoint
    from mergeflow.engine.execute import execute
    from mergeflow.engine.plan import MergePlan, build_plan
    from mergeflow.engine.references import resolve_model
    from mergeflow.methods import get_method

    method = get_method(step.method)
    if method.draws_random:
        return []
    keys = [k for k, p in step.pinned.items() if p.repo in feeding and p.near and not p.explicit]
    options = [[step.pinned[k]] + [replace(step.pinned[k], commit=c["commit"], date=c["date"]) for c in step.pinned[k].near]
               for k in keys]
    combos = [c for c in itertools.product(*options) if any(p is not step.pinned[k] for p, k in zip(c, keys))]
    wanted = reference.load(tensor)
    tried = []
    for combo in combos[:MAX_COMBINATIONS]:
        pinned: dict[tuple[str, str | None], PinnedInput] = {**step.pinned, **dict(zip(keys, combo))}
        config, headers = header_checkpoints(pinned_config(step.document, where, pinned))
        plan = build_plan(config, method, headers, step.options.get("allow_crimes", False),
                          step.options.get("unsafe_truncate_embeddings", False))
        task = next((t for t in plan.tasks if t.output_name == tensor), None)
        if task is None:
            continue
        refs = {i.model for i in task.inputs}
        checkpoints = {ref: Checkpoint(resolve_model(ref), str(ref)) for ref in refs}
        collected = _Collect()
        execute(MergePlan([task], plan.donor, plan.layer_sources), method, checkpoints, collected, step.seed or 0,
                progress=False)
        same = difference(tensor, collected.tensors[tensor], wanted) is None
        tried.append({"inputs": {p.repo: p.commit for p in combo}, "tensor": tensor, "reproduces": same})
    return tried

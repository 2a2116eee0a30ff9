"""Checkpoint-layout conversion: legacy tensor layouts presented in the layout mergekit merges.

mergekit 0.1.5's architecture definitions for some MoE families name the transformers-v5 model
layout (fused expert tensors), while checkpoints on disk (and everything transformers 5 itself
saves) keep the legacy per-expert layout. When a weight is missing, mergekit derives it through
transformers' checkpoint conversion mapping for the model type, and merges the converted tensor
(mergekit-semantics §11.3). This module holds the same conversions as data, keyed by
``config.json``'s ``model_type``, and applies them as a lazy view: names and shapes come from the
headers, and a fused tensor is built only when the executor loads it.

Covered: the families whose mergekit 0.1.5 definition names a layout that transformers 5's
mapping derives from the stored one, i.e. Mixtral, Qwen3-MoE and GLM-4-MoE. The other model types
with a mapping and a mergekit definition (EXAONE, Gemma-3 and Mistral-3 VL, Granite-MoE-Hybrid,
Qwen3-VL-MoE) are defined with their stored names, so mergekit converts nothing there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from mergeflow.engine.architecture import split_layer_name
from mergeflow.engine.errors import PreflightError
from mergeflow.engine.views import CheckpointView


@dataclass(frozen=True)
class Rename:
    """Replace the substring ``old`` with ``new`` in every tensor name."""

    old: str
    new: str


@dataclass(frozen=True)
class FuseExperts:
    """Per-expert tensors into one: each source pattern (``*`` is the expert index) is stacked
    over experts in index order (a new axis 0), and the stacks are concatenated on axis 1.

    For Mixtral's ``experts.*.w1.weight`` + ``experts.*.w3.weight`` that gives ``gate_up_proj``
    of shape ``[E, 2I, H]`` whose expert ``e`` is ``cat(w1_e, w3_e)``.
    """

    sources: tuple[str, ...]
    target: str

    def match(self, name: str) -> tuple[str, int, int] | None:
        """(fused name, source pattern index, expert index) when ``name`` is one of the parts."""
        for part, pattern in enumerate(self.sources):
            head, _, tail = pattern.partition("*")
            found = re.search(re.escape(head) + r"(\d+)" + re.escape(tail) + "$", name)
            if found:
                return name[: found.start()] + self.target, part, int(found.group(1))
        return None


@dataclass(frozen=True)
class LegacyLayout:
    """How one model type's legacy checkpoints become the layout mergekit merges.

    ``rules`` apply in order, as in transformers 5's conversion mapping. ``order`` lists the
    converted names' endings as mergekit's architecture definition lists them: mergekit gives a
    converted tensor's load an empty execution label, so converted tensors are merged first, layer
    by layer in that order, which fixes where they draw their random numbers (§6).
    """

    rules: tuple[Rename | FuseExperts, ...]
    order: tuple[str, ...]


EXPERT_MLP = (
    FuseExperts(("mlp.experts.*.gate_proj.weight", "mlp.experts.*.up_proj.weight"), "mlp.experts.gate_up_proj"),
    FuseExperts(("mlp.experts.*.down_proj.weight",), "mlp.experts.down_proj"),
)

LEGACY_LAYOUTS: dict[str, LegacyLayout] = {  # by config.json's model_type
    "mixtral": LegacyLayout(
        rules=(
            Rename(".block_sparse_moe.", ".mlp."),
            FuseExperts((".experts.*.w1.weight", ".experts.*.w3.weight"), ".experts.gate_up_proj"),
            FuseExperts((".experts.*.w2.weight",), ".experts.down_proj"),
        ),
        order=("mlp.experts.gate_up_proj", "mlp.experts.down_proj", "mlp.gate.weight"),
    ),
    "qwen3_moe": LegacyLayout(EXPERT_MLP, order=("mlp.experts.down_proj", "mlp.experts.gate_up_proj")),
    "glm4_moe": LegacyLayout(EXPERT_MLP, order=("mlp.experts.gate_up_proj", "mlp.experts.down_proj")),
}


def convert_layout(checkpoint):
    """``checkpoint`` as mergekit merges it: converted if its model type has a legacy layout."""
    layout = LEGACY_LAYOUTS.get(checkpoint.config.get("model_type"))
    if layout is None:
        return checkpoint
    view = ConvertedCheckpoint(checkpoint, layout)
    return view if view.converted else checkpoint


class ConvertedCheckpoint(CheckpointView):
    """Renamed and fused tensors over a legacy-layout checkpoint."""

    def __init__(self, inner, layout: LegacyLayout):
        super().__init__(inner)
        # fused name -> per source pattern, the stored expert tensors in expert order
        self._fused: dict[str, list[list[str]]] = {}
        names = {name: name for name in inner.headers}  # current name -> stored name
        for rule in layout.rules:
            if isinstance(rule, Rename):
                names = {current.replace(rule.old, rule.new): stored for current, stored in names.items()}
            else:
                names = self._fuse(rule, names)
        self._renamed = {current: stored for current, stored in names.items() if current != stored}
        self.converted = bool(self._fused or self._renamed)
        converted = {name: inner.headers[stored] for name, stored in self._renamed.items()}
        converted |= {target: self._fused_header(target, parts) for target, parts in self._fused.items()}
        # Unconverted names keep their order; converted ones follow in mergekit's planning order.
        self.headers = {name: inner.headers[stored] for name, stored in names.items() if name == stored}
        for name in sorted(converted, key=lambda n: _planning_rank(n, layout.order)):
            self.headers[name] = converted[name]

    def _fuse(self, rule: FuseExperts, names: dict[str, str]) -> dict[str, str]:
        groups: dict[str, dict[int, dict[int, str]]] = {}
        kept = {}
        for current, stored in names.items():
            found = rule.match(current)
            if found is None:
                kept[current] = stored
                continue
            target, part, expert = found
            groups.setdefault(target, {}).setdefault(part, {})[expert] = stored
        for target, parts in groups.items():
            experts = {tuple(sorted(by_expert)) for by_expert in parts.values()}
            expected = tuple(range(len(next(iter(parts.values())))))
            if len(parts) != len(rule.sources) or experts != {expected}:
                raise PreflightError(
                    f"{self.label}: cannot build {target} from the per-expert tensors: "
                    f"{' and '.join(rule.sources)} must exist for the same experts 0..N-1"
                )
            self._fused[target] = [[parts[p][e] for e in expected] for p in range(len(rule.sources))]
        return kept

    def _fused_header(self, target: str, parts: list[list[str]]) -> tuple[torch.dtype, tuple[int, ...]]:
        headers = [self.inner.headers[name] for names in parts for name in names]
        dtypes = {dtype for dtype, _ in headers}
        tails = {shape[1:] for _, shape in headers}
        if len(dtypes) != 1 or len(tails) != 1 or any(len({self.inner.headers[n][1] for n in names}) != 1 for names in parts):
            raise PreflightError(f"{self.label}: cannot build {target}: its per-expert tensors differ in dtype or shape")
        rows = sum(self.inner.headers[names[0]][1][0] for names in parts)
        return dtypes.pop(), (len(parts[0]), rows, *tails.pop())

    def order_label(self, name: str) -> str:
        return "" if name in self._fused or name in self._renamed else name

    def load(self, name: str) -> torch.Tensor:
        if name in self._fused:
            stacks = [torch.stack([self.inner.load(n) for n in names]) for names in self._fused[name]]
            return stacks[0] if len(stacks) == 1 else torch.cat(stacks, dim=1)
        return self.inner.load(self._renamed.get(name, name))


def _planning_rank(name: str, order: tuple[str, ...]) -> tuple[int, int, str]:
    parts = split_layer_name(name)
    layer = parts[1] if parts else -1
    rank = next((i for i, ending in enumerate(order) if name.endswith(ending)), len(order))
    return layer, rank, name

"""Checkpoint views: a model's tensors as the merge should see them, computed lazily per tensor.

A view wraps a ``Checkpoint`` (or another view) and offers the same interface: ``headers`` for
planning, ``load(name)`` for execution, and the wrapped model's ``path``, ``config`` and
``files``. Layout conversion (``layouts``) and LoRA application (``lora``) are views, so neither
the planner nor the executor knows about them, and no whole model is ever materialised.
"""

from __future__ import annotations

from pathlib import Path

import torch


class CheckpointView:
    """Forwards everything to ``inner``; subclasses set ``headers`` and override ``load``."""

    def __init__(self, inner):
        self.inner = inner
        self.headers: dict[str, tuple[torch.dtype, tuple[int, ...]]] = dict(inner.headers)

    @property
    def path(self) -> Path:
        return self.inner.path

    @property
    def label(self) -> str:
        return self.inner.label

    @property
    def config(self) -> dict:
        return self.inner.config

    @property
    def files(self) -> list[Path]:
        return self.inner.files

    @property
    def architecture(self) -> str:
        return self.inner.architecture

    def order_label(self, name: str) -> str:
        return order_label(self.inner, name)

    def replay_draws(self) -> None:
        """Advance torch's generator as mergekit does while preparing this model (see ``lora``)."""
        replay_draws(self.inner)

    def load(self, name: str) -> torch.Tensor:
        return self.inner.load(name)

    def source(self, name: str) -> None:
        """No tensor of a view is read in ranges: a view computes its tensors whole."""
        return None


def order_label(checkpoint, name: str) -> str:
    """The label mergekit's scheduler gives this tensor's load: its name, except for tensors a
    view derives (``layouts``), whose label is empty. A merge task runs at the largest label of
    its inputs (§6), so this decides where seeded methods draw their random numbers."""
    return checkpoint.order_label(name) if isinstance(checkpoint, CheckpointView) else name


def replay_draws(checkpoint) -> None:
    if isinstance(checkpoint, CheckpointView):
        checkpoint.replay_draws()

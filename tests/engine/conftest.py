"""Fixtures for engine tests: tiny local models (the merge helpers live in ``oracle``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_models import make_model

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """Build each (variant, name) model once per session: a base plus fine-tune-like children."""
    root = tmp_path_factory.mktemp("models")
    built: dict[tuple, Path] = {}

    def get(name: str, **variant) -> Path:
        key = (name, tuple(sorted(variant.items())))
        if key not in built:
            tag = "_".join(f"{k}-{v}" for k, v in sorted(variant.items())).replace("torch.", "") or "default"
            path = root / tag / name
            base = None if name == "base" else get("base", **variant)
            seed = 0 if name == "base" else int(name.removeprefix("m"))  # m1, m2, ...
            built[key] = make_model(path, seed, base=base, **variant)
        return built[key]

    return get

"""Fixtures for MoE tests: tiny two-layer base models with fine-tune-like experts, per family."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_models import make_model

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def moe_models(tmp_path_factory):
    """``get(arch, dtype)`` -> {"base", "m1", "m2", "m3"} paths, built once per session."""
    root = tmp_path_factory.mktemp("moe-models")
    built: dict[tuple, dict[str, Path]] = {}

    def get(arch: str = "llama", dtype: torch.dtype = torch.float32, tied: bool = False) -> dict[str, Path]:
        key = (arch, dtype, tied)
        if key not in built:
            folder = root / f"{arch}-{str(dtype).removeprefix('torch.')}{'-tied' if tied else ''}"
            base = make_model(folder / "base", 0, arch=arch, layers=2, dtype=dtype, tied=tied)
            models = {"base": base}
            for seed in (1, 2, 3):
                models[f"m{seed}"] = make_model(folder / f"m{seed}", seed, arch=arch, layers=2, dtype=dtype, tied=tied, base=base)
            built[key] = models
        return built[key]

    return get

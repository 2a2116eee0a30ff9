"""Fixtures for engine tests: tiny local models, and merges by mergeflow and by real mergekit 0.1.5."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mergeflow.engine.run import MergeOptions, run_merge
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
            seed = {"base": 0, "m1": 1, "m2": 2, "m3": 3}[name]
            built[key] = make_model(path, seed, base=base, **variant)
        return built[key]

    return get


def mergekit_merge(text: str, out: Path, seed: int = 7, **options) -> Path:
    """The oracle: mergekit 0.1.5 through its Python API (a test dependency only)."""
    import yaml
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions as MkOptions
    from mergekit.merge import run_merge as mk_run_merge

    config = MergeConfiguration.model_validate(yaml.safe_load(text))
    mk_run_merge(config, str(out), MkOptions(random_seed=seed, write_model_card=False, quiet=True, **options), config_source=text)
    return out


def mergeflow_merge(text: str, out: Path, seed: int = 7, **options) -> dict:
    return run_merge(text, out, MergeOptions(random_seed=seed, progress=False, **options))


def load_dir(path: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(path.glob("*.safetensors")):
        tensors.update(load_file(file))
    return tensors


def assert_bit_identical(ours: Path, theirs: Path) -> None:
    a, b = load_dir(ours), load_dir(theirs)
    assert sorted(a) == sorted(b), f"tensor names differ: {sorted(set(a) ^ set(b))}"
    for name in a:
        assert a[name].dtype == b[name].dtype, f"{name}: dtype {a[name].dtype} != {b[name].dtype}"
        assert a[name].shape == b[name].shape, f"{name}: shape {a[name].shape} != {b[name].shape}"
        same = torch.equal(a[name].view(torch.uint8), b[name].view(torch.uint8))
        assert same, f"{name}: values differ (max abs diff {(a[name].double() - b[name].double()).abs().max()})"

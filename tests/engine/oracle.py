"""Merges by mergeflow and by real mergekit 0.1.5, and the bit-for-bit comparison of their outputs.

Kept out of ``conftest.py`` so that test modules import it by a name no other test directory uses:
pytest registers every directory's ``conftest.py`` as the same module ``conftest``, so
``from conftest import ...`` breaks when tests/engine and tests/methods run in one session.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from mergeflow.engine.run import MergeOptions, run_merge


def mergekit_merge(text: str, out: Path, seed: int = 7, **options) -> Path:
    """The oracle: mergekit 0.1.5 through its Python API (a test dependency only)."""
    import yaml
    from mergekit.config import MergeConfiguration
    from mergekit.io.tasks import LoaderCache
    from mergekit.merge import MergeOptions as MkOptions
    from mergekit.merge import run_merge as mk_run_merge

    config = MergeConfiguration.model_validate(yaml.safe_load(text))
    # mergekit keeps one loader per model reference for the whole process, so a model+lora
    # reference would keep the merged copy (and --lora-merge-dtype) of its first run.
    LoaderCache.loaders.clear()
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

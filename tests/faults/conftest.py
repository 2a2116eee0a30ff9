"""Fixtures for the fault catalogue: tiny models built once, and the merge runner."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch
from faults_support import Merge
from tiny_models import make_model

# The mergekit oracle lives beside the engine tests; appended, so that no test directory's
# ``conftest`` is shadowed.
sys.path.append(str(Path(__file__).resolve().parents[1] / "engine"))

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fault-models")
    base = make_model(root / "base", 0, layers=2)
    built = {"base": base}
    for i in (1, 2):
        built[f"m{i}"] = make_model(root / f"m{i}", i, layers=2, base=base)
    built["sharded"] = make_model(root / "sharded", 1, layers=2, base=base, shard_size="40KB")
    return built


@pytest.fixture
def model_copy(models, tmp_path):
    """A private copy of a fixture model, for a test to break."""
    def copy(name: str = "m1") -> Path:
        target = tmp_path / "inputs" / name
        shutil.copytree(models[name], target)
        return target

    return copy


@pytest.fixture
def merge(tmp_path, capsys) -> Merge:
    return Merge(tmp_path, capsys)

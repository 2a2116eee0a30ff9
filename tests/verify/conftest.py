"""Fixtures for verify/reproduce tests: tiny models, a Hub stand-in with dated commits, and the
``mergeflow`` command run against it in a subprocess (HF_ENDPOINT is read at import time)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hub_server import HubServer
from tiny_models import make_model

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    """A base and fine-tune-like children; ``m1_v2`` is new content for m1 (a later commit)."""
    root = tmp_path_factory.mktemp("models")
    base = make_model(root / "base", 0, layers=2)
    built = {"base": base}
    for name, seed in [("m1", 1), ("m2", 2), ("m1_v2", 11)]:
        built[name] = make_model(root / name, seed, layers=2, base=base)
    return built


@pytest.fixture(scope="session")
def hub():
    with HubServer() as server:
        yield server


@pytest.fixture
def env(hub, tmp_path):
    """A subprocess environment: the test Hub and an empty, private HF cache per test."""
    return {
        **os.environ,
        "HF_ENDPOINT": hub.url,
        "HF_HOME": str(tmp_path / "hf_home"),
        "HF_TOKEN": "hf_test_token",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")]),
    }

"""MoE builds by mergeflow and by real mergekit-moe 0.1.5, and the comparison of everything they write.

A module name of its own, as tests/engine/oracle.py explains.
"""

from __future__ import annotations

import json
from pathlib import Path

from engine.oracle import assert_bit_identical

from mergeflow.moe.build import MoEOptions, run_moe


def mergekit_moe(text: str, out: Path, seed: int = 7, **options) -> Path:
    """The oracle: mergekit-moe 0.1.5's ``build`` as its CLI calls it, seeded as ``--random-seed`` does."""
    import yaml
    from mergekit.merge import MergeOptions
    from mergekit.moe.config import MoEMergeConfig
    from mergekit.scripts.moe import build
    from transformers.trainer_utils import set_seed

    set_seed(seed)
    config = MoEMergeConfig.model_validate(yaml.safe_load(text))
    build(config, str(out), MergeOptions(random_seed=seed, quiet=True, **options), device="cpu")
    (out / "mergekit_moe_config.yml").write_text(text)
    return out


def mergeflow_moe(text: str, out: Path, seed: int = 7, **options) -> dict:
    return run_moe(text, out, MoEOptions(random_seed=seed, progress=False, **options))


def assert_same_build(ours: Path, theirs: Path) -> None:
    """Same tensors bit for bit, same config.json fields, same tokenizer files and verbatim config."""
    assert_bit_identical(ours, theirs)
    assert json.loads((ours / "config.json").read_text()) == json.loads((theirs / "config.json").read_text())
    for name in ("tokenizer_config.json", "tokenizer.json", "mergekit_moe_config.yml"):
        assert (ours / name).read_text() == (theirs / name).read_text(), name
    theirs_index, ours_index = theirs / "model.safetensors.index.json", ours / "model.safetensors.index.json"
    assert theirs_index.exists() == ours_index.exists()
    if theirs_index.exists():  # same shard of every tensor, in the same save order
        a, b = (json.loads(p.read_text())["weight_map"] for p in (ours_index, theirs_index))
        assert list(a.items()) == list(b.items())

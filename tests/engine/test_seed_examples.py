"""The configs users bring (/work/shared/reference/seed-examples.md), on tiny local models.

Each Hub name becomes a tiny model in order of appearance (base_model → base, the others → m1,
m2, m3) and every ``layer_range`` is scaled from 32 (40) layers to 8; everything else is kept as
written: filters, gradients, ``int8_mask``, ``normalize``, ``dtype``. A config mergekit 0.1.5 can
run must merge bit-identically. An invalid one must fail with a message that says what to write
instead, and the config fixed that way must then merge bit-identically.
"""

from __future__ import annotations

import pytest
import torch

from mergeflow.engine.errors import ConfigError, MergeflowError, PreflightError
from oracle import assert_bit_identical, mergeflow_merge, mergekit_merge

pytestmark = pytest.mark.parity

LAYERS = 8


def _slerp(first: str, second: str, t: str, dtype: str) -> str:
    """The two-model slerp of most recipes, written (as in the source) without a base_model."""
    sources = "".join(f"      - model: {m}\n        layer_range: [0, {LAYERS}]\n" for m in (first, second))
    return f"merge_method: slerp\nslices:\n  - sources:\n{sources}parameters:\n  t:{t}\ndtype: {dtype}\n"


FILTERED_T = (
    "\n    - filter: self_attn\n      value: [0, 0.5, 0.3, 0.7, 1]\n"
    "    - filter: mlp\n      value: [1, 0.5, 0.7, 0.3, 0]\n    - value: 0.5"
)
DARE_TIES = (
    "merge_method: dare_ties\nbase_model: {base}\nmodels:\n"
    "  - model: {m1}\n    parameters:\n      density: 0.5\n      weight: 0.6\n      dare:\n        drop_rate: 0.9\n"
    "  - model: {m2}\n    parameters:\n      density: 0.5\n      weight: 0.4\n      dare:\n        drop_rate: 0.9\n"
    "parameters:\n  int8_mask: true\ndtype: bfloat16\n"
)
NO_BASE = "config key 'base_model': merge method 'slerp' needs a base_model; add 'base_model:'"
WITH_BASE = "base_model: {m1}\n"  # the fix the message asks for: the t=0 end of the slerp

# name: (config, None for parity or (error, substring of its message, the config fixed as told))
SEED_CONFIGS = {
    "marcoro14_slerp": (_slerp("{m1}", "{m2}", " 0.5", "bfloat16"), (ConfigError, NO_BASE, WITH_BASE)),
    "goliath_slerp_mixed_architectures": (_slerp("{qwen2}", "{m1}", FILTERED_T, "float16"), (PreflightError, "models have different architectures", None)),
    "goliath_slerp_filters_and_gradients": (_slerp("{m1}", "{m2}", FILTERED_T, "float16"), (ConfigError, NO_BASE, WITH_BASE)),
    "math_code_task_arithmetic": (
        "merge_method: task_arithmetic\nbase_model: {base}\nmodels:\n"
        "  - model: {m1}\n    parameters:\n      weight: 0.6\n  - model: {m2}\n    parameters:\n      weight: 0.4\ndtype: bfloat16\n",
        None,
    ),
    "chat_roleplay_slerp": (_slerp("{m1}", "{m2}", " 0.5", "bfloat16"), (ConfigError, NO_BASE, WITH_BASE)),
    "multi_task_ties": (
        "merge_method: ties\nbase_model: {base}\nmodels:\n"
        + "".join(f"  - model: {{{m}}}\n    parameters:\n      density: 0.5\n      weight: 1.0\n" for m in ("m1", "m2", "m3"))
        + "parameters:\n  normalize: true\ndtype: bfloat16\n",
        None,
    ),
    "platypus_hermes_linear": (
        "merge_method: linear\nmodels:\n"
        + "".join(f"  - model: {{{m}}}\n    parameters:\n      weight: {w}\n" for m, w in (("m1", 0.5), ("m2", 0.3), ("m3", 0.2)))
        + "dtype: float16\n",
        None,
    ),
    "dare_ties_drop_rate": (
        DARE_TIES,
        (ConfigError, "'models[0].parameters.dare': is not a mergekit key (mergekit would silently ignore it). DARE's keep probability is 'density' (drop_rate 0.9 means density: 0.1, which conflicts with the density: 0.5 beside it)", "drop_dare"),
    ),
    "medical_task_arithmetic": (
        "merge_method: task_arithmetic\nbase_model: {base}\nmodels:\n"
        "  - model: {m1}\n    parameters:\n      weight: 0.7\n  - model: {m2}\n    parameters:\n      weight: 0.3\ndtype: bfloat16\n",
        None,
    ),
    "legal_slerp_filters": (
        _slerp("{m1}", "{m2}", "\n    - filter: self_attn\n      value: 0.7\n    - filter: mlp\n      value: 0.3\n    - value: 0.5", "bfloat16"),
        (ConfigError, NO_BASE, WITH_BASE),
    ),
    "multilingual_linear": (
        "merge_method: linear\nmodels:\n"
        + "".join(f"  - model: {{{m}}}\n    parameters:\n      weight: {w}\n" for m, w in (("m1", 0.4), ("m2", 0.3), ("m3", 0.3)))
        + "dtype: bfloat16\n",
        None,
    ),
    "gradual_step1_slerp": (_slerp("{m1}", "{m2}", " 0.3", "bfloat16"), (ConfigError, NO_BASE, WITH_BASE)),
    "gradual_step2_slerp_on_step1": (_slerp("{step1}", "{m3}", " 0.3", "bfloat16"), (ConfigError, NO_BASE, "base_model: {step1}\n")),
    "ab_variant_a_slerp": (_slerp("{m1}", "{m2}", " 0.3", "bfloat16"), (ConfigError, NO_BASE, WITH_BASE)),
    "ab_variant_b_slerp": (_slerp("{m1}", "{m2}", " 0.7", "bfloat16"), (ConfigError, NO_BASE, WITH_BASE)),
    "frankenmerge_passthrough": (
        "merge_method: passthrough\nslices:\n"
        + "".join(f"  - sources:\n      - model: {{{m}}}\n        layer_range: [{a}, {b}]\n" for m, a, b in (("m1", 0, 2), ("m2", 2, 6), ("m3", 6, 8)))
        + "dtype: bfloat16\n",
        None,
    ),
    "moe_from_merges": (
        "merge_method: moe\nbase_model: {base}\nexperts:\n"
        + "".join(f"  - source_model: {{{m}}}\n    positive_prompts:\n      - \"{p}\"\n" for m, p in (("m1", "math"), ("m2", "code"), ("m3", "chat")))
        + "dtype: bfloat16\n",
        (ConfigError, "build it with 'mergeflow moe CONFIG OUT'", None),
    ),
}


def _models(model_dir, tmp_path, template: str) -> dict:
    names = {m: model_dir(m, layers=LAYERS, dtype=torch.bfloat16) for m in ("base", "m1", "m2", "m3")}
    names["qwen2"] = model_dir("m2", arch="qwen2", layers=LAYERS, dtype=torch.bfloat16)
    if "{step1}" in template:  # a gradual merge reads the previous step's output by path
        names["step1"] = tmp_path / "merged_step1"
        mergeflow_merge((SEED_CONFIGS["gradual_step1_slerp"][0] + WITH_BASE).format(**names), names["step1"])
    return names


def _fixed(template: str, fix: str) -> str:
    if fix == "drop_dare":
        return template.replace("      dare:\n        drop_rate: 0.9\n", "")
    return template + fix


def _check_parity(text: str, tmp_path) -> None:
    mergekit_merge(text, tmp_path / "mergekit")
    mergeflow_merge(text, tmp_path / "mergeflow")
    assert_bit_identical(tmp_path / "mergeflow", tmp_path / "mergekit")


@pytest.mark.parametrize("name", sorted(SEED_CONFIGS))
def test_seed_config(name, model_dir, tmp_path):
    template, expected = SEED_CONFIGS[name]
    names = _models(model_dir, tmp_path, template)
    text = template.format(**names)
    if expected is None:
        _check_parity(text, tmp_path)
        return
    error, message, fix = expected
    with pytest.raises(MergeflowError) as raised:
        mergeflow_merge(text, tmp_path / "rejected")
    assert type(raised.value) is error and message in str(raised.value)
    assert len(str(raised.value).splitlines()) == 1
    assert not (tmp_path / "rejected").exists()
    if error is PreflightError:  # the mismatch is named, model by model
        assert str(names["qwen2"]) in str(raised.value) and str(names["m1"]) in str(raised.value)
    if "dare:" not in template:  # mergekit ignores `dare:`; the other invalid configs it refuses too
        with pytest.raises(Exception):
            mergekit_merge(text, tmp_path / "mergekit-rejected")
    if fix is not None:
        _check_parity(_fixed(template, fix).format(**names), tmp_path)

"""Out-of-range parameter values, checked against real mergekit 0.1.5: where it produces output
we keep its bits and warn naming the key; where it crashes we fail before reading a weight."""

from __future__ import annotations

import pytest

from oracle import assert_bit_identical, mergekit_merge, mergeflow_merge


def _two(models, method, params, base=True):
    head = f"merge_method: {method}\n" + (f"base_model: {models['base']}\n" if base else "")
    return head + "".join(f"  - model: {models[m]}\n    parameters: {{{params}}}\n" for m in ("m1", "m2")).join(["models:\n", ""])


ACCEPTED = {
    "ties_density_above_1": ("ties", "weight: 0.5, density: 1.5", "models[0].parameters.density", True),
    "breadcrumbs_density_below_0": ("breadcrumbs", "weight: 0.5, density: -0.5", "models[0].parameters.density", True),
    "dare_density_above_1": ("dare_linear", "weight: 0.5, density: 1.5", "models[0].parameters.density", True),
    "della_density_below_0": ("della", "weight: 0.5, density: -0.5", "models[0].parameters.density", True),
    "nuslerp_negative_weight": ("nuslerp", "weight: -0.5", "models[0].parameters.weight", False),
}


@pytest.mark.parity
@pytest.mark.parametrize("case", sorted(ACCEPTED))
def test_accepted_by_mergekit_keeps_its_bits_and_warns(case, models, tmp_path, caplog):
    method, params, key, base = ACCEPTED[case]
    text = _two(models, method, params, base)
    mergeflow_merge(text, tmp_path / "ours")
    assert f"config key '{key}'" in caplog.text
    mergekit_merge(text, tmp_path / "theirs")
    assert_bit_identical(tmp_path / "ours", tmp_path / "theirs")


@pytest.mark.parity
def test_slerp_t_outside_0_1_and_an_empty_filter_warn(models, tmp_path, caplog):
    text = (
        f"merge_method: slerp\nbase_model: {models['base']}\nparameters:\n  t:\n"
        "    - filter: ''\n      value: 1.5\nmodels:\n"
        f"  - model: {models['base']}\n  - model: {models['m1']}\n"
    )
    mergeflow_merge(text, tmp_path / "ours")
    assert "config key 'parameters.t': t 1.5 is outside [0, 1]" in caplog.text
    assert "config key 'parameters.t[0].filter': empty, so it matches every tensor" in caplog.text
    mergekit_merge(text, tmp_path / "theirs")
    assert_bit_identical(tmp_path / "ours", tmp_path / "theirs")


def test_weights_summing_to_zero_warn(models, tmp_path, caplog):
    text = _two(models, "linear", "weight: 0.5", base=False).replace("weight: 0.5", "weight: -0.5", 1)
    mergeflow_merge(text, tmp_path / "ours")
    assert "sum to 0" in caplog.text and "models[0].parameters.weight" in caplog.text


CRASHES = {  # mergekit 0.1.5 crashes mid-merge on each (checked by test_mergekit_crashes_on_these)
    "dare_negative_density": ("dare_ties", "weight: 0.5, density: -0.5"),
    "della_epsilon_beyond_1": ("della_linear", "weight: 0.5, density: 0.98, epsilon: 0.05"),
    "della_epsilon_below_0": ("della", "weight: 0.5, density: 0.02, epsilon: 0.05"),
    "ties_nan_density": ("ties", "weight: 0.5, density: .nan"),
}


@pytest.mark.parametrize("case", sorted(CRASHES))
def test_crashes_in_mergekit_fail_at_plan_time(case, merge, models, monkeypatch):
    from mergeflow.engine import checkpoint

    monkeypatch.setattr(checkpoint.Checkpoint, "load", lambda *a: pytest.fail("a weight was read"))
    merge.fails(_two(models, *CRASHES[case]), "config key 'models[0].parameters.density'")


@pytest.mark.parity
@pytest.mark.parametrize("case", sorted(CRASHES))
def test_mergekit_crashes_on_these(case, models, tmp_path):
    with pytest.raises((RuntimeError, ValueError)):
        mergekit_merge(_two(models, *CRASHES[case]), tmp_path / "theirs")

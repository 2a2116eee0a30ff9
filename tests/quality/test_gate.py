import pytest

from mergeflow.cli import main
from mergeflow.quality.gate import parse_gate, verdict

from .conftest import node_command


def test_max_drop_compares_with_the_best_parent():
    gate = parse_gate({"metric": "demo/exact_match", "max_drop": 0.05}, True)
    ok = verdict(gate, "s", 0.66, {"add": 0.70, "rev": 0.60})
    assert ok["passed"] and ok["reference"] == 0.70 and ok["reference_step"] == "add"
    assert ok["threshold"] == pytest.approx(0.65)
    # Better than the weaker parent is not enough.
    bad = verdict(gate, "s", 0.64, {"add": 0.70, "rev": 0.60})
    assert not bad["passed"] and "failed the gate" in bad["reason"]


def test_exactly_at_the_threshold_passes():
    gate = parse_gate({"metric": "demo/exact_match", "max_drop": 0.05}, True)
    assert verdict(gate, "s", 0.65, {"p": 0.70})["passed"]


def test_max_drop_on_a_lower_is_better_metric():
    gate = parse_gate({"metric": "demo_nll/nll", "max_drop": 0.1}, False)
    # The best parent is the one with the *lowest* loss; a drop is a rise.
    ok = verdict(gate, "s", 0.55, {"a": 0.45, "b": 1.5})
    assert ok["passed"] and ok["reference"] == 0.45 and ok["threshold"] == pytest.approx(0.55)
    assert not verdict(gate, "s", 0.56, {"a": 0.45, "b": 1.5})["passed"]
    assert verdict(gate, "s", 0.30, {"a": 0.45})["passed"]  # lower loss than parents


def test_absolute_floor_and_ceiling():
    floor = parse_gate({"metric": "demo/exact_match", "min": 0.6}, True)
    assert verdict(floor, "s", 0.6, {})["passed"]
    assert not verdict(floor, "s", 0.59, {"p": 0.1})["passed"]
    ceiling = parse_gate({"metric": "demo_nll/nll", "max": 1.0}, False)
    assert verdict(ceiling, "s", 0.9, {})["passed"]
    result = verdict(ceiling, "s", 1.1, {})
    assert not result["passed"] and result["threshold"] == 1.0 and result["reference"] is None


@pytest.mark.parametrize(
    "block, higher, message",
    [
        ({"metric": "demo_nll/nll", "min": 1.0}, False, "'max', not 'min'"),
        ({"metric": "demo/exact_match", "max": 0.5}, True, "'min', not 'max'"),
        ({"metric": "demo/exact_match"}, True, "exactly one"),
        ({"metric": "demo/exact_match", "max_drop": 0.1, "min": 0.5}, True, "exactly one"),
        ({"metric": "exact_match", "max_drop": 0.1}, True, "TASK/METRIC"),
        ({"metric": "demo/exact_match", "max_drop": 0.1, "stopp": True}, True, "unknown keys"),
        ({"metric": "demo/exact_match", "min": 0.5, "significant": True}, True, "needs 'max_drop'"),
        # lm-eval's direction decides, not the name: ter is lower-is-better.
        ({"metric": "wmt/ter", "min": 50}, False, "'max', not 'min'"),
    ],
)
def test_gate_config_errors(block, higher, message):
    with pytest.raises(ValueError, match=message):
        parse_gate(block, higher)


def test_stop_only_when_configured_failing_and_not_a_variant():
    stopping = parse_gate({"metric": "demo/exact_match", "min": 0.5, "stop": True}, True)
    assert verdict(stopping, "s", 0.4, {})["stop"] is True
    assert "do not run" in verdict(stopping, "s", 0.4, {})["reason"]
    assert verdict(stopping, "s", 0.6, {})["stop"] is False
    assert verdict(stopping, "s--v", 0.4, {}, may_stop=False)["stop"] is False
    lenient = parse_gate({"metric": "demo/exact_match", "min": 0.5}, True)
    assert verdict(lenient, "s", 0.4, {})["stop"] is False


def test_cli_reads_parents_through_the_manifest(recipe):
    recipe()
    # step1 is its selected variant (w75: 0.785); best parent add 0.70 → threshold 0.65
    node_command("select", "step1")
    result = node_command("gate", "step1")
    assert set(result) >= {
        "step",
        "passed",
        "metric",
        "value",
        "reference",
        "threshold",
        "reason",
        "stop",
    }
    assert result["passed"] and result["value"] == pytest.approx(0.785)
    assert result["reference"] == pytest.approx(0.70) and result["stop"] is False


def test_cli_failing_step_exits_zero_and_says_stop(recipe, capsys):
    recipe({"metric": "demo/exact_match", "max_drop": 0.01, "stop": True})
    node_command("select", "step1")
    # step2 0.77 against its best parent step1 (0.785) minus 0.01
    result = node_command("gate", "step2")
    assert not result["passed"] and result["stop"] is True
    assert result["threshold"] == pytest.approx(0.775)
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("step2 failed the gate")


def test_cli_variant_fails_without_stopping(recipe):
    recipe({"metric": "demo/exact_match", "min": 0.7, "stop": True})
    result = node_command("gate", "step1--w50")
    assert not result["passed"] and result["stop"] is False


def test_cli_without_gate_passes(recipe):
    recipe({})
    assert node_command("gate", "step2")["passed"] is True


def test_cli_unknown_metric_is_an_error(recipe, capsys):
    recipe({"metric": "demo/acc", "max_drop": 0.1})
    code = main(
        ["gate", "--manifest", "manifest.json", "--step", "step2", "--output", "out/g.json"]
    )
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and "demo/exact_match" in err


def test_significant_fails_only_when_the_whole_interval_is_beyond_the_allowed_drop():
    gate = parse_gate({"metric": "demo/exact_match", "max_drop": 0.02, "significant": True}, True)
    parents = {"a": 0.70}
    # 0.66 is 0.04 below: outside the allowance, but the CI of the difference reaches -0.01.
    noisy = verdict(gate, "s", 0.66, parents, intervals={"a": (-0.07, -0.01, "mcnemar")})
    assert noisy["passed"] and "within noise" in noisy["reason"] and noisy["significant"]
    # The CI's best case is still more than 0.02 below: a real drop.
    real = verdict(gate, "s", 0.66, parents, intervals={"a": (-0.07, -0.03, "mcnemar")})
    assert not real["passed"] and "failed the gate" in real["reason"]
    # Lower is better: a CI of (+0.01, +0.05) on a loss never comes back under max_drop 0.
    loss = parse_gate({"metric": "t/nll", "max_drop": 0.0, "significant": True}, False)
    assert not verdict(loss, "s", 0.5, {"a": 0.47}, intervals={"a": (0.01, 0.05, "p")})["passed"]
    assert verdict(loss, "s", 0.5, {"a": 0.47}, intervals={"a": (-0.01, 0.05, "p")})["passed"]
    # Untestable (no samples, no stderr): it cannot be shown significant, and the reason says so.
    untested = verdict(gate, "s", 0.5, parents, intervals={})
    assert untested["passed"] and "cannot be tested" in untested["reason"]


def test_cli_significant_gate_uses_the_paired_test(recipe):
    # demo_add: step2 0.58 against step1 0.60 is 4 discordant items of 200 (p = 0.125).
    recipe({"metric": "demo_add/exact_match", "max_drop": 0.0, "significant": True})
    node_command("select", "step1")
    result = node_command("gate", "step2")
    assert result["passed"] and "within noise" in result["reason"] and "mcnemar" in result["reason"]
    recipe({"metric": "demo_add/exact_match", "max_drop": 0.0})
    assert not node_command("gate", "step2")["passed"]
    # demo (both subtasks): 6 discordant items, all lost (p = 0.031): a significant drop.
    recipe({"metric": "demo/exact_match", "max_drop": 0.0, "significant": True})
    assert not node_command("gate", "step2")["passed"]

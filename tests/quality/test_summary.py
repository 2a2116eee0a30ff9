"""The lines a pipeline run ends with."""

from mergeflow.quality.summary import print_summary, summary_lines

from .conftest import node_command


def run_gates():
    node_command("select", "step1")
    for step in ("step1--w50", "step1--w75", "step1--w90", "step1", "step2"):
        node_command("gate", step)


def test_each_step_verdict_gate_and_choice(recipe):
    recipe()
    run_gates()
    lines = summary_lines("manifest.json", "report/index.html")
    assert lines[0] == "mergeflow summary: demo/exact_match (higher is better; 95% paired tests)"
    assert lines[1] == (
        "  step1  0.785 ± 0.018 · better than every parent · gate PASS (0.785 ≥ 0.650) · "
        "chose step1--w75 of 3 variants"
    )
    assert lines[2] == (
        "  step2  0.770 ± 0.019 · worse than step1; better than copy · gate PASS (0.770 ≥ 0.735)"
    )
    assert lines[3] == "  step3  not run: no results at eval/step3.json"
    assert lines[-1] == "  report: report/index.html"
    assert not any(line.startswith("GATE STOP") for line in lines)


def test_a_gate_stop_is_a_marked_line(recipe):
    recipe({"metric": "demo/exact_match", "max_drop": 0.01, "stop": True})
    run_gates()
    lines = summary_lines("manifest.json", "report/index.html")
    stop = [line for line in lines if line.startswith("GATE STOP: ")]
    assert len(stop) == 1 and "step2 failed the gate" in stop[0]
    assert stop[0].endswith("; not run: step3")
    assert "  step3  not run: step2 failed the gate and gate.stop is set" in lines


def test_before_anything_ran_it_says_so(tmp_path, capsys):
    print_summary(tmp_path / "missing.json", "report/index.html")
    assert capsys.readouterr().out.strip().startswith("mergeflow: no results to summarise yet")

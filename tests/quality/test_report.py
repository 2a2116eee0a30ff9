import base64
import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from mergeflow.cli import main
from mergeflow.quality.metrics import COLUMNS
from mergeflow.quality.report import (
    compare,
    fmt_sigmas,
    fmt_value,
    load_manifest,
    manifest_table,
    parse_manifest,
)

from .conftest import node_command

EVALUATED = [
    "base",
    "add",
    "rev",
    "copy",
    "step1--w50",
    "step1--w75",
    "step1--w90",
    "step1",
    "step2",
]
TASK_METRICS = {
    ("demo", "exact_match"),
    ("demo_add", "exact_match"),
    ("demo_rev", "exact_match"),
    ("demo_add_nll", "nll"),
    ("text_ppl", "word_perplexity"),
    ("text_ppl", "bits_per_byte"),
}


class Attributes(HTMLParser):
    """Every tag and (name, value) attribute of a page."""

    def __init__(self):
        super().__init__()
        self.tags, self.attrs = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs.extend((tag, name, value or "") for name, value in attrs)


def run_workflow_commands(gate=None, select=True):
    if select:
        node_command("select", "step1")
    for step in ("step1--w50", "step1--w75", "step1--w90", "step1", "step2"):
        node_command("gate", step)
    assert main(["report", "--manifest", "manifest.json", "--out-dir", "report"]) == 0
    return Path("report/index.html").read_text()


def test_metrics_csv_is_tidy_and_covers_every_evaluated_node(recipe):
    recipe()
    run_workflow_commands()
    table = pd.read_csv("report/metrics.csv")
    assert list(table.columns) == COLUMNS
    assert list(dict.fromkeys(table.step)) == EVALUATED  # manifest order; step3 never ran
    for step in EVALUATED:
        rows = table[table.step == step]
        assert set(zip(rows.task, rows.metric)) == TASK_METRICS
    # A step with variants carries the numbers of the variant it selected.
    step1 = table[table.step == "step1"].drop(columns="step").reset_index(drop=True)
    w75 = table[table.step == "step1--w75"].drop(columns="step").reset_index(drop=True)
    pd.testing.assert_frame_equal(step1, w75)
    assert set(table[table.step == "add"].model) == {"workflow/demo/models/add"}
    ppl = table[table.metric == "word_perplexity"]
    assert ppl.stderr.isna().all() and (ppl.n == 20).all()
    demo = table[(table.task == "demo") & (table.step == "add")].iloc[0]
    assert demo.value == pytest.approx(0.70) and demo.n == 400


def test_deltas_and_significance(recipe):
    path = recipe()
    node_command("select", "step1")
    manifest = load_manifest(path)
    deltas = compare(manifest_table(manifest), manifest)

    def row(step, parent, task, metric="exact_match"):
        hit = deltas[
            (deltas.step == step)
            & (deltas.parent == parent)
            & (deltas.task == task)
            & (deltas.metric == metric)
        ]
        assert len(hit) == 1
        return hit.iloc[0]

    worse = row("step1--w75", "add", "demo_add")  # 0.60 vs 0.80, noise ≈ 0.045
    assert worse.delta == pytest.approx(-0.20) and worse.significant and worse.status == "worse"
    assert worse.noise == pytest.approx(math.sqrt(worse.stderr**2 + worse.parent_stderr**2))
    better = row("step1--w75", "rev", "demo_add")
    assert better.delta == pytest.approx(0.40) and better.status == "better"
    noise = row("step2", "step1", "demo_add")  # 0.58 vs 0.60: inside ±0.049
    assert (
        noise.delta == pytest.approx(-0.02)
        and not noise.significant
        and noise.status == "within noise"
    )
    # Lower is better: nll 0.45 → 0.50 is a significant regression (noise 0.028).
    loss = row("step2", "step1", "demo_add_nll", "nll")
    assert loss.delta == pytest.approx(0.05) and loss.status == "worse"
    assert row("step2", "copy", "demo_add_nll", "nll").status == "better"
    # No stderr on either side: never significant, however large the delta.
    ppl = row("step2", "copy", "text_ppl", "word_perplexity")
    assert ppl.delta == pytest.approx(-2.6) and not ppl.significant and ppl.status == "no stderr"
    # Every (step, parent) pair of every evaluated merged node is there; nothing for step3.
    pairs = set(zip(deltas.step, deltas.parent))
    assert pairs == {
        (v, p) for v in ("step1--w50", "step1--w75", "step1--w90", "step1") for p in ("add", "rev")
    } | {
        ("step2", "step1"),
        ("step2", "copy"),
    }


def test_html_is_self_contained(recipe):
    recipe()
    page = run_workflow_commands()
    parser = Attributes()
    parser.feed(page)
    links = [(tag, name, value) for tag, name, value in parser.attrs if name in ("src", "href")]
    assert not [v for _, _, v in links if "http://" in v or "https://" in v or v.startswith("//")]
    assert "http://" not in page and "https://" not in page
    assert "script" not in parser.tags and "link" not in parser.tags and "url(" not in page
    images = [v for tag, name, v in links if tag == "img"]
    assert len(images) == 5  # one plot per task
    for src in images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in Path("report/plots").iterdir()) == [
        "demo.png",
        "demo_add.png",
        "demo_add_nll.png",
        "demo_rev.png",
        "text_ppl.png",
    ]


def test_html_shows_verdicts_lineage_config_and_provenance(recipe):
    recipe()
    page = run_workflow_commands()
    assert "better than every parent" in page  # step1--w75 on demo/exact_match vs add and rev
    assert '<td class="best">step1--w75</td>' in page  # the selected variant, in bold
    assert page.count('class="pass"') >= 5 and "FAIL" not in page
    assert "<svg" in page and "step1--w75" in page.split("<svg", 1)[1].split("</svg>", 1)[0]
    assert "merge_method: linear" in page and "parameters: {weight: 0.75}" in page
    assert "50b9762caceca06b" in page and "tensors</b>: 3" in page and "torch_version" in page
    assert "71f33d0163224876" not in page  # a summary, not every tensor hash
    assert "not run: no results at eval/step3.json" in page
    assert "step1 is its selected variant step1--w75." in page
    # A good headline cannot hide a lost skill: reversal fell beyond noise against rev.
    # 0.97 ± 0.012 against 1.00 ± 0.0: the loss is 2.5 times the noise.
    assert "▼ demo_rev/exact_match -0.030 (2.5σ) vs rev" in page


def test_html_marks_a_failed_gate_and_the_steps_it_stopped(recipe):
    recipe({"metric": "demo/exact_match", "max_drop": 0.01, "stop": True})
    page = run_workflow_commands()
    assert "FAIL" in page and "step2 failed the gate" in page
    assert "not run: step2 failed the gate and gate.stop is set" in page


def test_report_before_selection_shows_the_step_as_not_run(recipe):
    recipe({})
    page = run_workflow_commands(select=False)
    assert "not run: no variant selected yet" in page
    # step2 depends on step1, which has no results yet: it has no deltas against it.
    table = pd.read_csv("report/metrics.csv")
    assert "step1" not in set(table.step)


def test_manifest_errors_are_caught_early(manifest_data):
    good = manifest_data
    bad_parent = json.loads(json.dumps(good))
    bad_parent["nodes"][-1]["parents"] = ["nowhere"]
    with pytest.raises(ValueError, match="unknown node 'nowhere'"):
        parse_manifest(bad_parent)
    bad_kind = json.loads(json.dumps(good))
    bad_kind["nodes"][0]["kind"] = "model"
    with pytest.raises(ValueError, match="kind must be one of"):
        parse_manifest(bad_kind)
    typo = json.loads(json.dumps(good))
    typo["nodes"][0]["evals"] = "x.json"
    with pytest.raises(ValueError, match="unknown keys"):
        parse_manifest(typo)


def section(page, key):
    """The HTML of one report section, from its heading to the next one."""
    return page.split(f'<h2 id="{key}">', 1)[1].split("<h2 id=", 1)[0]


def test_sigmas_say_how_far_beyond_noise_a_delta_is(recipe):
    path = recipe()
    node_command("select", "step1", "out/s.json")
    manifest = load_manifest(path)
    deltas = compare(manifest_table(manifest), manifest).set_index(
        ["step", "parent", "task", "metric"]
    )
    worse = deltas.loc[("step1--w75", "add", "demo_add", "exact_match")]
    assert worse.sigmas == pytest.approx(abs(worse.delta) / worse.noise)
    assert worse.sigmas > 1 and worse.significant
    # 1.0 ± 0 against 1.0 ± 0: no difference, not a division by zero.
    same = deltas.loc[("step1--w50", "rev", "demo_rev", "exact_match")]
    assert same.delta == 0 and same.noise == 0
    assert same.sigmas == 0 and same.status == "within noise"
    assert math.isnan(deltas.loc[("step2", "copy", "text_ppl", "word_perplexity")].sigmas)


def test_numbers_are_printed_to_the_precision_of_their_stderr():
    assert fmt_value(0.903333, 0.0119999) == "0.903 ± 0.012"
    assert fmt_value(0.173417, 0.006653) == "0.1734 ± 0.0067"
    assert fmt_value(0.0012276, 9.03e-06) == "0.001228 ± 0.000009"
    assert fmt_value(1.0, 0.0) == "1.000 ± 0.000"
    assert fmt_value(11.0, math.nan) == "11.000"  # a perplexity without stderr
    assert fmt_value(0.0012, math.nan) == "0.00120"  # small, yet not printed as 0.001
    assert fmt_value(0.9, 0.05, digits=4) == "0.9000 ± 0.0500"
    assert fmt_sigmas(2.54) == "2.5σ" and fmt_sigmas(math.inf) == "≥100σ"
    assert fmt_sigmas(math.nan) == ""


def test_glance_has_one_row_per_step_with_each_parent_and_the_noise_ratio(recipe):
    recipe()
    glance = section(run_workflow_commands(), "glance")
    table = glance.split("<table>", 1)[1]
    for step in ("step1", "step2", "step3"):
        assert f'href="#node-{step}"><b>{step}</b>' in table
    assert "step1--w50" not in table and "step1--w90" not in table  # variants: see Variants
    assert "chose step1--w75 of 3 variants" in table
    # Every parent on its own line, the size in noise units, the best parent marked.
    assert "vs add: ▲ +0.085 · 2.9σ (best parent)" in table
    assert "vs rev: ▲ +0.185 · 8.0σ" in table
    assert "vs step1: ▼ -0.015 · 0.6σ (best parent)" in table
    assert "better than copy; within noise of step1" in table
    # Losses come before gains among the other metrics.
    changes = table.split("step2", 1)[0].split('class="list changes"', 1)[1]
    assert changes.index("▼") < changes.index("more within noise")


def test_bottom_line_names_the_final_and_best_step_the_gate_and_variant_margins(recipe):
    recipe()
    page = run_workflow_commands()
    summary = page.split('<ul class="summary">', 1)[1].split("</ul>", 1)[0]
    assert "Final step" in summary and "step3</b></a>: " in summary
    assert "not run: no results at eval/step3.json" in summary
    assert "the last evaluated step before it is" in summary and "0.770 ± 0.019" in summary
    assert "Best step on demo/exact_match:" in summary and "step1</b></a> 0.785 ± 0.018" in summary
    assert "Gate: 2 of 3 steps passed" in summary and "not run: step3" in summary
    assert "step1 → step1--w75 (+0.060 over step1--w90, 2.1σ: lead beyond noise)" in summary


def test_variants_show_each_ones_gap_to_the_winner(recipe):
    recipe()
    variants = section(run_workflow_commands(), "variants")
    assert "Δ vs winner" in variants and "selected → step1" in variants
    assert (
        variants.index("step1--w75") < variants.index("step1--w90") < variants.index("step1--w50")
    )
    assert "▼ -0.060 · 2.1σ" in variants and "▼ -0.110 · 4.4σ" in variants


def test_lineage_keeps_inputs_next_to_their_use_and_shows_the_headline(recipe):
    recipe()
    svg = run_workflow_commands().split("<svg", 1)[1].split("</svg>", 1)[0]
    x = {
        name: float(value)
        for name, value in re.findall(r'<title>([^:<]+): [^<]*</title><rect x="([0-9.]+)"', svg)
    }
    assert x["add"] == x["rev"] < x["step1--w75"] < x["step1"] < x["step2"] < x["step3"]
    # copy is merged into step2, base into step3: each sits one column before its use.
    assert x["copy"] == x["step1"] and x["base"] == x["step2"]
    assert "0.785 ± 0.018" in svg and "not run" in svg


def test_all_scores_puts_inputs_and_steps_side_by_side_best_in_bold(recipe):
    recipe()
    scores = section(run_workflow_commands(), "scores")
    assert "input models</th>" in scores and "steps</th>" in scores
    assert '<td class="num best">0.785 ± 0.018</td>' in scores  # step1 is best on demo
    row = scores.split("demo_add_nll/nll ↓", 1)[1].split("</tr>", 1)[0]
    assert 'class="num best">0.300' in row  # lower is better: add's 0.30


def test_step_details_show_config_and_provenance_and_fold_the_variants(recipe):
    recipe()
    details = section(run_workflow_commands(), "details")
    step1 = details.split('id="node-step1"', 1)[1].split('id="node-step2"', 1)[0]
    assert "<h4>merge config</h4><pre>merge_method: linear" in step1
    assert "<h4>provenance</h4>" in step1
    assert "<details><summary>step1's 3 variants" in step1 and 'id="node-step1--w50"' in step1


def test_a_recipe_without_gate_says_so_instead_of_passing_everything(recipe):
    recipe({})
    page = run_workflow_commands()
    assert "PASS" not in page and "No gate configured." in page
    assert page.count('<td class="neutral">no gate</td>') >= 2

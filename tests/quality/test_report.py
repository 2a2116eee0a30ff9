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
from mergeflow.quality.formatting import fmt_p, fmt_signed, fmt_value
from mergeflow.quality.manifest import load_manifest, load_results, manifest_table, parse_manifest
from mergeflow.quality.statistics import compare_pairs


def compare(table, manifest):
    pairs = [(n.name, p) for n in manifest.nodes.values() for p in n.parents]
    present = set(table.step)
    pairs = [(s, p) for s, p in pairs if s in present and p in present]
    return compare_pairs(table, load_results(manifest), pairs)


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


def test_paired_deltas_with_known_answers(recipe):
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

    # 0.60 vs 0.80 of 200 items, nested: 40 discordant items, all for add. Exact McNemar.
    worse = row("step1--w75", "add", "demo_add")
    assert worse.delta == pytest.approx(-0.20) and worse.method == "mcnemar"
    assert worse.p_value == pytest.approx(2 * 0.5**40) and worse.status == "worse"
    # Clopper-Pearson on 0 wins of 40: the share π ∈ [0, 0.088], the difference 0.2 · (2π − 1).
    assert worse.ci_low == pytest.approx(-0.2) and worse.n_paired == 200
    assert worse.ci_high == pytest.approx(0.2 * (2 * (1 - 0.025 ** (1 / 40)) - 1))
    assert row("step1--w75", "rev", "demo_add").status == "better"
    # 0.58 vs 0.60: 4 discordant items, p = 2 · 0.5⁴ = 0.125: within noise.
    noise = row("step2", "step1", "demo_add")
    assert noise.delta == pytest.approx(-0.02) and noise.p_value == pytest.approx(0.125)
    assert not noise.significant and noise.status == "within noise"
    assert noise.ci_low < 0 < noise.ci_high
    # The group demo (mean of demo_add and demo_rev) is tested on the pooled items.
    group = row("step2", "step1", "demo")
    assert group.method == "mcnemar" and group.n_paired == 400
    # Lower is better (lm-eval's higher_is_better: false): every item's nll rises by 0.05, so
    # the interval is that point and the permutation test finds no swap as extreme.
    loss = row("step2", "step1", "demo_add_nll", "nll")
    assert loss.method == "permutation" and loss.status == "worse"
    assert loss.ci_low == pytest.approx(0.05) and loss.ci_high == pytest.approx(0.05)
    assert loss.p_value == pytest.approx(1 / 2001)
    assert row("step2", "copy", "demo_add_nll", "nll").status == "better"
    # No samples and no stderr: not tested, never significant, however large the delta.
    ppl = row("step2", "copy", "text_ppl", "word_perplexity")
    assert ppl.delta == pytest.approx(-2.6) and not ppl.significant and ppl.status == "no stderr"
    assert ppl.method == "none" and ppl.note == "no per-item samples"
    # Identical items: a zero delta, a zero interval, p = 1.
    same = row("step1--w50", "rev", "demo_rev")
    assert same.delta == 0 and (same.ci_low, same.ci_high, same.p_value) == (0, 0, 1)
    # Every (step, parent) pair of every evaluated merged node is there; nothing for step3.
    pairs = set(zip(deltas.step, deltas.parent))
    assert pairs == {
        (v, p) for v in ("step1--w50", "step1--w75", "step1--w90", "step1") for p in ("add", "rev")
    } | {
        ("step2", "step1"),
        ("step2", "copy"),
    }


def test_without_samples_the_stderr_view_is_used_and_said(recipe):
    path = recipe()
    for name in ("step2", "copy"):
        raw = json.loads(Path(f"eval/{name}.json").read_text())
        del raw["mergeflow_samples"]
        Path(f"eval/{name}.json").write_text(json.dumps(raw))
    node_command("select", "step1")
    manifest = load_manifest(path)
    deltas = compare(manifest_table(manifest), manifest).set_index(
        ["step", "parent", "task", "metric"]
    )
    row = deltas.loc[("step2", "copy", "demo_add_nll", "nll")]
    assert row.method == "stderr" and row.note == "no per-item samples"
    noise = math.hypot(row.stderr, row.parent_stderr)
    z = abs(row.delta) / noise
    assert row.p_value == pytest.approx(math.erfc(z / math.sqrt(2)))
    assert row.ci_high - row.ci_low == pytest.approx(2 * 1.959964 * noise, rel=1e-5)
    assert deltas.loc[("step2", "step1", "demo_add", "exact_match")].method == "stderr"
    assert deltas.loc[("step1", "add", "demo_add", "exact_match")].method == "mcnemar"
    page = run_workflow_commands()
    assert "Without per-item samples" in page and "unpaired" in page


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
    # 0.97 against 1.00: 6 of 200 items lost, none won: exact McNemar p = 2 · 0.5⁶.
    assert "▼ demo_rev/exact_match -0.0300 (p=0.031) vs rev" in page


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


def test_numbers_are_printed_to_the_precision_of_their_stderr():
    assert fmt_value(0.903333, 0.0119999) == "0.903 ± 0.012"
    assert fmt_value(0.173417, 0.006653) == "0.1734 ± 0.0067"
    assert fmt_value(0.0012276, 9.03e-06) == "0.001228 ± 0.000009"
    assert fmt_value(1.0, 0.0) == "1.000 ± 0.000"
    assert fmt_value(11.0, math.nan) == "11.000"  # a perplexity without stderr
    assert fmt_value(0.0012, math.nan) == "0.00120"  # small, yet not printed as 0.001
    assert fmt_value(0.9, 0.05, digits=4) == "0.9000 ± 0.0500"
    assert fmt_signed(0.0, 0.01) == "0.000"  # a zero delta is zero, unsigned
    assert fmt_signed(-0.0, math.nan) == "0.000"
    assert fmt_signed(0.05, 0.01) == "+0.050" and fmt_signed(-0.0012, 0.0001) == "-0.00120"
    assert fmt_p(2e-12) == "p<0.001" and fmt_p(0.125) == "p=0.12" and fmt_p(0.039) == "p=0.039"


def test_glance_has_one_row_per_step_with_each_parent_ci_and_p(recipe):
    recipe()
    glance = section(run_workflow_commands(), "glance")
    table = glance.split('<table class="sticky">', 1)[1]
    for step in ("step1", "step2", "step3"):
        assert f'href="#node-{step}"><b>{step}</b>' in table
    assert "step1--w50" not in table and "step1--w90" not in table  # variants: see Variants
    assert "chose step1--w75 of 3 variants" in table
    # Every parent on its own line with the CI and p-value; the step it builds on comes first.
    assert "vs add: ▲ +0.085 [+0.031, +0.135] p=0.0019 (best parent)" in table
    assert "vs rev: ▲ +0.185 [+0.152, +0.204] p&lt;0.001" in table
    step2 = table.split('href="#node-step2"', 1)[1].split('href="#node-step3"', 1)[0]
    assert step2.index("vs step1:") < step2.index("vs copy:")
    assert "vs step1: ▼ -0.0150 [-0.0150, -0.0012] p=0.031 (builds on, best parent)" in step2
    # Worse than the step it builds on is red, whatever it gained against another parent.
    assert '<td class="verdict worse">worse than step1; better than copy</td>' in step2
    # Other metrics: against the best parent for a first step, losses first...
    changes = table.split("step2", 1)[0].split('class="list changes"', 1)[1].split("</td>")[0]
    assert "▼ demo_add/exact_match -0.2000 (p&lt;0.001) vs add" in changes
    assert "▼ demo_rev/exact_match -0.0300 (p=0.031) vs rev" in changes
    assert changes.index("▼") < changes.index("more within noise") and "▲" not in changes
    # ...and against the step it builds on for a later one.
    changes = step2.split('class="list changes"', 1)[1].split("</td>")[0]
    assert "▼ demo_add_nll/nll +0.050 (p&lt;0.001) vs step1" in changes and "vs copy" not in changes
    assert "Significant means p &lt; 0.05; intervals are 95% confidence intervals" in glance
    assert "exact McNemar" in glance and "permutation test" in glance


def test_bottom_line_names_the_final_and_best_step_the_gate_and_variant_margins(recipe):
    recipe()
    page = run_workflow_commands()
    summary = page.split('<ul class="summary">', 1)[1].split("</ul>", 1)[0]
    assert "Final step" in summary and "step3</b></a>: " in summary
    assert "not run: no results at eval/step3.json" in summary
    assert "the last evaluated step before it is" in summary and "0.770 ± 0.019" in summary
    assert "Best step on demo/exact_match:" in summary and "step1</b></a> 0.785 ± 0.018" in summary
    assert "Gate: 2 of 3 steps passed" in summary and "not run: step3" in summary
    assert (
        "step1 → step1--w75 (▲ +0.060 [+0.013, +0.103] p=0.012 over step1--w90: lead beyond "
        "noise)" in summary
    )


def test_variants_show_each_ones_gap_to_the_winner(recipe):
    recipe()
    variants = section(run_workflow_commands(), "variants")
    assert "Δ vs winner" in variants and "selected → step1" in variants
    assert (
        variants.index("step1--w75") < variants.index("step1--w90") < variants.index("step1--w50")
    )
    assert "▼ -0.060 [-0.103, -0.013] p=0.012" in variants
    assert "▼ -0.110 [-0.129, -0.079] p&lt;0.001" in variants


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

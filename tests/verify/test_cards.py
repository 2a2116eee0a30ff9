"""Model cards (engine and upload) parse with huggingface_hub and carry the Hub's merge metadata."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from huggingface_hub import ModelCard

from mergeflow.engine.config import parse_config
from mergeflow.engine.outputs import merge_card
from mergeflow.methods import get_method
from mergeflow.pipeline.upload import model_card

FIXTURES = Path(__file__).resolve().parents[1] / "quality" / "fixtures"


def test_engine_card_metadata_and_method_sentence(tmp_path):
    config = parse_config(
        "merge_method: ties\nbase_model: org/base@v1\nmodels:\n"
        "  - model: org/a@abc123\n    parameters: {weight: 0.5, density: 0.5}\n"
        "  - model: org/b\n    parameters: {weight: 0.5, density: 0.5}\n"
    )
    (tmp_path / "README.md").write_text(merge_card("my-merge", config, get_method("ties")))
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.base_model == ["org/a", "org/b", "org/base"]
    assert card.data.base_model_relation == "merge" and card.data.library_name == "transformers"
    assert {"merge", "mergekit"} <= set(card.data.tags)
    assert card.data.license is None  # the parents' licences are unknown
    assert ("merged with the [TIES](https://arxiv.org/abs/2306.01708) merge method, with "
            "[org/base@v1](https://huggingface.co/org/base/tree/v1) as the base model.") in card.text
    assert "* [org/a@abc123](https://huggingface.co/org/a/tree/abc123)" in card.text
    assert "AutoModelForCausalLM.from_pretrained" in card.text


def test_engine_card_names_no_base_for_a_method_without_one(tmp_path):
    config = parse_config("merge_method: linear\nmodels:\n  - model: org/a\n    parameters: {weight: 1.0}\n")
    assert "merge method." in merge_card("m", config, get_method("linear"))


def test_upload_card_has_model_index_lineage_and_pinned_commits(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copy(FIXTURES / "eval" / "add.json", tmp_path / "eval.json")
    (tmp_path / "provenance.json").write_text(json.dumps({"seed": 1, "options": {}}))
    a, b = "org/a@" + "1" * 40, "org/b@" + "2" * 40
    manifest = {"nodes": [
        {"name": "org--a", "kind": "input", "parents": [], "source": a},
        {"name": "org--b", "kind": "input", "parents": [], "source": b},
        {"name": "s", "kind": "step", "method": "linear", "parents": ["org--a", "org--b"], "eval": "eval.json",
         "provenance": "provenance.json",
         "config": f"merge_method: linear\nmodels:\n- model: {a}\n  parameters: {{weight: 0.5}}\n"
                   f"- model: {b}\n  parameters: {{weight: 0.5}}\n"},
    ]}
    card = ModelCard(model_card(manifest, "s", "org/s-merged"))
    assert card.data.base_model == ["org/a", "org/b"]
    assert card.data.base_model_relation == "merge"
    results = {(r.dataset_name, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert results[("demo", "exact_match")] == 0.7
    assert card.data.model_name == "s"
    assert f"`{a}`" in card.text and "mergeflow reproduce org/s-merged" in card.text
    assert f"- model: {a}" in card.text

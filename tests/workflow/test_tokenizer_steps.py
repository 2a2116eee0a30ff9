"""A recipe whose steps merge tokenizers: a ChatML step, then a ``union`` step built on it.

Real Snakemake, the real engine and real lm-eval, on models whose vocabularies differ
(tests/vocab_models.py): every step is merged, evaluated with its own tokenizer and reported.
"""

from __future__ import annotations

import json

import pytest
import yaml

from conftest import TASK, make_workdir, snakemake
from vocab_models import build_vocab_models

pytestmark = pytest.mark.workflow

RECIPE = """\
name: chatmerge
merge_method: linear
base_model: base
models:
  - model: base
    parameters: {weight: 0.5}
  - model: chat
    parameters: {weight: 0.5}
tokenizer_source: union
chat_template: chatml
---
name: widen
merge_method: ties
base_model: chatmerge
models:
  - model: chatmerge
  - model: extra
    parameters: {weight: 0.5, density: 0.5}
tokenizer:
  source: union
  pad_to_multiple_of: 8
  tokens:
    "<|im_end|>": {source: chatmerge, force: true}
"""


def test_union_step_on_an_earlier_step_is_merged_evaluated_and_reported(tmp_path, offline_env):
    from transformers import AutoTokenizer
    from safetensors import safe_open

    models = build_vocab_models(tmp_path / "vocab_models")
    workdir = tmp_path / "work"
    (workdir / "tasks").mkdir(parents=True)
    data = workdir / "tasks" / "tiny.jsonl"
    data.write_text('{"prompt": "the lazy", "answer": " dog"}\n{"prompt": "row by", "answer": " row"}\n')
    (workdir / "tasks" / "tiny.yaml").write_text(TASK.format(data=data))
    make_workdir(
        workdir, RECIPE, {name: models[name] for name in ("base", "chat", "extra")},
        evaluation={"tasks": ["tiny"], "include_path": "tasks"},
    )
    snakemake(workdir, env=offline_env)

    widen = workdir / "results" / "widen" / "model"
    engine_config = yaml.safe_load((workdir / "results" / "widen" / "merge.yml").read_text())
    assert engine_config["tokenizer"]["tokens"]["<|im_end|>"]["source"] == "results/chatmerge/model"
    tokenizer = AutoTokenizer.from_pretrained(widen)
    vocab = tokenizer.get_vocab()
    assert {"<|im_start|>", "<|im_end|>", "ru"} <= set(vocab)  # ChatML from step one, "ru" from extra
    with safe_open(str(widen / "model.safetensors"), framework="pt") as weights:
        rows = weights.get_slice("model.embed_tokens.weight").get_shape()[0]
    assert rows == json.loads((widen / "config.json").read_text())["vocab_size"] == 88  # 83 tokens, padded to 8
    assert "<|im_start|>" in tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    for step in ("chatmerge", "widen"):
        results = json.loads((workdir / "results" / step / "eval" / "results.json").read_text())
        assert "tiny" in json.dumps(results)
    report = next((workdir / "results" / "report").glob("*.html"))
    assert "widen" in report.read_text()

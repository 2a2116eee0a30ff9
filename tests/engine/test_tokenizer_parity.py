"""Parity of tokenizer merging with real mergekit 0.1.5, on models whose vocabularies differ.

The models (tests/vocab_models.py) have real BPE tokenizers: a base, a ChatML fine-tune with two
added special tokens, one padded to 96 rows, one with an extra token and shuffled ids. Weights
are compared bit for bit; embedding and head rows are compared by token string, since mergekit
gives ``union``'s new tokens ids in hash order (here that order is forced only where two
ordinary tokens are new, ``extra2``). The tokenizers must be equivalent: same vocabulary and
merges, added tokens and settings, tokenizer_config.json, and chat template.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from oracle import load_dir, mergeflow_merge, mergekit_merge
from vocab_models import build_vocab_models, cast_models

pytestmark = pytest.mark.parity

VOCAB_TENSORS = ("model.embed_tokens.weight", "lm_head.weight")
MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "the lazy dog "},
    {"role": "assistant", "content": "the fox"},
    {"role": "user", "content": "row by row?"},
]


@pytest.fixture(scope="session")
def vocab_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("vocab_models")
    built = {torch.float32: build_vocab_models(root / "float32")}

    def get(dtype: torch.dtype) -> dict[str, Path]:
        if dtype not in built:
            built[dtype] = cast_models(built[torch.float32], root / str(dtype).removeprefix("torch."), dtype)
        return built[dtype]

    return get


def _vocab(path: Path) -> dict[str, int]:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path).get_vocab()


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.uint8)


def assert_same_weights(ours: Path, theirs: Path) -> None:
    """Every tensor bit-identical; vocabulary rows matched by token, not by id."""
    a, b = load_dir(ours), load_dir(theirs)
    assert sorted(a) == sorted(b), f"tensor names differ: {sorted(set(a) ^ set(b))}"
    ids_a, ids_b = _vocab(ours), _vocab(theirs)
    assert set(ids_a) == set(ids_b), f"vocabularies differ: {sorted(set(ids_a) ^ set(ids_b))}"
    for name in a:
        assert (a[name].dtype, a[name].shape) == (b[name].dtype, b[name].shape), name
        if name not in VOCAB_TENSORS or ids_a == ids_b:
            assert torch.equal(_bits(a[name]), _bits(b[name])), f"{name}: values differ"
            continue
        for token in ids_a:
            row_a, row_b = a[name][ids_a[token]], b[name][ids_b[token]]
            assert torch.equal(_bits(row_a), _bits(row_b)), f"{name}: row of {token!r} differs"
        # Padding rows are the mean of the token rows, summed in id order: equal up to rounding.
        padding = slice(len(ids_a), None)
        torch.testing.assert_close(a[name][padding], b[name][padding])
    vocab_size = json.loads((ours / "config.json").read_text())["vocab_size"]
    assert vocab_size == json.loads((theirs / "config.json").read_text())["vocab_size"]
    assert vocab_size == a["model.embed_tokens.weight"].shape[0]


def _rendered(path: Path) -> str:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path).apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)


def assert_same_tokenizer(ours: Path, theirs: Path, same_template_text: bool = True) -> None:
    from transformers import AutoTokenizer

    tok_a, tok_b = (json.loads((p / "tokenizer.json").read_text()) for p in (ours, theirs))
    ids_a, ids_b = tok_a["model"].pop("vocab"), tok_b["model"].pop("vocab")
    assert set(ids_a) == set(ids_b)
    added_a, added_b = ({e["content"]: {**e, "id": None} for e in t.pop("added_tokens")} for t in (tok_a, tok_b))
    assert added_a == added_b, "added tokens or their settings differ"
    assert tok_a == tok_b, "tokenizer.json differs (merges, normalizer, pre-tokenizer, ...)"
    config_a, config_b = (json.loads((p / "tokenizer_config.json").read_text()) for p in (ours, theirs))
    assert config_a == config_b
    assert (ours / "chat_template.jinja").exists() == (theirs / "chat_template.jinja").exists()
    if (theirs / "chat_template.jinja").exists():
        if same_template_text:
            assert (ours / "chat_template.jinja").read_text() == (theirs / "chat_template.jinja").read_text()
        assert _rendered(ours) == _rendered(theirs)
    # The ids of our tokenizer index our merged rows: the same text maps to the same tokens.
    loaded_a, loaded_b = AutoTokenizer.from_pretrained(ours), AutoTokenizer.from_pretrained(theirs)
    text = "<|im_start|>the quick fox keeps rows<|im_end|>"
    tokens_a = loaded_a.convert_ids_to_tokens(loaded_a(text)["input_ids"])
    assert tokens_a == loaded_b.convert_ids_to_tokens(loaded_b(text)["input_ids"])


def check(text: str, tmp_path: Path, same_template_text: bool = True) -> None:
    mergekit_merge(text, tmp_path / "mergekit")
    mergeflow_merge(text, tmp_path / "mergeflow")
    assert_same_weights(tmp_path / "mergeflow", tmp_path / "mergekit")
    assert_same_tokenizer(tmp_path / "mergeflow", tmp_path / "mergekit", same_template_text)


ALL = "  - model: {base}\n  - model: {chat}\n  - model: {padded}\n  - model: {extra}\n"
GTA = (
    "base_model: {base}\nmodels:\n  - model: {base}\n"
    "  - model: {chat}\n    parameters: {{weight: 0.5, density: 0.6}}\n"
    "  - model: {padded}\n    parameters: {{weight: 0.3, density: 0.5}}\n"
    "  - model: {extra}\n    parameters: {{weight: [0.2, 0.6], density: 0.7}}\n"
)
TOKENS = (
    "tokenizer:\n  source: union\n  pad_to_multiple_of: 16\n  tokens:\n"
    "    \"\\u2581the\": {{source: {extra}, force: true}}\n"
    "    \"<|im_start|>\": {{source: {{kind: model_token, model: {base}, token: \"<s>\"}}}}\n"
    "    \"<|im_end|>\": {{source: {{kind: model_token, model: {chat}, token_id: 2}}, force: true}}\n"
    "    \"<tool>\": {{source: {{kind: zero}}}}\n"
)
LITERAL = "chat_template: \"{{% for m in messages %}}[{{{{ m['role'] }}}}] {{{{ m['content'] }}}}\\n{{% endfor %}}\"\n"

# The methods of the issue, each in bf16, fp16 and fp32, on all four differing vocabularies;
# name: (config, whether our chat template file has mergekit's text).
METHODS = {
    "linear_union_padded_auto_template": (
        "merge_method: linear\nbase_model: {base}\nmodels:\n"
        "  - model: {base}\n    parameters: {{weight: 0.4}}\n  - model: {chat}\n    parameters: {{weight: 0.3}}\n"
        "  - model: {padded}\n    parameters: {{weight: 0.2}}\n  - model: {extra}\n    parameters: {{weight: 0.1}}\n"
        "tokenizer:\n  source: union\n  pad_to_multiple_of: 16\nchat_template: auto\n",
        True,
    ),
    "slerp_union_builtin_template": (
        "merge_method: slerp\nbase_model: {base}\nmodels:\n  - model: {base}\n  - model: {extra}\n"
        "parameters: {{t: [0.2, 0.7]}}\ntokenizer_source: union\nchat_template: llama3\n",
        False,
    ),
    "ties_union": ("merge_method: ties\n" + GTA + "tokenizer_source: union\n", True),
    "dare_ties_union_padded": ("merge_method: dare_ties\n" + GTA + "tokenizer: {{source: union, pad_to_multiple_of: 32}}\n", True),
    "della_union": ("merge_method: della\n" + GTA.replace("density: 0.5", "density: 0.5, epsilon: 0.1") + "tokenizer_source: union\n", True),
    "model_stock_union_literal_template": ("merge_method: model_stock\nbase_model: {base}\nmodels:\n" + ALL + "tokenizer_source: union\n" + LITERAL, True),
}

# name: (dtype, config, whether our chat template file has mergekit's text)
CASES = {
    "passthrough_union": (  # one input per tensor: the embedding lacks extra's token, the head chat's
        torch.bfloat16,
        "merge_method: passthrough\nbase_model: {chat}\nslices:\n"
        "  - sources:\n      - model: {chat}\n        layer_range: [0, 1]\n"
        "  - sources:\n      - model: {extra}\n        layer_range: [1, 2]\n"
        "tokenizer_source: union\n",
        True,
    ),
    "linear_base_source": (
        torch.float16,
        "merge_method: linear\nbase_model: {padded}\nmodels:\n"
        "  - model: {padded}\n    parameters: {{weight: 0.5}}\n  - model: {chat}\n    parameters: {{weight: 0.3}}\n"
        "  - model: {extra}\n    parameters: {{weight: 0.2}}\ntokenizer_source: base\n",
        True,
    ),
    "linear_base_source_trimmed_to_its_rows": (
        torch.bfloat16,
        "merge_method: linear\nbase_model: {short}\nmodels:\n"
        "  - model: {short}\n    parameters: {{weight: 0.5}}\n  - model: {chat}\n    parameters: {{weight: 0.5}}\n"
        "tokenizer:\n  source: base\n",
        True,
    ),
    "ties_model_source": (
        torch.bfloat16,
        "merge_method: ties\nbase_model: {base}\nmodels:\n  - model: {base}\n"
        "  - model: {chat}\n    parameters: {{weight: 0.6, density: 0.5}}\n  - model: {extra}\n    parameters: {{weight: 0.4, density: 0.5}}\n"
        "tokenizer_source: {chat}\n",
        True,
    ),
    "dare_ties_tokens_block": (torch.float32, "merge_method: dare_ties\n" + GTA + TOKENS, True),
    "linear_tied_union": (  # ChatML rows: the mean of chat's and tied's; tied's missing token: base's row
        torch.bfloat16,
        "merge_method: linear\nbase_model: {base}\nmodels:\n"
        "  - model: {base}\n    parameters: {{weight: 0.4}}\n  - model: {tied}\n    parameters: {{weight: 0.3}}\n"
        "  - model: {chat}\n    parameters: {{weight: 0.2}}\n  - model: {extra}\n    parameters: {{weight: 0.1}}\n"
        "tokenizer_source: union\n",
        True,
    ),
    "linear_union_base_not_merged": (  # the base is not in the slice: tied's missing token is the mean of three
        torch.float16,
        "merge_method: linear\nbase_model: {base}\nslices:\n  - sources:\n"
        "      - model: {tied}\n        layer_range: [0, 2]\n        parameters: {{weight: 0.5}}\n"
        "      - model: {padded}\n        layer_range: [0, 2]\n        parameters: {{weight: 0.2}}\n"
        "      - model: {chat}\n        layer_range: [0, 2]\n        parameters: {{weight: 0.3}}\n"
        "      - model: {extra}\n        layer_range: [0, 2]\n        parameters: {{weight: 0.4}}\n"
        "tokenizer_source: union\n",
        True,
    ),
    "linear_union_ids_in_hash_order": (
        torch.float32,
        "merge_method: linear\nbase_model: {base}\nmodels:\n"
        "  - model: {base}\n    parameters: {{weight: 0.5}}\n  - model: {extra2}\n    parameters: {{weight: 0.3}}\n"
        "  - model: {chat}\n    parameters: {{weight: 0.2}}\ntokenizer:\n  source: union\n  pad_to_multiple_of: 8\n",
        True,
    ),
}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("name", sorted(METHODS))
def test_methods_on_differing_vocabularies(name, dtype, vocab_models, tmp_path):
    template, same_text = METHODS[name]
    check(template.format(**vocab_models(dtype)), tmp_path, same_text)


@pytest.mark.parametrize("name", sorted(CASES))
def test_tokenizer_parity(name, vocab_models, tmp_path):
    dtype, template, same_text = CASES[name]
    check(template.format(**vocab_models(dtype)), tmp_path, same_text)


def test_word_level_tokenizers_with_padded_rows(model_dir, tmp_path):
    """A WordLevel tokenizer whose model has unused padding rows (46 tokens, 64 rows)."""
    small, padded = model_dir("m1"), model_dir("m2", vocab=64)
    text = (
        f"merge_method: ties\nbase_model: {padded}\nmodels:\n  - model: {padded}\n"
        f"  - model: {small}\n    parameters: {{weight: 0.7, density: 0.5}}\ntokenizer: {{source: union, pad_to_multiple_of: 16}}\n"
    )
    check(text, tmp_path)


def test_union_ids_follow_the_documented_order(vocab_models, tmp_path):
    """Base ids first, then ordinary tokens the base lacks, then added tokens, models in config order."""
    models = vocab_models(torch.float32)
    text = (
        f"merge_method: linear\nbase_model: {models['base']}\nmodels:\n"
        + "".join(f"  - model: {models[m]}\n    parameters: {{weight: 1}}\n" for m in ("base", "chat", "extra2"))
        + "tokenizer_source: union\n"
    )
    mergeflow_merge(text, tmp_path / "out")
    vocab, base = _vocab(tmp_path / "out"), _vocab(models["base"])
    extra2 = _vocab(models["extra2"])
    assert all(vocab[t] == i for t, i in base.items())
    new_ordinary = sorted((t for t in extra2 if t not in base), key=extra2.get)
    assert [vocab[t] for t in new_ordinary] == [80, 81]
    assert [vocab["<|im_start|>"], vocab["<|im_end|>"]] == [82, 83]


def test_chat_template_without_tokenizer_merging(model_dir, tmp_path):
    """A chat template alone re-saves the donor's tokenizer with it, as mergekit does."""
    text = (
        f"merge_method: linear\nmodels:\n  - model: {model_dir('m1')}\n    parameters: {{weight: 0.5}}\n"
        f"  - model: {model_dir('m2')}\n    parameters: {{weight: 0.5}}\nchat_template: chatml\n"
    )
    mergekit_merge(text, tmp_path / "mergekit")
    mergeflow_merge(text, tmp_path / "mergeflow")
    ours, theirs = tmp_path / "mergeflow", tmp_path / "mergekit"
    assert sorted(p.name for p in ours.glob("*token*")) == sorted(p.name for p in theirs.glob("*token*"))
    assert (ours / "tokenizer.json").read_text() == (theirs / "tokenizer.json").read_text()
    assert _rendered(ours) == _rendered(theirs)


@pytest.mark.parametrize("name", ["alpaca", "chatml", "exaone", "llama3", "mistral"])
def test_built_in_templates_render_as_mergekits(name):
    """Our own template files render every conversation exactly as mergekit 0.1.5's do."""
    from importlib import resources

    from mergekit._data import chat_templates as theirs
    from transformers.utils.chat_template_utils import render_jinja_template

    from mergeflow.engine.chat_templates import built_in

    conversations = [
        MESSAGES,
        MESSAGES[1:3],
        [{"role": "user", "content": " hi "}, {"role": "user_context", "content": "ctx"}, {"role": "system", "content": "late"}],
        [{"role": "assistant", "content": "first"}],
    ]
    template_b = resources.files(theirs).joinpath(f"{name}.jinja").read_text()
    for conversation in conversations:
        for prompt in (True, False):
            outputs = []
            for template in (built_in(name), template_b):
                try:
                    rendered, _ = render_jinja_template([conversation], chat_template=template, add_generation_prompt=prompt, bos_token="<s>", eos_token="</s>")
                    outputs.append(rendered[0])
                except Exception as err:  # mistral refuses some role orders: both must refuse
                    outputs.append(type(err).__name__)
            assert outputs[0] == outputs[1], (conversation, prompt)


def test_trimming_drops_merges_that_build_a_removed_token():
    """mergekit keeps a merge whose result it removed and then fails to load the trimmed BPE."""
    from vocab_models import BASE_VOCAB, fast_tokenizer, train_bpe

    from mergeflow.engine.tokenizer import _stripped

    tokenizer = fast_tokenizer(train_bpe(BASE_VOCAB + 1))
    trimmed = _stripped(tokenizer, BASE_VOCAB, "bigger")
    assert len(trimmed.get_vocab()) == BASE_VOCAB
    assert trimmed.tokenize("rules") == fast_tokenizer(train_bpe(BASE_VOCAB)).tokenize("rules")

"""Tiny Llama models whose vocabularies differ, with real BPE tokenizers built by ``tokenizers``.

- ``base``: a BPE tokenizer trained on a small corpus; embedding rows = tokenizer size.
- ``chat``: a fine-tune of base with ChatML special tokens ``<|im_start|>``/``<|im_end|>`` added
  (two new embedding rows) and a ChatML chat template.
- ``padded``: base's tokenizer, but the embedding padded to a multiple of 32 (unused rows).
- ``extra``: a BPE with one more merge (a token the others lack), its ids shuffled relative to
  base's, and the embedding rows shuffled to match, so alignment is a real permutation.
- ``tied``: tied embeddings (no lm_head tensor), ChatML tokens, and a BPE with one merge fewer
  than base's, so it lacks a token every other model has.
- ``short``: a tokenizer larger than its embedding (the ChatML tokens, but base's 80 rows), which
  mergekit trims to fit when it is the tokenizer base.
- ``extra2``: like ``extra`` with two more merges, so ``union`` adds two ordinary tokens, whose
  relative order mergekit takes from hash order.

Fine-tunes share base's rows for shared tokens (plus a small delta), so task-vector methods see
realistic deltas after alignment.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "a merge of models keeps the best of both",
    "tokens and embeddings line up row by row",
    "the lazy dog sleeps while the fox runs",
] * 4
SPECIALS = ["<unk>", "<s>", "</s>"]
BASE_VOCAB = 80
CHATML = ["<|im_start|>", "<|im_end|>"]
CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def train_bpe(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False))
    return tok


def _shuffled(tok, seed: int):
    """The same BPE with its non-special ids permuted; returns the tokenizer and old id -> new id."""
    from tokenizers import Tokenizer

    data = json.loads(tok.to_str())
    vocab = data["model"]["vocab"]
    movable = sorted((i for i in vocab.values() if i >= len(SPECIALS)))
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(movable), generator=generator).tolist()
    new_id = {old: movable[order[k]] for k, old in enumerate(movable)}
    new_id.update({i: i for i in range(len(SPECIALS))})
    data["model"]["vocab"] = {t: new_id[i] for t, i in vocab.items()}
    return Tokenizer.from_str(json.dumps(data)), new_id


def fast_tokenizer(tok, extra_specials=(), template=None):
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    if extra_specials:
        fast.add_special_tokens({"additional_special_tokens": list(extra_specials)})
    if template:
        fast.chat_template = template
    return fast


def _save_model(path: Path, seed: int, vocab: int, rows_from_base=None, tied: bool = False, dtype=torch.float32) -> None:
    """A 2-layer Llama; with ``rows_from_base`` (new row -> base row), a fine-tune of ``base``."""
    import transformers as tf

    config = tf.LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=vocab, tie_word_embeddings=tied, bos_token_id=1, eos_token_id=2,
    )
    torch.manual_seed(seed)
    model = tf.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.02)
        if rows_from_base is not None:
            base = rows_from_base[0]
            mapping = rows_from_base[1]
            for name, param in model.named_parameters():
                ref = base[name]
                if param.shape == ref.shape and name not in ("model.embed_tokens.weight", "lm_head.weight"):
                    param.copy_(ref + 0.05 * param)
                elif name in ("model.embed_tokens.weight", "lm_head.weight"):
                    for new, old in mapping.items():
                        param[new] = ref[old] + 0.05 * param[new]
    model.to(dtype).save_pretrained(path)


def build_vocab_models(root: Path, dtype: torch.dtype = torch.float32) -> dict[str, Path]:
    from transformers import AutoModelForCausalLM

    base_tok = train_bpe(BASE_VOCAB)
    assert base_tok.get_vocab_size() == BASE_VOCAB
    paths = {name: root / name for name in ("base", "chat", "padded", "extra", "extra2", "tied", "short")}
    _save_model(paths["base"], 0, BASE_VOCAB, dtype=dtype)
    fast_tokenizer(base_tok).save_pretrained(paths["base"])
    base_state = AutoModelForCausalLM.from_pretrained(paths["base"], dtype=torch.float32).state_dict()
    same = {i: i for i in range(BASE_VOCAB)}

    _save_model(paths["chat"], 1, BASE_VOCAB + len(CHATML), (base_state, same), dtype=dtype)
    fast_tokenizer(base_tok, CHATML, CHATML_TEMPLATE).save_pretrained(paths["chat"])
    smaller = train_bpe(BASE_VOCAB - 1)
    _save_model(paths["tied"], 4, BASE_VOCAB - 1 + len(CHATML), (base_state, {i: i for i in range(BASE_VOCAB - 1)}), tied=True, dtype=dtype)
    fast_tokenizer(smaller, CHATML, CHATML_TEMPLATE).save_pretrained(paths["tied"])

    _save_model(paths["padded"], 2, 96, (base_state, same), dtype=dtype)
    fast_tokenizer(base_tok).save_pretrained(paths["padded"])

    _save_model(paths["short"], 6, BASE_VOCAB, (base_state, same), dtype=dtype)
    fast_tokenizer(base_tok, CHATML).save_pretrained(paths["short"])
    for name, seed, more in (("extra", 3, 1), ("extra2", 5, 2)):
        bigger = train_bpe(BASE_VOCAB + more)
        assert bigger.get_vocab_size() == BASE_VOCAB + more
        shuffled, new_id = _shuffled(bigger, seed=seed)
        bigger_vocab = bigger.get_vocab()
        assert all(bigger_vocab[t] == i for t, i in base_tok.get_vocab().items()), "a larger BPE must extend the smaller one"
        _save_model(paths[name], seed, BASE_VOCAB + more, (base_state, {new_id[i]: i for i in range(BASE_VOCAB)}), dtype=dtype)
        fast_tokenizer(shuffled).save_pretrained(paths[name])
    return paths


def cast_models(paths: dict[str, Path], root: Path, dtype: torch.dtype) -> dict[str, Path]:
    """Copies of ``paths`` with every tensor cast to ``dtype`` (cheaper than building again)."""
    from safetensors.torch import load_file, save_file

    copies = {}
    for name, path in paths.items():
        target = root / name
        shutil.copytree(path, target)
        tensors = {k: v.to(dtype) for k, v in load_file(path / "model.safetensors").items()}
        save_file(tensors, target / "model.safetensors", metadata={"format": "pt"})
        config = json.loads((path / "config.json").read_text())
        config["dtype"] = str(dtype).removeprefix("torch.")
        (target / "config.json").write_text(json.dumps(config, indent=2))
        copies[name] = target
    return copies

"""Build the output tokenizer and each model's token alignment (mergekit-semantics §9.2).

transformers and tokenizers are imported only here, and only when a config asks for a tokenizer.
The tokenizer is built with the same transformers calls mergekit makes (AutoTokenizer, add_tokens,
save_pretrained), so the files written match mergekit's. What mergekit leaves to hash order we fix:

- the tokenizer base without ``base_model`` is the first model in config order;
- ``union`` gives new ids in this order: first the ordinary tokens the base lacks, then the added
  (special) tokens; each walks the models base first, then in config order, and a model's tokens
  in the order of their ids.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mergeflow.engine.config import ModelRef, TokenizerSettings
from mergeflow.engine.errors import MergeflowError

log = logging.getLogger("mergeflow")


@dataclass
class VocabularyAlignment:
    """The output vocabulary and, per merged model, where each output token sits in that model.

    ``permutations[model][new_id]`` is the model's own row for the token, or -1 if it lacks it.
    """

    vocab: dict[str, int]
    padded_size: int
    permutations: dict[ModelRef, list[int]]
    original_vocabs: dict[ModelRef, dict[str, int]]
    settings: TokenizerSettings


@dataclass
class BuiltTokenizer:
    tokenizer: Any  # a transformers fast tokenizer
    alignment: VocabularyAlignment


def _transformers():
    try:
        import transformers
    except ImportError:
        raise MergeflowError("tokenizer merging and chat templates need transformers: pip install 'mergeflow[tokenizer]'") from None
    return transformers


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


def load_tokenizer(path: Path, label: str, **kwargs):
    if not any((Path(path) / name).is_file() for name in TOKENIZER_FILES):
        raise MergeflowError(f"model {label}: no tokenizer in {path} (none of {', '.join(TOKENIZER_FILES)})")
    try:
        return _transformers().AutoTokenizer.from_pretrained(str(path), **kwargs)
    except MergeflowError:
        raise
    except Exception as err:  # transformers raises many types for a missing or broken tokenizer
        first = str(err).splitlines()[0] if str(err) else ""
        raise MergeflowError(f"model {label}: cannot load its tokenizer from {path} ({type(err).__name__}: {first})") from None


def vocab_size_of(config: dict) -> int | None:
    """The embedding rows a model's config declares (``vocab_size``, or its text model's)."""
    size = config.get("vocab_size")
    if not isinstance(size, int):
        size = (config.get("text_config") or {}).get("vocab_size")
    return size if isinstance(size, int) else None


def _stripped(tokenizer, vocab_size: int | None, label: str):
    """The tokenizer without tokens whose id has no embedding row (id >= vocab_size)."""
    vocab_size = vocab_size or len(tokenizer.get_vocab())
    unused = {tok for tok, idx in tokenizer.get_vocab().items() if idx >= vocab_size}
    if not unused:
        return tokenizer
    from tokenizers import Tokenizer

    data = json.loads(tokenizer.backend_tokenizer.to_str()) if tokenizer.is_fast else None
    if data is None or data["model"]["type"] != "BPE":
        kind = data["model"]["type"] if data else "slow"
        raise MergeflowError(
            f"model {label}: its tokenizer has {len(unused)} token(s) beyond vocab_size {vocab_size}, and only "
            f"BPE fast tokenizers can be trimmed to fit (this one is {kind})"
        )

    def keeps(merge) -> bool:
        # mergekit checks only a merge's parts, and then fails to load a BPE whose merge result
        # was removed; dropping those merges too keeps the trimmed tokenizer loadable.
        parts = merge.split(" ") if isinstance(merge, str) else merge
        return not any(part in unused for part in [*parts, "".join(parts)])

    data["added_tokens"] = [entry for entry in data["added_tokens"] if entry["id"] < vocab_size]
    data["model"]["vocab"] = {tok: idx for tok, idx in data["model"]["vocab"].items() if tok not in unused}
    data["model"]["merges"] = [m for m in data["model"]["merges"] if keeps(m)]
    tokenizer._tokenizer = Tokenizer.from_str(json.dumps(data))
    return tokenizer


def _union(base_tok, others: list[tuple[Any, int | None]]):
    """Base's vocabulary plus every token another model has (see the module docstring for order)."""
    ordinary: dict[str, None] = {}
    added: dict[str, Any] = {}
    for tokenizer, vocab_size in [(base_tok, None), *others]:
        size = vocab_size or len(tokenizer.get_vocab())
        for tok, idx in sorted(tokenizer.get_vocab().items(), key=lambda item: item[1]):
            if idx < size:
                ordinary.setdefault(tok)
        for idx, info in sorted(tokenizer.added_tokens_decoder.items()):
            if idx >= size:
                continue
            if info.content in added and added[info.content] != info:
                log.warning("token %r is added with different settings by two models; using the first", info.content)
            added.setdefault(info.content, info)
    with tempfile.TemporaryDirectory() as scratch:  # a fresh copy, so the base tokenizer stays as loaded
        base_tok.save_pretrained(scratch, legacy_format=False)
        result = _transformers().AutoTokenizer.from_pretrained(scratch, use_fast=True)
    base_vocab = base_tok.get_vocab()
    for tok in ordinary:  # an added token in any model is added below, with its settings
        if tok not in added and tok not in base_vocab:
            result.add_tokens(tok)
    for info in added.values():
        result.add_tokens(info)
    return result


def build_tokenizer(
    settings: TokenizerSettings,
    base: ModelRef,
    models: list[ModelRef],
    paths: dict[ModelRef, Path],
    configs: dict[ModelRef, dict],
) -> BuiltTokenizer:
    """The output tokenizer for ``settings`` and the alignment of every model in ``models``.

    ``paths`` also holds models the tokenizer block names outside the merge (a source model).
    """
    base_tok = _stripped(load_tokenizer(paths[base], str(base), use_fast=True), vocab_size_of(configs[base]), str(base))
    tokenizers = {base: base_tok}
    for model in models:
        if model == base:
            continue
        try:
            tokenizers[model] = load_tokenizer(paths[model], str(model))
        except MergeflowError as err:
            log.warning("%s; assuming it uses the vocabulary of %s", err, base)

    if isinstance(settings.source, ModelRef):
        out = load_tokenizer(paths[settings.source], str(settings.source))
    elif settings.source == "base":
        out = base_tok
    else:
        others = [(tokenizers[m], vocab_size_of(configs[m])) for m in models if m != base and m in tokenizers]
        out = _union(base_tok, others)
    existing = set(out.get_vocab())
    for token in settings.tokens:
        if token not in existing:
            out.add_tokens(token)
            existing.add(token)

    vocab = out.get_vocab()
    permutations = {}
    for model in models:
        own = tokenizers.get(model, base_tok).get_vocab()
        size = vocab_size_of(configs[model]) or len(own)
        rows = [-1] * len(vocab)
        for token, new_id in vocab.items():
            old_id = own.get(token, -1)
            if old_id >= size:
                log.warning("model %s: token %r has id %d, beyond its %d embedding rows; treated as missing", model, token, old_id, size)
                old_id = -1
            rows[new_id] = old_id
        permutations[model] = rows
    k = settings.pad_to_multiple_of
    padded = len(vocab) if not k or len(vocab) % k == 0 else (len(vocab) // k + 1) * k
    alignment = VocabularyAlignment(
        vocab=vocab,
        padded_size=padded,
        permutations=permutations,
        original_vocabs={model: tok.get_vocab() for model, tok in tokenizers.items()},
        settings=settings,
    )
    return BuiltTokenizer(out, alignment)


def chat_templates_of(paths: list[tuple[ModelRef, Path]]):
    """Each model's own chat template, for ``chat_template: auto`` (unloadable tokenizers skipped)."""
    for model, path in paths:
        try:
            yield load_tokenizer(path, str(model)).chat_template
        except MergeflowError as err:
            log.warning("chat_template: auto: %s", err)


def save_tokenizer(tokenizer, template: str | None, out: Path) -> None:
    if template is not None:
        tokenizer.chat_template = template
    tokenizer.save_pretrained(str(out))

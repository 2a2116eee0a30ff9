"""Align each model's vocabulary-axis tensors to the output tokenizer before the merge (§9.3).

Planning (:func:`plan_remap`) decides, per output tensor, which row of which input fills each
output token: the input's own row, or a shared default (one model's row, an average, zeros).
Execution (:func:`remap_vocabulary`) is a pure tensor function that follows that plan with the
same torch operations mergekit 0.1.5 uses, so the aligned tensors are bit-identical to its.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from mergeflow.engine.config import ModelRef, TokenSettings
from mergeflow.engine.errors import ConfigError, PreflightError
from mergeflow.engine.tokenizer import VocabularyAlignment

log = logging.getLogger("mergeflow")

OWN_DEFAULT = -1  # the row takes the token's default embedding


@dataclass(frozen=True)
class DefaultRow:
    """A token's shared embedding: the mean of ``rows`` (several), one row (one), or zeros (none).

    Each entry is (input index, row in that input).
    """

    rows: tuple[tuple[int, int], ...]
    average: bool


@dataclass(frozen=True)
class VocabularyRemap:
    """Per input, the source row of each output token (>= 0), or OWN_DEFAULT.

    Every token that some input lacks, or that is forced, has a default, so no row is left empty.
    """

    rows: tuple[torch.Tensor, ...]
    defaults: dict[int, DefaultRow]
    size: int  # tokens in the output vocabulary
    padded_size: int  # rows written; rows past ``size`` get the mean of the token rows


def plan_remap(
    alignment: VocabularyAlignment,
    models: list[ModelRef],
    base: ModelRef | None,
    row_counts: list[int],
    tensor_name: str,
) -> VocabularyRemap:
    """The remap for one output tensor whose inputs come from ``models`` (in input order)."""
    vocab = alignment.vocab
    present = torch.tensor([alignment.permutations[m] for m in models], dtype=torch.long).reshape(len(models), len(vocab))
    for model, ids, rows in zip(models, present, row_counts):
        if ids.max().item() >= rows:
            raise PreflightError(
                f"tensor {tensor_name}: model {model}'s tokenizer has id {ids.max().item()}, beyond its {rows} rows; "
                "its config.json vocab_size does not match the tensor"
            )
    configured = alignment.settings.tokens
    defaults: dict[int, DefaultRow] = {}
    missing = (present < 0).any(0).tolist()
    for token, token_id in vocab.items():
        settings = configured.get(token)
        forced = settings is not None and settings.force
        if not (forced or missing[token_id]):
            continue
        has = [i for i in range(len(models)) if present[i, token_id] >= 0]
        if settings is not None and settings.source is not None:
            defaults[token_id] = _configured_default(alignment, settings, token, token_id, models, row_counts, present, tensor_name)
        elif len(has) == 1:
            defaults[token_id] = DefaultRow(((has[0], int(present[has[0], token_id])),), average=False)
        elif not has:
            log.warning("token %r is in no model; its %s row is zeros", token, tensor_name)
            defaults[token_id] = DefaultRow((), average=False)
        elif base in models and present[models.index(base), token_id] >= 0:
            b = models.index(base)
            defaults[token_id] = DefaultRow(((b, int(present[b, token_id])),), average=False)
        else:
            defaults[token_id] = DefaultRow(tuple((i, int(present[i, token_id])) for i in has), average=True)
    rows = []
    forced_ids = [vocab[t] for t, s in configured.items() if s.force and t in vocab]
    for i in range(len(models)):
        own = present[i].clone()
        own[forced_ids] = -1
        rows.append(torch.where(own >= 0, own, OWN_DEFAULT))
    return VocabularyRemap(tuple(rows), defaults, len(vocab), alignment.padded_size)


def _configured_default(
    alignment: VocabularyAlignment,
    settings: TokenSettings,
    token: str,
    token_id: int,
    models: list[ModelRef],
    row_counts: list[int],
    present: torch.Tensor,
    tensor_name: str,
) -> DefaultRow:
    source = settings.source
    key = f"tokenizer.tokens.{token}.source"
    if source.kind == "zero":
        return DefaultRow((), average=False)
    if source.model not in models:
        raise ConfigError(key, f"model {source.model} is not merged into {tensor_name}, so it has no row to give")
    i = models.index(source.model)
    if source.kind == "model_token":
        row = source.token_id
        if row is None:
            original = alignment.original_vocabs.get(source.model, {})
            if source.token not in original:
                raise ConfigError(f"{key}.token", f"token {source.token!r} is not in the tokenizer of {source.model}")
            row = original[source.token]
        if row >= row_counts[i]:
            raise ConfigError(key, f"token id {row} is out of range for {source.model} ({row_counts[i]} rows in {tensor_name})")
        return DefaultRow(((i, row),), average=False)
    row = int(present[i, token_id])
    if row < 0:
        raise ConfigError(key, f"token {token!r} is not in the tokenizer of {source.model}")
    return DefaultRow(((i, row),), average=False)


def remap_vocabulary(tensors: list[torch.Tensor], remap: VocabularyRemap) -> list[torch.Tensor]:
    """Each input re-indexed to the output vocabulary (rows along axis 0), in the promoted dtype."""
    dtype = tensors[0].dtype
    for tensor in tensors[1:]:
        dtype = torch.promote_types(dtype, tensor.dtype)
    token_shape = tensors[0].shape[1:]
    device = tensors[0].device
    defaults = {}
    for token_id, default in remap.defaults.items():
        if default.average:
            # mergekit's order of operations: zeros, plus each row in input order, divided by the count
            embed = torch.zeros(token_shape, dtype=dtype, device=device)
            for i, row in default.rows:
                embed = embed + tensors[i][row]
            embed /= len(default.rows)
        elif default.rows:
            i, row = default.rows[0]
            embed = tensors[i][row]
        else:
            embed = torch.zeros(token_shape, dtype=dtype, device=device)
        defaults[token_id] = embed
    result = []
    for tensor, rows in zip(tensors, remap.rows):
        aligned = torch.zeros((remap.padded_size, *token_shape), dtype=dtype, device=device)
        own = (rows >= 0).nonzero().squeeze(1)
        aligned[own] = tensor[rows[own]].to(dtype)
        for token_id in (rows == OWN_DEFAULT).nonzero().squeeze(1).tolist():
            aligned[token_id] = defaults[token_id]
        if remap.padded_size > remap.size:
            aligned[remap.size:] = torch.mean(aligned[: remap.size], dim=0)
        result.append(aligned)
    return result

"""Router ("gate") vectors: one ``[E, H]`` matrix per layer, from prompts or random draws (§12.3).

``hidden`` modes run the base model's forward pass with transformers, in bf16 on ``device``, as
mergekit-moe does; it is the only step that holds a whole model in memory. ``cheap_embed`` reads
just the embedding matrix. The random modes draw from torch's global generator, seeded by the
caller, before any expert tensor is noised.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from mergeflow.engine.checkpoint import Checkpoint
from mergeflow.engine.errors import MergeflowError
from mergeflow.moe.config import Expert

log = logging.getLogger("mergeflow")

EMBEDDING_NAME = "model.embed_tokens.weight"


def load_tokenizer(base: Path):
    """The base tokenizer, left-padded with the BOS token (EOS without one), as the output saves it."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(base)
    except Exception as err:  # transformers raises many types for a missing or broken tokenizer
        raise MergeflowError(f"base_model {base}: cannot load its tokenizer ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None
    tokenizer.padding_side = "left"
    tokenizer.pad_token_id = tokenizer.bos_token_id
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def gate_vectors(
    mode: str,
    experts: list[Expert],
    base: Checkpoint,
    tokenizer,
    num_layers: int,
    hidden_size: int,
    device: str,
) -> torch.Tensor:
    """``[L, E, H]``: row ``e`` of layer ``l`` is expert ``e``'s router vector at layer ``l``."""
    count = len(experts)
    if mode == "random":
        return torch.randn(num_layers, count, hidden_size)
    if mode == "uniform_random":
        bound = 1 / hidden_size**0.5
        return torch.rand(num_layers, count, hidden_size) * 2 * bound - bound
    if mode == "cheap_embed":
        embed = base.load(_embedding_name(base)).float()

        def prompts_vector(prompts: tuple[str, ...]) -> torch.Tensor:
            return _cheap_embed(prompts, tokenizer, embed).unsqueeze(0).repeat(num_layers, 1)
    else:
        model = _load_hidden_model(base.path, device)

        def prompts_vector(prompts: tuple[str, ...]) -> torch.Tensor:
            return _hidden(prompts, tokenizer, model, average=mode == "hidden_avg")

    vectors = []
    for expert in experts:
        vector = prompts_vector(expert.positive_prompts)
        if expert.negative_prompts:
            vector = vector - prompts_vector(expert.negative_prompts)
        vectors.append(vector / vector.norm(p=2, dim=-1, keepdim=True).clamp(min=1e-8))
    return torch.stack(vectors, dim=0).permute(1, 0, 2)


def _embedding_name(base: Checkpoint) -> str:
    if EMBEDDING_NAME not in base.headers:
        raise MergeflowError(f"base_model {base.label}: no {EMBEDDING_NAME} for gate_mode cheap_embed")
    return EMBEDDING_NAME


def _tokenize(prompts: tuple[str, ...], tokenizer) -> dict[str, torch.Tensor]:
    bos = tokenizer.bos_token or ""
    return tokenizer([bos + p for p in prompts], return_tensors="pt", padding=True, add_special_tokens=False)


def _cheap_embed(prompts: tuple[str, ...], tokenizer, embed: torch.Tensor) -> torch.Tensor:
    batch = _tokenize(prompts, tokenizer)
    one_hot = torch.nn.functional.one_hot(batch["input_ids"], num_classes=embed.shape[0]).float()
    embedded = (one_hot @ embed) * batch["attention_mask"].unsqueeze(-1)
    summed = embedded.sum(dim=1).sum(dim=0)  # sequence, then batch: fp32 rounding follows this order
    return summed / summed.norm(p=2, dim=-1, keepdim=True).clamp(min=1e-8)


def _load_hidden_model(path: Path, device: str):
    from transformers import AutoModelForCausalLM

    log.info("loading %s in bfloat16 on %s for the hidden-state router vectors", path, device)
    try:
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, device_map=device)
    except Exception as err:  # transformers raises many types; the user needs one line
        raise MergeflowError(f"base_model {path}: cannot load it with transformers for hidden-state gates ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None


@torch.inference_mode()
def _hidden(prompts: tuple[str, ...], tokenizer, model, average: bool) -> torch.Tensor:
    """The input of every layer at the last token (or averaged over positions, padding included)."""
    batch = _tokenize(prompts, tokenizer).to(model.device)
    states = model(**batch, output_hidden_states=True).hidden_states[:-1]
    stacked = torch.stack(states, dim=0)  # [L, B, T, H]
    # Averages are sums divided by counts (positions for hidden_avg, then prompts), not mean(),
    # which rounds differently in bf16.
    per_prompt = stacked.sum(dim=2) / stacked.shape[2] if average else stacked[:, :, -1, :]
    return (per_prompt.sum(dim=1) / per_prompt.shape[1]).cpu()

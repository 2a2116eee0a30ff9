"""Tiny Hugging Face models built locally for tests: real transformers configs and a real tokenizer."""

from __future__ import annotations

from pathlib import Path

import torch

VOCAB = list("0123456789abcdefghijklmnopqrstuvwxyz+=:<> ")
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]


def save_tokenizer(path: Path) -> None:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS + VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(""), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    fast.save_pretrained(path)


def _config(arch: str, layers: int, vocab: int, tied: bool):
    import transformers as tf

    hidden, heads = 32, 4
    common = dict(vocab_size=vocab, tie_word_embeddings=tied)
    llama_like = dict(
        hidden_size=hidden, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=2, **common,
    )
    if arch == "llama":
        return tf.LlamaConfig(**llama_like)
    if arch == "mistral":
        return tf.MistralConfig(head_dim=hidden // heads, sliding_window=None, **llama_like)
    if arch == "qwen2":
        return tf.Qwen2Config(**llama_like)
    if arch == "qwen3":
        return tf.Qwen3Config(head_dim=hidden // heads, **llama_like)
    if arch == "gemma":
        return tf.GemmaConfig(head_dim=hidden // heads, **llama_like)
    if arch == "phi3":
        return tf.Phi3Config(**llama_like, pad_token_id=0)
    if arch == "mixtral":
        return tf.MixtralConfig(head_dim=hidden // heads, sliding_window=None, num_local_experts=4, num_experts_per_tok=2, **llama_like)
    if arch == "qwen3_moe":
        return tf.Qwen3MoeConfig(head_dim=hidden // heads, moe_intermediate_size=16, num_experts=4, num_experts_per_tok=2, **llama_like)
    if arch == "glm4_moe":
        return tf.Glm4MoeConfig(
            head_dim=hidden // heads, moe_intermediate_size=16, n_routed_experts=4, num_experts_per_tok=2,
            n_shared_experts=1, first_k_dense_replace=1, n_group=1, topk_group=1, **llama_like,
        )
    if arch == "gpt2":
        return tf.GPT2Config(n_embd=hidden, n_layer=layers, n_head=heads, n_positions=64, **common)
    if arch == "gpt_neox":
        return tf.GPTNeoXConfig(
            hidden_size=hidden, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=heads, **common
        )
    raise ValueError(arch)


def make_model(
    path: Path,
    seed: int,
    *,
    arch: str = "llama",
    layers: int = 4,
    dtype: torch.dtype = torch.float32,
    tied: bool = False,
    vocab: int | None = None,
    shard_size: str | None = None,
    base: Path | None = None,
    delta_scale: float = 0.05,
) -> Path:
    """Save a random model; with ``base``, a fine-tune-like copy: base weights plus a small delta."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = _config(arch, layers, vocab or len(SPECIALS) + len(VOCAB), tied)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.02)
        if base is not None:
            reference = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).state_dict()
            for name, param in model.named_parameters():
                param.copy_(reference[name] + delta_scale * param)
    model = model.to(dtype)
    kwargs = {"max_shard_size": shard_size} if shard_size else {}
    model.save_pretrained(path, **kwargs)
    save_tokenizer(path)
    return path


def make_lora_adapter(path: Path, base: Path, seed: int, *, dtype: torch.dtype = torch.float32, **lora_config) -> Path:
    """Save a PEFT LoRA adapter for ``base`` with random (nonzero) factors, stored in ``dtype``."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(**lora_config))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.normal_(0.0, 0.05)  # small factors, as trained adapters have
    peft_model.to(dtype).save_pretrained(path)
    return path

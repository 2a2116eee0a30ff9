"""The four output architectures of mergekit-moe: which configs each supports, and its layout (§12.2, §12.4).

Candidates are tried in the order Mixtral, DeepSeek MoE, Qwen MoE, Qwen3 MoE; Mixtral wins whenever
it supports the config, otherwise the first supported one does. ``architecture:`` narrows the
candidates to names it is a case-insensitive prefix of.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

from mergeflow.engine.errors import ConfigError
from mergeflow.moe.config import RANDOM_GATE_MODES, MoEConfig

log = logging.getLogger("mergeflow")

LLAMA_LIKE = ("llama", "mistral")
DEEPSEEK_AUTO_MAP = {
    "AutoConfig": "deepseek-ai/deepseek-moe-16b-base--configuration_deepseek.DeepseekConfig",
    "AutoModel": "deepseek-ai/deepseek-moe-16b-base--modeling_deepseek.DeepseekModel",
    "AutoModelForCausalLM": "deepseek-ai/deepseek-moe-16b-base--modeling_deepseek.DeepseekForCausalLM",
}


@dataclass(frozen=True)
class OutputArchitecture:
    name: str
    # Why this architecture cannot hold the config (None when it can), from the inputs' model_types.
    unsupported: Callable[[MoEConfig, list[str]], str | None]
    fused_experts: bool  # experts stacked into gate_up_proj [E, 2I, H] and down_proj [E, H, I]
    # The order mergekit-moe reads (and noises) a fused layer's expert weights in.
    fused_order: tuple[str, ...] = ("mlp.gate_proj.weight", "mlp.down_proj.weight", "mlp.up_proj.weight")
    shared_prefix: str | None = None  # where a shared expert's MLP goes, e.g. "mlp.shared_experts"
    shared_gate: bool = False  # a per-layer mlp.shared_expert_gate.weight [1, H]
    zero_qkv_bias: bool = False  # q/k/v biases the base lacks are written as zeros
    sorted_layer_weights: bool = False  # base weights of a layer in name order, not the family's order


def _mixtral(config: MoEConfig, types: list[str]) -> str | None:
    if any(t not in LLAMA_LIKE for t in types):
        return "needs llama or mistral models"
    if config.shared_experts:
        return "has no shared experts"
    return None


def _deepseek(config: MoEConfig, types: list[str]) -> str | None:
    if any(t not in LLAMA_LIKE for t in types):
        return "needs llama or mistral models"
    if len(config.shared_experts) > 1:
        return "takes at most one shared expert"
    if config.shared_experts and config.shared_experts[0].positive_prompts:
        return "takes a shared expert without prompts"
    return None


def _qwen(config: MoEConfig, types: list[str]) -> str | None:
    if any(t not in (*LLAMA_LIKE, "qwen2") for t in types):
        return "needs llama, mistral or qwen2 models"
    if len(config.shared_experts) != 1:
        return "needs exactly one shared expert"
    if not config.shared_experts[0].positive_prompts and config.gate_mode not in RANDOM_GATE_MODES:
        return "needs prompts for the shared expert (unless the gate is random)"
    return None


def _qwen3(config: MoEConfig, types: list[str]) -> str | None:
    if any(t != "qwen3" for t in types):
        return "needs qwen3 models"
    if config.shared_experts:
        return "has no shared experts"
    return None


ARCHITECTURES = (
    OutputArchitecture("Mixtral", _mixtral, fused_experts=True),
    OutputArchitecture("DeepSeek MoE", _deepseek, fused_experts=False, shared_prefix="mlp.shared_experts"),
    OutputArchitecture(
        "Qwen MoE", _qwen, fused_experts=False, shared_prefix="mlp.shared_expert", shared_gate=True,
        zero_qkv_bias=True, sorted_layer_weights=True,
    ),
    OutputArchitecture(
        "Qwen3 MoE", _qwen3, fused_experts=True,
        fused_order=("mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight"),
    ),
)


def choose_architecture(config: MoEConfig, model_types: list[str]) -> OutputArchitecture:
    candidates = list(ARCHITECTURES)
    names = ", ".join(a.name for a in ARCHITECTURES)
    if config.architecture:
        candidates = [a for a in candidates if a.name.lower().startswith(config.architecture.lower())]
        if not candidates:
            raise ConfigError("architecture", f"no output architecture starts with {config.architecture!r}; use one of {names}")
    if len(set(model_types)) > 1:  # as in mergekit-moe: a mistral base with llama experts fits none
        types = ", ".join(dict.fromkeys(model_types))
        raise ConfigError("experts", f"the base and experts are of different model types ({types}); every output architecture takes one type")
    reasons = {a.name: a.unsupported(config, model_types) for a in candidates}
    supported = [a for a in candidates if reasons[a.name] is None]
    if not supported:
        why = "; ".join(f"{name} {reason}" for name, reason in reasons.items())
        key = "architecture" if config.architecture else "experts"
        raise ConfigError(key, f"no output architecture fits these models ({', '.join(dict.fromkeys(model_types))}): {why}")
    chosen = next((a for a in supported if a.name == "Mixtral"), supported[0])
    if len(supported) > 1 and chosen.name != "Mixtral":
        log.warning("several output architectures fit; using %s (set architecture: to choose)", chosen.name)
    return chosen


def output_config(arch: OutputArchitecture, base: dict, base_path, config: MoEConfig, intermediate: int, dtype_name: str | None):
    """The output ``config.json`` as a transformers config object (DeepSeek: a plain dict, remote code)."""
    import transformers

    experts, per_token = len(config.experts), config.experts_per_token
    fields = {k: v for k, v in base.items() if k not in ("architectures", "model_type", "transformers_version")}
    if arch.name == "DeepSeek MoE":
        return _deepseek_config(base_path, config, intermediate, dtype_name)
    if arch.name == "Mixtral":
        out = transformers.MixtralConfig(**fields)
        out.architectures = ["MixtralForCausalLM"]
        out.num_local_experts = experts
        out.sliding_window = None
        if experts & (experts - 1):
            log.warning("%d experts is not a power of two; llama.cpp cannot run this model", experts)
    elif arch.name == "Qwen3 MoE":
        out = transformers.Qwen3MoeConfig(**fields)
        out.architectures = ["Qwen3MoeForCausalLM"]
        out.num_experts = experts
        out.decoder_sparse_step = 1
        out.norm_topk_prob = True
        out.moe_intermediate_size = intermediate
    else:
        out = transformers.Qwen2MoeConfig(**fields)
        out.architectures = ["Qwen2MoeForCausalLM"]
        out.num_experts = experts
        out.moe_intermediate_size = intermediate
        out.shared_expert_intermediate_size = intermediate
        out.decoder_sparse_step = 1
        out.norm_topk_prob = True
        out.qkv_bias = True
        out.sliding_window = None
    out.num_experts_per_tok = per_token
    if dtype_name is not None:
        out.dtype = dtype_name
    return out


def _deepseek_config(base_path, config: MoEConfig, intermediate: int, dtype_name: str | None) -> dict:
    """mergekit writes the base config's full ``to_dict()`` plus DeepSeek's keys, as raw JSON."""
    import transformers

    out = transformers.AutoConfig.from_pretrained(base_path).to_dict()
    out["_name_or_path"] = config.base_model.path  # the name as the config gives it, as mergekit-moe records
    out["architectures"] = ["DeepseekForCausalLM"]
    out["model_type"] = "deepseek"
    out.update(
        n_routed_experts=len(config.experts),
        n_shared_experts=len(config.shared_experts) or None,
        num_experts_per_tok=config.experts_per_token,
        first_k_dense_replace=0,
        moe_layer_freq=1,
        scoring_func="softmax",
        norm_topk_prob=True,
        moe_intermediate_size=intermediate,
        auto_map=DEEPSEEK_AUTO_MAP,
    )
    if dtype_name is not None:
        out["torch_dtype"] = dtype_name
    return out

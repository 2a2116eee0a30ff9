"""Planning a MoE build: every output tensor, its dtype and shape, and which input tensors make it.

Reads only config.json files and safetensors headers, so a missing expert tensor or a shape
mismatch fails before any weight is loaded. The order of the plan is the save order and the order
in which ``noise_scale`` draws its random numbers, both as in mergekit-moe:
- Mixtral and Qwen3 MoE: every base weight outside the MLP, then per layer the fused
  ``gate_up_proj`` and ``down_proj``, then the routers;
- DeepSeek MoE and Qwen MoE: the base weights with each MLP weight replaced, in place, by that
  weight of every expert (then the shared expert), then the routers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mergeflow.engine.architecture import infer_architecture
from mergeflow.engine.checkpoint import Checkpoint
from mergeflow.engine.config import ModelRef
from mergeflow.engine.errors import PreflightError
from mergeflow.engine.writer import TensorSlot
from mergeflow.moe.architectures import OutputArchitecture
from mergeflow.moe.config import Expert, MoEConfig

MLP_WEIGHTS = ("mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight")
QKV_BIASES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
# The order mergekit's architecture definitions list a layer's weights in (it decides shard
# boundaries and the noise draws); weights not listed follow in name order.
LAYER_ORDER = {
    "qwen3": (
        "input_layernorm.weight", "post_attention_layernorm.weight", "self_attn.k_norm.weight",
        "self_attn.k_proj.weight", "self_attn.q_norm.weight", "self_attn.q_proj.weight",
        "self_attn.v_proj.weight", "self_attn.o_proj.weight", "mlp.up_proj.weight", "mlp.gate_proj.weight",
        "mlp.down_proj.weight",
    ),
    "default": (
        "input_layernorm.weight", "self_attn.q_proj.weight", "self_attn.q_proj.bias", "self_attn.k_proj.weight",
        "self_attn.k_proj.bias", "self_attn.v_proj.weight", "self_attn.v_proj.bias", "self_attn.o_proj.weight",
        "post_attention_layernorm.weight", "mlp.up_proj.weight", "mlp.gate_proj.weight", "mlp.down_proj.weight",
    ),
}


@dataclass(frozen=True)
class Part:
    """One input tensor, with the expert whose noise and residual scale apply to it (None: base copy)."""

    model: ModelRef
    name: str
    expert: Expert | None = None

    @property
    def residual(self) -> bool:
        return "down_proj" in self.name


@dataclass(frozen=True)
class OutputTensor:
    """``kind``: copy (one part), zeros, gate_up / down (a layer's parts per expert in the
    architecture's fused_order, stacked), router (rows of a layer's gate vectors)."""

    name: str
    kind: str
    shape: tuple[int, ...]
    parts: tuple[Part, ...] = ()
    layer: int | None = None
    rows: tuple[int, int] | None = None  # router rows [start, stop) of the gate vectors


@dataclass
class MoEPlan:
    tensors: list[OutputTensor]
    out_dtype: torch.dtype
    num_layers: int
    hidden_size: int
    intermediate_size: int

    @property
    def slots(self) -> list[TensorSlot]:
        return [TensorSlot(t.name, self.out_dtype, t.shape) for t in self.tensors]


def build_moe_plan(
    config: MoEConfig, arch: OutputArchitecture, checkpoints: dict[ModelRef, Checkpoint], out_dtype: torch.dtype
) -> MoEPlan:
    base = checkpoints[config.base_model]
    structure = infer_architecture(list(base.headers), base.config)
    if structure.layer_prefix is None:
        raise PreflightError(f"base_model {base.label}: no layer stack found in its tensor names")
    layers = structure.num_layers
    suffixes = _ordered_suffixes(structure.layer_suffixes, base.config.get("model_type"), arch.sorted_layer_weights)
    missing = [w for w in MLP_WEIGHTS if w not in suffixes]
    if missing:
        raise PreflightError(f"base_model {base.label}: no {structure.layer_tensor(0, missing[0])} (mergekit-moe needs gate/up/down MLP projections)")
    hidden = base.headers[structure.layer_tensor(0, "mlp.down_proj.weight")][1][0]
    intermediate = base.headers[structure.layer_tensor(0, "mlp.down_proj.weight")][1][1]
    experts = config.experts
    shared = config.shared_experts[0] if config.shared_experts else None
    for expert in experts + config.shared_experts:
        _check_expert(expert, checkpoints, base, structure, layers)

    def copy(name: str) -> OutputTensor:
        return OutputTensor(name, "copy", base.headers[name][1], (Part(config.base_model, name),))

    tensors = [copy(n) for n in structure.pre_weights]
    for layer in range(layers):
        present = [s for s in suffixes if structure.layer_tensor(layer, s) in base.headers]
        for suffix in _with_zero_biases(present, arch):
            name = structure.layer_tensor(layer, suffix)
            if name not in base.headers:
                weight = base.headers[name.removesuffix(".bias") + ".weight"][1]
                tensors.append(OutputTensor(name, "zeros", (weight[0],)))
            elif ".mlp." not in f".{suffix}":
                tensors.append(copy(name))
            elif not arch.fused_experts:
                for index, expert in enumerate(experts):
                    per_expert = name.replace(".mlp.", f".mlp.experts.{index}.")
                    tensors.append(OutputTensor(per_expert, "copy", base.headers[name][1], (Part(expert.source_model, name, expert),)))
                if shared is not None:
                    shared_name = name.replace(".mlp.", f".{arch.shared_prefix}.")
                    tensors.append(OutputTensor(shared_name, "copy", base.headers[name][1], (Part(shared.source_model, name, shared),)))
    tensors += [copy(n) for n in _post_order(structure.post_weights)]
    if arch.fused_experts:
        for layer in range(layers):
            # Both fused tensors of a layer read the same parts, per expert in the architecture's
            # fused_order (the order mergekit-moe noises them in); the executor reads them once.
            parts = tuple(Part(e.source_model, structure.layer_tensor(layer, w), e) for e in experts for w in arch.fused_order)
            prefix = structure.layer_tensor(layer, "mlp.experts")
            tensors.append(OutputTensor(f"{prefix}.gate_up_proj", "gate_up", (len(experts), 2 * intermediate, hidden), parts))
            tensors.append(OutputTensor(f"{prefix}.down_proj", "down", (len(experts), hidden, intermediate), parts))
    routed = len(experts)
    for layer in range(layers):
        tensors.append(OutputTensor(structure.layer_tensor(layer, "mlp.gate.weight"), "router", (routed, hidden), layer=layer, rows=(0, routed)))
        if arch.shared_gate:
            shared_rows = (routed, routed + 1)
            tensors.append(OutputTensor(structure.layer_tensor(layer, "mlp.shared_expert_gate.weight"), "router", (1, hidden), layer=layer, rows=shared_rows))
    return MoEPlan(tensors, out_dtype, layers, hidden, intermediate)


def _ordered_suffixes(suffixes: tuple[str, ...], model_type: str | None, by_name: bool) -> list[str]:
    if by_name:
        return sorted(suffixes)
    order = LAYER_ORDER.get(model_type or "", LAYER_ORDER["default"])
    return sorted(suffixes, key=lambda s: (order.index(s), "") if s in order else (len(order), s))


def _with_zero_biases(suffixes: list[str], arch: OutputArchitecture) -> list[str]:
    """Qwen MoE has q/k/v biases: add the ones a llama or mistral base lacks, in name order."""
    if not arch.zero_qkv_bias:
        return suffixes
    extra = [f"{p}.bias" for p in QKV_BIASES if f"{p}.weight" in suffixes and f"{p}.bias" not in suffixes]
    return sorted(suffixes + extra) if arch.sorted_layer_weights else suffixes + extra


def _post_order(post: tuple[str, ...]) -> list[str]:
    """Final norm before the output head, as architecture definitions list them."""
    return sorted(post, key=lambda name: "lm_head" in name)


def _check_expert(expert: Expert, checkpoints: dict[ModelRef, Checkpoint], base: Checkpoint, structure, layers: int) -> None:
    source = checkpoints[expert.source_model]
    for layer in range(layers):
        for weight in MLP_WEIGHTS:
            name = structure.layer_tensor(layer, weight)
            if name not in source.headers:
                raise PreflightError(f"{expert.key}.source_model {source.label}: no tensor {name}")
            if source.headers[name][1] != base.headers[name][1]:
                raise PreflightError(
                    f"{expert.key}.source_model {source.label}: tensor {name} has shape {source.headers[name][1]}, "
                    f"the base model's is {base.headers[name][1]}"
                )

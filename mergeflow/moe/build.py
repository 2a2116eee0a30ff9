"""One MoE build, end to end: parse → resolve → choose the architecture → plan (pre-flight) →
gate vectors → stream tensors into a staging dir → publish atomically.

``run_moe(config_text, out, options)`` is the entry point for ``mergeflow moe`` and for anything
that rebuilds a ``mergekit_moe_config.yml``.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
from tqdm import tqdm

from mergeflow.engine.checkpoint import Checkpoint
from mergeflow.engine.config import DTYPES
from mergeflow.engine.errors import PreflightError
from mergeflow.engine.outputs import write_provenance
from mergeflow.engine.references import resolve_model
from mergeflow.engine.run import input_records
from mergeflow.engine import outdir
from mergeflow.engine.writer import ShardWriter
from mergeflow.moe.architectures import choose_architecture, output_config
from mergeflow.moe.card import write_moe_card
from mergeflow.moe.config import MoEConfig, parse_moe_config
from mergeflow.moe.gates import gate_vectors, load_tokenizer
from mergeflow.moe.plan import MoEPlan, OutputTensor, Part, build_moe_plan

log = logging.getLogger("mergeflow")

CONFIG_FILE = "mergekit_moe_config.yml"
_DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}


@dataclass
class MoEOptions:
    random_seed: int | None = None
    device: str = "cpu"  # where the hidden-state forward pass runs
    allow_all_same: bool = False  # --i-understand-this-is-not-useful-without-training
    out_shard_size: int = 5 * 10**9
    copy_tokenizer: bool = True
    write_model_card: bool = True
    overwrite: bool = False
    transformers_cache: str | None = None
    num_threads: int | None = None
    progress: bool = True


def run_moe(config_text: str, out: Path, options: MoEOptions) -> dict:
    """Build the MoE model ``config_text`` describes into ``out``; returns the provenance record."""
    config = parse_moe_config(config_text, options.allow_all_same)
    if options.num_threads:
        torch.set_num_threads(options.num_threads)
    out = Path(out).absolute()
    local = {str(r): Path(r.path).expanduser() for r in config.referenced_models()}
    outdir.check_not_an_input(out, {name: path for name, path in local.items() if path.exists()})
    outdir.check_destination(out, options.overwrite)  # before any download
    paths = {ref: resolve_model(ref, options.transformers_cache) for ref in config.referenced_models()}
    outdir.check_not_an_input(out, {str(ref): path for ref, path in paths.items()})
    checkpoints = {ref: Checkpoint(path, str(ref)) for ref, path in paths.items()}
    model_types = [str(checkpoints[r].config.get("model_type")) for r in config.referenced_models()]
    arch = choose_architecture(config, model_types)
    base = checkpoints[config.base_model]
    out_dtype = _out_dtype(config, base)
    plan = build_moe_plan(config, arch, checkpoints, out_dtype)
    seed = options.random_seed if options.random_seed is not None else secrets.randbelow(2**31)
    if options.random_seed is None:
        log.info("no --random-seed given; using seed %d (recorded in provenance.json)", seed)
    log.info("output architecture: %s", arch.name)

    if not options.progress:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # its "Loading weights" bar, for --quiet
    tokenizer = load_tokenizer(base.path)
    torch.manual_seed(seed)
    routed = config.experts + (config.shared_experts if config.shared_experts_routed else [])
    gates = gate_vectors(config.gate_mode, routed, base, tokenizer, plan.num_layers, plan.hidden_size, options.device)
    _warn_degenerate(gates)
    with outdir.guarded_output(out, sum(slot.nbytes for slot in plan.slots)) as staging:
        writer = ShardWriter(staging, plan.slots, options.out_shard_size)
        produce = _Producer(plan, checkpoints, gates, arch.fused_order)
        for tensor in tqdm(plan.tensors, desc="building MoE", unit="tensor", disable=not options.progress):
            writer.write(tensor.name, produce(tensor))
        writer.finish()
        _write_config(staging, arch, base, config, plan, out_dtype)
        if options.copy_tokenizer:
            tokenizer.save_pretrained(staging)
        if options.write_model_card:
            (staging / CONFIG_FILE).write_text(config.text)
            write_moe_card(staging, Path(out).name, config, arch.name)
        record = _provenance(config, arch.name, seed, options, input_records(paths, checkpoints, threading.Event()), writer.tensor_sha256)
        write_provenance(staging, record)
    return record


def _out_dtype(config: MoEConfig, base: Checkpoint) -> torch.dtype:
    """The config's dtype, else the base config's; else the base's stored dtype (mergekit keeps it)."""
    if config.dtype is not None:
        return config.dtype
    name = base.config.get("torch_dtype") or base.config.get("dtype")
    if isinstance(name, str) and name.removeprefix("torch.") in DTYPES:
        return DTYPES[name.removeprefix("torch.")]
    dtypes = {d for d, _ in base.headers.values() if d.is_floating_point}
    if len(dtypes) != 1:
        raise PreflightError(f"base_model {base.label}: config.json names no dtype; set 'dtype' in the MoE config")
    return dtypes.pop()


class _Producer:
    """Makes each planned tensor; a layer's fused expert parts are read once for both fused tensors."""

    def __init__(self, plan: MoEPlan, checkpoints: dict, gates: torch.Tensor, fused_order: tuple[str, ...]):
        self.plan, self.checkpoints, self.gates, self.fused_order = plan, checkpoints, gates, fused_order
        self._fused: tuple[tuple[Part, ...], list[torch.Tensor]] | None = None

    def __call__(self, tensor: OutputTensor) -> torch.Tensor:
        dtype = self.plan.out_dtype
        if tensor.kind == "router":
            start, stop = tensor.rows
            return self.gates[tensor.layer, start:stop, :].to(dtype).contiguous()
        if tensor.kind == "zeros":
            return torch.zeros(tensor.shape, dtype=dtype)
        if tensor.kind == "copy":
            return _expert_part(tensor.parts[0], self.checkpoints, dtype).contiguous()
        if self._fused is None or self._fused[0] != tensor.parts:
            self._fused = (tensor.parts, [_expert_part(p, self.checkpoints, dtype) for p in tensor.parts])
        by_weight = {w: self._fused[1][i :: len(self.fused_order)] for i, w in enumerate(self.fused_order)}
        gate, up, down = (by_weight[f"mlp.{w}_proj.weight"] for w in ("gate", "up", "down"))
        if tensor.kind == "gate_up":
            return torch.stack([torch.cat((g, u), dim=0) for g, u in zip(gate, up)])
        self._fused = None
        return torch.stack(down)


def _expert_part(part: Part, checkpoints: dict, out_dtype: torch.dtype) -> torch.Tensor:
    """Noise and residual scale apply in the stored dtype, before the cast, as in mergekit-moe."""
    tensor = checkpoints[part.model].load(part.name)
    expert = part.expert
    if expert is not None and expert.noise_scale is not None:
        tensor = tensor + torch.randn_like(tensor) * expert.noise_scale
    if expert is not None and part.residual and expert.residual_scale is not None:
        tensor = tensor * expert.residual_scale
    return tensor.to(out_dtype)


def _warn_degenerate(gates: torch.Tensor) -> None:
    """Two experts with near-identical router rows get the same tokens: say so, as mergekit does."""
    flat = gates.float()
    for layer in range(flat.shape[0]):
        rows = torch.nn.functional.normalize(flat[layer], dim=-1)
        similarity = rows @ rows.T - torch.eye(rows.shape[0])
        if similarity.numel() and similarity.max() > 0.999:
            log.warning("router vectors of two experts are nearly identical at layer %d; their prompts may be too similar", layer)
            return


def _write_config(staging: Path, arch, base: Checkpoint, config: MoEConfig, plan: MoEPlan, out_dtype: torch.dtype) -> None:
    out = output_config(arch, base.config, base.path, config, plan.intermediate_size, _DTYPE_NAMES[out_dtype])
    if isinstance(out, dict):
        (staging / "config.json").write_text(json.dumps(out, indent=4))
    else:
        out.save_pretrained(staging)


def _provenance(config: MoEConfig, arch: str, seed: int, options: MoEOptions, inputs: list[dict], tensor_sha256: dict[str, str]) -> dict:
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": config.text,
        "config_sha256": config.canonical_sha256,
        "merge_method": "moe",
        "moe": {"architecture": arch, "gate_mode": config.gate_mode, "experts": len(config.experts), "shared_experts": len(config.shared_experts)},
        "seed": seed,
        "seed_source": "--random-seed" if options.random_seed is not None else "generated",
        "options": {
            "device": options.device,
            "out_shard_size": options.out_shard_size,
            "allow_all_same": options.allow_all_same,
        },
        "torch_version": torch.__version__,
        "inputs": inputs,
        "tensors": tensor_sha256,
    }

"""``model+lora`` references: a PEFT LoRA adapter applied to its base model, tensor by tensor.

mergekit merges the adapter into a full copy of the base first (AutoModel at ``--lora-merge-dtype``,
``PeftModel.from_pretrained``, ``merge_and_unload``, ``save_pretrained`` into ``--lora-merge-cache``)
and merges that copy (mergekit-semantics §2.2). This view gives the same tensors without loading
the base: each targeted weight is computed when the executor asks for it, with the ops and dtypes
of PEFT 0.21's merge, and every other tensor passes through.

- Load dtype: with ``--lora-merge-dtype`` every floating tensor is cast to it (from_pretrained's
  ``dtype``, except the few tensors transformers keeps in float32); without it, tensors keep their
  stored dtype, as transformers 5 loads them.
- PEFT keeps LoRA factors in float32 for half-precision bases (``autocast_adapter_dtype``), else in
  the base dtype, and computes ``delta = transpose(B @ A, fan_in_fan_out) * scaling`` in that dtype
  (``fan_in_fan_out`` holds exactly for Conv1D modules, such as GPT-2's).
- A linear weight is updated in place, ``W += delta`` (one rounding to W's dtype); an embedding gets
  ``W += delta.to(W.dtype)``; ``lora_bias`` adds ``B.bias * scaling`` to the bias.
- ``scaling`` is ``alpha / r``, or ``alpha / sqrt(r)`` with ``use_rslora``, with ``r`` and ``alpha``
  from ``rank_pattern``/``alpha_pattern`` where a pattern matches the module name.
- DoRA (linear layers): ``W' = m / norm(W + delta) * (W + delta)``, norms per output row, in the
  factors' dtype, then cast back to W's dtype.
- Whole tensors the adapter stores (``modules_to_save``, embedding ``base_layer`` copies) replace
  the base tensor, cast to its dtype.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from mergeflow.engine.checkpoint import SAFETENSORS_DTYPES
from mergeflow.engine.errors import PreflightError
from mergeflow.engine.views import CheckpointView, replay_draws

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
PEFT_PREFIX = "base_model.model."
# Modules that are transformers' Conv1D (weights stored [in, out]), by model type. PEFT decides
# fan_in_fan_out by module class, whatever the adapter config says: on for Conv1D, off for Linear.
CONV1D_MODULES = {
    "gpt2": ("attn.c_attn", "attn.c_proj", "attn.q_attn", "mlp.c_fc", "mlp.c_proj"),
    "openai-gpt": ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"),
}
# Tensors transformers keeps in float32 when a model is loaded in half precision
# (``_keep_in_fp32_modules_strict``), by model type: name substrings.
KEEP_IN_FLOAT32 = {
    "glm4_moe": ("e_score_correction_bias", "gate.weight"),
    "deepseek_v3": ("e_score_correction_bias", "gate.weight"),
}
UNSUPPORTED_CONFIG = {
    "target_parameters": "LoRA on raw parameters (target_parameters)",
    "layer_replication": "layer replication",
    "trainable_token_indices": "trainable token adapters",
}


@dataclass(frozen=True)
class LoraUpdate:
    """How one base weight changes: ``W += transpose(B @ A) * scaling`` (and its bias)."""

    a: str
    b: str
    scaling: float
    transpose: bool
    embedding: bool
    bias: str | None
    magnitude: str | None = None  # DoRA's magnitude vector


class Adapter:
    """A PEFT adapter directory: its config and its tensors (read lazily)."""

    def __init__(self, path: Path, label: str):
        self.path = path
        self.label = label
        config_path = path / ADAPTER_CONFIG
        if not config_path.is_file():
            raise PreflightError(f"adapter {label}: no {ADAPTER_CONFIG} in {path} (is it a PEFT adapter?)")
        try:
            self.config = json.loads(config_path.read_text())
        except json.JSONDecodeError as err:
            raise PreflightError(f"{config_path}: invalid JSON ({err})") from None
        weights = next((path / n for n in ADAPTER_WEIGHTS if (path / n).is_file()), None)
        if weights is None:
            raise PreflightError(f"adapter {label}: no {' or '.join(ADAPTER_WEIGHTS)} in {path}")
        self.weights = weights
        self.files = [config_path, weights]
        self._pickle: dict[str, torch.Tensor] | None = None
        self.headers = self._read_headers()

    def _read_headers(self) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
        if self.weights.suffix == ".safetensors":
            try:
                with safe_open(str(self.weights), framework="pt") as handle:
                    slices = {name: handle.get_slice(name) for name in handle.keys()}
                    return {n: (SAFETENSORS_DTYPES[s.get_dtype()], tuple(s.get_shape())) for n, s in slices.items()}
            except Exception as err:  # safetensors raises several types for corrupt files
                raise PreflightError(f"{self.weights}: unreadable safetensors file ({err})") from None
        return {name: (t.dtype, tuple(t.shape)) for name, t in self._pickled().items()}

    def _pickled(self) -> dict[str, torch.Tensor]:
        if self._pickle is None:
            self._pickle = torch.load(self.weights, map_location="cpu", weights_only=True, mmap=True)
        return self._pickle

    def load(self, name: str) -> torch.Tensor:
        if self.weights.suffix == ".safetensors":
            with safe_open(str(self.weights), framework="pt") as handle:
                return handle.get_tensor(name)
        return self._pickled()[name].clone()

    def scaling(self, module: str) -> float:
        config = self.config
        ranks, alphas = config.get("rank_pattern") or {}, config.get("alpha_pattern") or {}
        r = ranks.get(_pattern_key(ranks, module), config.get("r", 8))
        alpha = alphas.get(_pattern_key(alphas, module), config.get("lora_alpha", 8))
        return alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r


def _pattern_key(patterns: dict, module: str) -> str | None:
    """PEFT's rule: the first pattern that matches the end of the module name at a dot boundary."""
    return next((p for p in patterns if re.match(rf"(.*\.)?({p})$", module)), None)


def apply_adapter(checkpoint, adapter_path: Path, label: str, dtype: torch.dtype | None) -> LoraCheckpoint:
    return LoraCheckpoint(checkpoint, Adapter(adapter_path, label), dtype)


class LoraCheckpoint(CheckpointView):
    """The base model's tensors with the adapter merged in, as ``merge_and_unload`` leaves them."""

    def __init__(self, inner, adapter: Adapter, dtype: torch.dtype | None):
        super().__init__(inner)
        self.adapter = adapter
        self.dtype = dtype
        self._check_config()
        self._load_dtypes = {n: self._load_dtype(n, d) for n, (d, _) in inner.headers.items()}
        self.headers = {n: (self._load_dtypes[n], s) for n, (_, s) in inner.headers.items()}
        self.updates: dict[str, LoraUpdate] = {}
        self.replacements: dict[str, str] = {}
        self._plan()

    @property
    def files(self) -> list[Path]:
        return [*self.inner.files, *self.adapter.files]

    def _load_dtype(self, name: str, stored: torch.dtype) -> torch.dtype:
        """What ``from_pretrained(dtype=--lora-merge-dtype)`` gives this tensor."""
        if self.dtype is None or not stored.is_floating_point:
            return stored
        kept = KEEP_IN_FLOAT32.get(self.config.get("model_type"), ())
        if self.dtype in (torch.float16, torch.bfloat16) and any(k in name for k in kept):
            return torch.float32
        return self.dtype

    def replay_draws(self) -> None:
        """Draw what PEFT draws when it builds this adapter's layers.

        ``PeftModel.from_pretrained`` creates every LoRA layer with random initial factors (each
        ``nn.Linear``'s own init, then ``init_lora_weights``) before it loads the saved ones.
        mergekit does that after seeding, so its DARE/DELLA masks come from a generator advanced by
        these draws; making the same draws keeps ours identical. Only the amount drawn matters:
        uniform and (16+ element) normal fills consume the generator by size, not by value.
        mergekit draws nothing when it reuses a merged copy from a warm --lora-merge-cache; we
        reproduce a run that builds it.
        """
        replay_draws(self.inner)
        init = self.adapter.config.get("init_lora_weights", True)
        for update in self.updates.values():
            (_, a_shape), (_, b_shape) = self.adapter.headers[update.a], self.adapter.headers[update.b]
            if update.embedding:
                torch.randn(a_shape), torch.randn(b_shape)
                if init is not False:
                    torch.empty(b_shape).normal_()
                continue
            for shape in (a_shape, b_shape):  # nn.Linear(in, r) and nn.Linear(r, out): kaiming uniform
                torch.nn.init.kaiming_uniform_(torch.empty(shape), a=math.sqrt(5))
            if update.bias is not None:
                torch.empty(b_shape[0]).uniform_()
            if init is True:
                torch.nn.init.kaiming_uniform_(torch.empty(a_shape), a=math.sqrt(5))
            elif init == "gaussian":
                torch.empty(a_shape).normal_()

    def _check_config(self) -> None:
        config, label = self.adapter.config, self.adapter.label
        init = config.get("init_lora_weights", True)
        if init not in (True, False, "gaussian"):
            raise PreflightError(f"adapter {label}: init_lora_weights={init!r} adapters are not supported yet (they change the base weights)")
        peft_type = config.get("peft_type", "LORA")
        if str(peft_type).upper() != "LORA":
            raise PreflightError(f"adapter {label}: peft_type {peft_type!r} is not supported (only LORA adapters are)")
        for key, what in UNSUPPORTED_CONFIG.items():
            if config.get(key):
                raise PreflightError(f"adapter {label}: not supported yet: {what} ({key} is set in {ADAPTER_CONFIG})")

    def _plan(self) -> None:
        conv1d = CONV1D_MODULES.get(self.config.get("model_type"), ())
        keys = set(self.adapter.headers)
        for key in sorted(keys):
            name = key.removeprefix(PEFT_PREFIX)
            if name.endswith(".lora_A.weight"):
                module = name.removesuffix(".lora_A.weight")
                stem = key.removesuffix("lora_A.weight")
                bias = f"{stem}lora_B.bias" if f"{stem}lora_B.bias" in keys else None
                magnitude = f"{stem}lora_magnitude_vector" if f"{stem}lora_magnitude_vector" in keys else None
                self._add_update(module, key, f"{stem}lora_B.weight", module.endswith(conv1d), False, bias, magnitude)
            elif name.endswith(".lora_embedding_A"):
                module = name.removesuffix(".lora_embedding_A")
                if self.adapter.config.get("use_dora"):
                    raise PreflightError(f"adapter {self.adapter.label}: not supported yet: DoRA on embeddings ({key})")
                self._add_update(module, key, key.removesuffix("_A") + "_B", True, True, None)
            elif name.endswith((".lora_B.weight", ".lora_B.bias", ".lora_embedding_B", ".lora_magnitude_vector")):
                continue  # read with its A factor
            elif "lora_" in name or "trainable_tokens" in name:
                raise PreflightError(f"adapter {self.adapter.label}: tensor {key} is of a LoRA kind mergeflow does not apply yet")
            else:  # a whole module the adapter trained (modules_to_save) or an embedding base copy
                target = name.replace(".base_layer.", ".")
                self._check_target(target, key)
                self.replacements[target] = key

    def _add_update(
        self, module: str, a: str, b: str, transpose: bool, embedding: bool, bias: str | None, magnitude: str | None = None
    ) -> None:
        target = f"{module}.weight"
        self._check_target(target, a)
        if b not in self.adapter.headers:
            raise PreflightError(f"adapter {self.adapter.label}: {a} has no matching {b}")
        (_, a_shape), (_, b_shape) = self.adapter.headers[a], self.adapter.headers[b]
        _, w_shape = self.headers[target]
        expected = (a_shape[1], b_shape[0]) if transpose else (b_shape[0], a_shape[1])
        if len(a_shape) != 2 or len(b_shape) != 2 or a_shape[0] != b_shape[1] or w_shape != expected:
            raise PreflightError(
                f"adapter {self.adapter.label}: {a} {list(a_shape)} and {b} {list(b_shape)} do not fit "
                f"{target} {list(w_shape)} of {self.label}"
            )
        if bias is not None:
            self._check_target(f"{module}.bias", bias)
        if self.adapter.config.get("use_dora") and (magnitude is None or self.adapter.headers[magnitude][1] != (b_shape[0],)):
            raise PreflightError(f"adapter {self.adapter.label}: DoRA adapter without a fitting {a.removesuffix('lora_A.weight')}lora_magnitude_vector")
        self.updates[target] = LoraUpdate(a, b, self.adapter.scaling(module), transpose, embedding, bias, magnitude)

    def _check_target(self, target: str, key: str) -> None:
        if target not in self.headers:
            raise PreflightError(
                f"adapter {self.adapter.label}: {key} changes {target}, which {self.label} does not store"
            )

    def load(self, name: str) -> torch.Tensor:
        """The merged tensor; updated in place, since every load returns a tensor of its own."""
        tensor = self.inner.load(name).to(self._load_dtypes[name])
        if name in self.replacements:
            tensor = self.adapter.load(self.replacements[name]).to(tensor.dtype)
        update = self.updates.get(name)
        if update is not None:
            tensor = self._merged(tensor, update)
        bias_update = self.updates.get(name.removesuffix(".bias") + ".weight") if name.endswith(".bias") else None
        if bias_update is not None and bias_update.bias is not None:
            tensor += self.adapter.load(bias_update.bias).to(_factor_dtype(tensor.dtype)) * bias_update.scaling
        return tensor

    def _merged(self, weight: torch.Tensor, update: LoraUpdate) -> torch.Tensor:
        factors = _factor_dtype(weight.dtype)
        a = self.adapter.load(update.a).to(factors)
        b = self.adapter.load(update.b).to(factors)
        product = b @ a
        delta = (product.T if update.transpose else product) * update.scaling
        if update.magnitude is not None:
            return self._dora_merged(weight, delta, update)
        if update.embedding:
            weight += delta.to(weight.dtype)
        else:
            weight += delta
        return weight

    def _dora_merged(self, weight: torch.Tensor, delta: torch.Tensor, update: LoraUpdate) -> torch.Tensor:
        """DoRA: ``W' = m / ||W + delta|| * (W + delta)``, norms over the layer's output rows."""
        magnitude = self.adapter.load(update.magnitude).to(delta.dtype)

        def oriented(t: torch.Tensor) -> torch.Tensor:  # PEFT's transpose(t, fan_in_fan_out)
            return t.T if update.transpose else t

        norm = torch.linalg.norm(oriented(weight) + oriented(delta), dim=1)
        factor = oriented((magnitude / norm).view(-1, 1))
        return (factor * (weight + delta)).to(weight.dtype)


def _factor_dtype(weight_dtype: torch.dtype) -> torch.dtype:
    """PEFT casts the factors to the base layer's dtype, then upcasts half precision to float32."""
    return torch.float32 if weight_dtype in (torch.float16, torch.bfloat16) else weight_dtype

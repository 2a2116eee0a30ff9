"""Planning: which output tensor comes from which input tensors, with which parameters.

Everything here reads only config.json files and safetensors headers, so a bad config, a missing
tensor or a shape mismatch fails before any weight is loaded. Execution order is mergekit's
(§6): ascending plain-string order of each task's largest input name; the seeded methods draw
their random numbers in that order.

Ties are ours: planning order. Two tasks tie when they share their largest input name: the
lm_head of a tied model merged with untied ones (it reads the embedding), or slices that read the
same input layer twice. mergekit 0.1.5 breaks such ties by the iteration order of a Python set of
its internal task ids, which flips with the number of tensors in the merge (for two Llama models,
one tied, the lm_head goes first at 6, 7 and 24-30 layers, the embedding first otherwise). We do
not reproduce that, so with DARE or DELLA the two tied tasks' random masks can differ from
mergekit's; every deterministic method, and every merge without such a tie, is unaffected.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import reduce
from typing import Any

import torch

from mergeflow.engine import params as P
from mergeflow.engine.architecture import Architecture, infer_architecture, layer_count_key, tied_source, vocabulary_axis
from mergeflow.engine.checkpoint import Checkpoint
from mergeflow.engine.config import MergeConfig, ModelRef, OutputSlice, Source, did_you_mean
from mergeflow.engine.errors import ConfigError, PreflightError
from mergeflow.engine.views import order_label
from mergeflow.engine.tokenizer import VocabularyAlignment
from mergeflow.engine.vocabulary import VocabularyRemap, plan_remap
from mergeflow.engine.writer import TensorSlot
from mergeflow.methods import MethodSpec, Scope, get_method, method_names

log = logging.getLogger("mergeflow")


@dataclass(frozen=True)
class InputTensor:
    model: ModelRef
    name: str
    order_label: str  # where mergekit schedules its load (views.order_label); usually the name


@dataclass(frozen=True)
class TensorTask:
    output_name: str
    inputs: tuple[InputTensor, ...]
    base_index: int | None
    params: dict[str, Any]
    model_params: tuple[dict[str, Any], ...]
    vocabulary_axis: int | None
    shape: tuple[int, ...]
    load_dtype: torch.dtype | None  # the config's `dtype`, applied at load time
    merge_dtype: torch.dtype  # inputs are promoted to this before the merge
    out_dtype: torch.dtype  # what is written
    vocabulary: VocabularyRemap | None = None  # aligns the inputs' rows to the output tokenizer

    @property
    def order_key(self) -> str:
        return max(i.order_label for i in self.inputs)


@dataclass
class MergePlan:
    tasks: list[TensorTask]  # in execution (and save) order
    donor: ModelRef
    layer_sources: list[int] | None  # per output layer, its first source's layer (slices syntax only)

    @property
    def slots(self) -> list[TensorSlot]:
        return [TensorSlot(t.output_name, t.out_dtype, t.shape) for t in self.tasks]


def build_plan(
    config: MergeConfig,
    method: MethodSpec,
    checkpoints: dict[ModelRef, Checkpoint],
    allow_crimes: bool = False,
    unsafe_truncate_embeddings: bool = False,
    vocabulary: VocabularyAlignment | None = None,
) -> MergePlan:
    _check_architectures(checkpoints, allow_crimes)
    _warn_unknown_parameters(config, method)
    slices = _output_slices(config, checkpoints)
    base_of = {id(s): s.base_model or config.base_model for s in slices}
    for sl in slices:
        _check_input_contract(method, sl, base_of[id(sl)])
    arch = infer_architecture(
        list(dict.fromkeys(n for c in checkpoints.values() for n in c.headers)),
        checkpoints[donor(config)].config,
    )
    planner = _Planner(config, method, checkpoints, arch, unsafe_truncate_embeddings, vocabulary)
    first, last = slices[0], slices[-1]
    for name in arch.pre_weights:
        planner.add(name, [(src, name) for src in first.sources], first, base_of[id(first)], 0.0)
    layer = 0
    layer_sources = []
    for sl in slices:
        start, end = sl.sources[0].layer_range
        for k in range(end - start):
            t = k / (end - start - 1) if end - start > 1 else 1.0
            for suffix in arch.layer_suffixes:
                inputs = [(src, arch.layer_tensor(src.layer_range[0] + k, suffix)) for src in sl.sources]
                planner.add(arch.layer_tensor(layer, suffix), inputs, sl, base_of[id(sl)], t)
            layer_sources.append(start + k)
            layer += 1
    # mergekit sizes the post-weight inputs by the first slice and zips them with the last slice.
    post_sources = last.sources[: len(first.sources)]
    if method.requires_base and arch.post_weights and base_of[id(last)] not in [src.model for src in post_sources]:
        raise ConfigError(
            f"{last.key}.sources",
            f"the final weights ({', '.join(arch.post_weights)}) are merged from this last slice's first "
            f"{len(first.sources)} source(s), as many as the first slice has; list the base model among them",
        )
    for name in arch.post_weights:
        planner.add(name, [(src, name) for src in post_sources], last, base_of[id(last)], 0.0)
    ordered = sorted(enumerate(planner.tasks), key=lambda item: (item[1].order_key, item[0]))
    return MergePlan(
        tasks=[task for _, task in ordered],
        donor=donor(config),
        layer_sources=layer_sources if config.slices else None,
    )


def donor(config: MergeConfig) -> ModelRef:
    """Config, tokenizer and card donor: the base model, else the first model in config order.

    mergekit takes the first of a Python set when there is no base, which varies between runs; we
    pin the config order instead.
    """
    return config.base_model or config.referenced_models()[0]


def _check_architectures(checkpoints: dict[ModelRef, Checkpoint], allow_crimes: bool) -> None:
    archs = {ref: c.architecture for ref, c in checkpoints.items()}
    if len(set(archs.values())) > 1 and not allow_crimes:
        listing = ", ".join(f"{ref} is {arch}" for ref, arch in archs.items())
        raise PreflightError(f"models have different architectures ({listing}); pass --allow-crimes to merge anyway")


def _check_input_contract(method: MethodSpec, sl: OutputSlice, base: ModelRef | None) -> None:
    """mergekit 0.1.5 checks every slice against the method's input counts before merging, so a
    slerp slice with one source, nuslerp with the base among its two models, or a model listed
    twice in one slice fails up front."""
    key = "models" if sl.key == "models" else f"{sl.key}.sources"
    models = [src.model for src in sl.sources]
    repeated = next((m for i, m in enumerate(models) if m in models[:i]), None)
    if repeated is not None:
        raise ConfigError(key, f"model {repeated} is listed twice; a slice merges each model once")
    if method.requires_base:
        if base is None:
            raise ConfigError("base_model", f"merge method '{method.name}' needs a base_model; add 'base_model:' naming one of the merged models")
        if base not in models:
            raise ConfigError(key, f"base model {base} is not among this slice's sources")
    others = sum(model != base for model in models)
    for what, count, low, high in (
        ("counting the base", len(models), method.min_inputs, method.max_inputs),
        ("besides the base", others, method.min_others, method.max_others),
    ):
        if count < low or (high is not None and count > high):
            bounds = f"exactly {low}" if low == high else f"at least {low}" if high is None else f"{low} to {high}"
            hint = "; use slices: to pick one model per layer range" if high == 1 and sl.key == "models" else ""
            raise ConfigError(key, f"'{method.name}' needs {bounds} model(s) per slice {what} (got {count}){hint}")


def _warn_unknown_parameters(config: MergeConfig, method: MethodSpec) -> None:
    mappings = [("parameters", config.parameters), ("modules.default.parameters", config.module_parameters)]
    mappings += [(f"{s.key}.parameters", s.parameters) for s in config.models or []]
    for sl in config.slices or []:
        mappings.append((f"{sl.key}.parameters", sl.parameters))
        mappings += [(f"{s.key}.parameters", s.parameters) for s in sl.sources]
    for key, mapping in mappings:
        unknown = sorted(set(mapping) - set(method.param_index))
        if unknown:
            names = ", ".join(f"{key}.{name}{_suggestion(name, method)}" for name in unknown)
            log.warning("ignoring parameter(s) that '%s' does not use: %s", method.name, names)


def _suggestion(name: str, method: MethodSpec) -> str:
    """A near-miss of this method's parameters, else of any method's (``densty`` on linear)."""
    every = {p for other in method_names() for p in get_method(other).param_index}
    return did_you_mean(name, method.param_index) or did_you_mean(name, every)


def _output_slices(config: MergeConfig, checkpoints: dict[ModelRef, Checkpoint]) -> list[OutputSlice]:
    """``models:`` becomes one slice over all layers, the base appended last if not listed (§4.1)."""
    def layers_of(ref: ModelRef) -> int:
        config_json = checkpoints[ref].config
        key = layer_count_key(config_json)
        if key is None:
            return infer_architecture(list(checkpoints[ref].headers), config_json).num_layers
        return config_json[key]

    if config.slices:
        for sl in config.slices:
            for src in sl.sources:
                available = layers_of(src.model)
                if src.layer_range[1] > available:
                    raise ConfigError(f"{src.key}.layer_range", f"{list(src.layer_range)} exceeds the {available} layers of {src.model}")
        return config.slices
    sources = list(config.models)
    if config.base_model is not None and config.base_model not in [s.model for s in sources]:
        sources.append(Source(config.base_model, None, {}, "base_model"))
    counts = {str(s.model): layers_of(s.model) for s in sources}
    if len(set(counts.values())) > 1:
        raise PreflightError(f"models have different layer counts ({counts}); use slices: to pick layers")
    n = next(iter(counts.values()))
    ranged = tuple(Source(s.model, (0, n), s.parameters, s.key) for s in sources)
    return [OutputSlice(ranged, None, {}, "models")]


class _Planner:
    def __init__(
        self, config: MergeConfig, method: MethodSpec, checkpoints, arch: Architecture, truncate: bool,
        vocabulary: VocabularyAlignment | None,
    ):
        self.config = config
        self.vocabulary = vocabulary
        self.method = method
        self.checkpoints = checkpoints
        self.arch = arch
        self.truncate = truncate
        self.tasks: list[TensorTask] = []
        self.global_params = method.params_in(Scope.GLOBAL)
        self.model_params = method.params_in(Scope.MODEL, Scope.INPUT)

    def _shared_levels(self, sl: OutputSlice) -> list[tuple[str, dict]]:
        levels = [(f"{sl.key}.parameters", sl.parameters)] if sl.key != "models" else []
        if self.config.module_parameters:
            levels.append(("modules.default.parameters", self.config.module_parameters))
        levels.append(("parameters", self.config.parameters))
        return levels

    def add(self, output_name: str, wanted: list[tuple[Source, str]], sl: OutputSlice, base: ModelRef | None, t: float) -> None:
        present = [(src, self._resolve_name(src.model, name)) for src, name in wanted]
        if all(found != name for (_, name), (_, found) in zip(wanted, present)):
            # None of these models has the weight under its own name (e.g. the lm_head of tied
            # models): it is not written, as in mergekit, even when another slice's model has it.
            # A tied model's embedding stands in for its head only beside a model with a real one.
            return
        missing = [f"{src.model} lacks {name}" for (src, name), (_, found) in zip(wanted, present) if found is None]
        if missing:
            raise PreflightError(f"tensor {output_name}: {'; '.join(missing)}")
        inputs = tuple(InputTensor(src.model, found, order_label(self.checkpoints[src.model], found)) for src, found in present)
        base_index = next((i for i, (src, _) in enumerate(present) if src.model == base), None)
        shared = self._shared_levels(sl)
        context = f"tensor {output_name}"
        params = {p.name: P.resolve(p, shared, t, output_name, context) for p in self.global_params}
        model_params = []
        # Per-model filters see the input's own weight name (its own layer index), not the tensor
        # a tied head is read from: a tied model's lm_head is matched by `filter: lm_head`.
        for i, (src, name) in enumerate(wanted):
            scopes = (Scope.INPUT,) if i == base_index else (Scope.INPUT, Scope.MODEL)
            levels = [(f"{s.key}.parameters", s.parameters) for s in sl.sources if s.model == src.model] + shared
            model_params.append({
                p.name: P.resolve(p, levels, t, name, f"model {src.model}, tensor {name}")
                for p in self.model_params if p.scope in scopes
            })
        self.tasks.append(self._typed_task(output_name, inputs, base_index, params, tuple(model_params), base))

    def _resolve_name(self, model: ModelRef, name: str) -> str | None:
        headers = self.checkpoints[model].headers
        if name in headers:
            return name
        tied = tied_source(name, self.arch.pre_weights)
        return tied if tied in headers else None

    def _typed_task(self, output_name, inputs, base_index, params, model_params, base) -> TensorTask:
        headers = [self.checkpoints[i.model].headers[i.name] for i in inputs]
        shapes = [shape for _, shape in headers]
        axis = vocabulary_axis(output_name, len(shapes[0]))
        remap = None
        if self.vocabulary is not None and axis is not None:
            if len({s[1:] for s in shapes}) > 1:
                listing = ", ".join(f"{i.model}: {list(s)}" for i, s in zip(inputs, shapes))
                raise PreflightError(f"tensor {output_name}: shapes differ beyond the vocabulary axis ({listing})")
            models = [i.model for i in inputs]
            remap = plan_remap(self.vocabulary, models, base, [s[0] for s in shapes], output_name)
            shape = (remap.padded_size, *shapes[0][1:])
        else:
            shape = self._output_shape(output_name, inputs, shapes, axis)
        load_dtype = self.config.dtype
        dtypes = [load_dtype or dtype for dtype, _ in headers]
        merge_dtype = reduce(torch.promote_types, dtypes)
        if merge_dtype.is_floating_point:
            result = self.method.output_dtype(merge_dtype, len(inputs))
        else:
            result = merge_dtype
        return TensorTask(
            output_name=output_name,
            inputs=inputs,
            base_index=base_index,
            params=params,
            model_params=model_params,
            vocabulary_axis=axis,
            shape=shape,
            load_dtype=load_dtype,
            merge_dtype=merge_dtype,
            out_dtype=self.config.out_dtype or result,
            vocabulary=remap,
        )

    def _output_shape(self, output_name, inputs, shapes, axis) -> tuple[int, ...]:
        if len(set(shapes)) == 1:
            return shapes[0]
        listing = ", ".join(f"{i.model}: {list(s)}" for i, s in zip(inputs, shapes))
        same_rank = len({len(s) for s in shapes}) == 1
        others_equal = same_rank and axis is not None and len({s[1:] for s in shapes}) == 1
        if not others_equal:
            raise PreflightError(f"tensor {output_name}: shape mismatch ({listing}); pass --allow-crimes only for differing architectures, shapes must still match")
        if not self.truncate:
            raise PreflightError(f"tensor {output_name}: vocabulary sizes differ ({listing}); pass --unsafe-truncate-embeddings to keep the common prefix")
        rows = min(s[0] for s in shapes)
        return (rows, *shapes[0][1:])

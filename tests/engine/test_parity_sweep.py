"""A seeded random sweep over the config space, each draw checked for parity with mergekit 0.1.5.

The hand-written parity tests pin one config per feature; users combine features. Each case here
draws a method, a syntax (``models:``, ``modules:`` or several ``slices:`` with per-slice bases
and parameters), parameter values (as numbers, strings or booleans), gradients and filters at
every precedence level, dtypes, layer counts (mixed within a frankenmerge), tied and untied
checkpoints, and an architecture; some draws are then broken on purpose. Where mergekit refuses a
draw, mergeflow must refuse it too. The draws are fixed by ``SWEEP_SEED``, so a failure is reproducible by its case
number; change the seed locally to explore further.
"""

from __future__ import annotations

import random

import pytest
import torch
import yaml

from mergeflow.engine.errors import MergeflowError
from oracle import assert_bit_identical, mergeflow_merge, mergekit_merge

pytestmark = pytest.mark.parity

SWEEP_SEED = 20240611
CASES = 40
ARCHS = ["llama", "mistral", "qwen2", "gpt2"]
LAYERS = [2, 5, 11]
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
FILTERS = ["self_attn", "attn", "mlp", "embed", "norm", "lm_head", "*"]
# DARE and DELLA draw random masks. mergekit orders two tasks whose largest input name is the same
# by the iteration order of a Python set of its internal task ids, which we do not reproduce (see
# mergeflow.engine.plan); for these methods no draw lets two tasks share that name.
SEEDED = {"dare_ties", "dare_linear", "della", "della_linear"}


def _unit(lo: float, hi: float):
    return lambda rng: round(rng.uniform(lo, hi), 3)


def _flag(rng: random.Random) -> bool:
    return rng.random() < 0.5


# Per parameter: its sampler, whether it is per-model, and whether it takes gradients.
PARAMS = {
    "weight": (_unit(-0.3, 1.0), True, True),
    "density": (lambda rng: rng.choice([0.0, 1.0, 1.1]) if rng.random() < 0.15 else _unit(0.1, 1.0)(rng), True, True),
    "gamma": (_unit(0.0, 0.1), True, True),
    "epsilon": (_unit(0.01, 0.15), True, True),
    "scale": (_unit(0.5, 1.5), True, True),
    "t": (_unit(0.0, 1.0), False, True),
    "lambda": (_unit(0.5, 1.5), False, True),
    "select_topk": (_unit(0.0, 1.0), False, True),
    "r": (_unit(0.0, 0.5), False, False),
    "alpha": (_unit(0.0, 0.5), False, False),
    "max_iter": (lambda rng: rng.randint(1, 8), False, False),
    "normalize": (_flag, False, True),
    "rescale": (_flag, False, True),
    "int8_mask": (_flag, False, True),
    "filter_wise": (_flag, False, False),
    "nuslerp_flatten": (_flag, False, False),
    "nuslerp_row_wise": (_flag, False, False),
    "normalize_weights": (_flag, False, False),
}
GTA = ["density", "lambda", "normalize", "rescale", "int8_mask"]
# Per method: needs a base, how many non-base models, required and optional parameters.
METHODS = {
    "linear": (False, (1, 3), ["weight"], ["normalize"]),
    "slerp": (True, (1, 1), ["t"], []),
    "nuslerp": (False, (2, 2), ["weight"], ["nuslerp_flatten", "nuslerp_row_wise"]),
    "multislerp": (False, (1, 3), ["weight"], ["normalize_weights"]),
    "karcher": (False, (1, 3), [], ["max_iter"]),
    "task_arithmetic": (True, (1, 3), ["weight"], ["lambda", "normalize"]),
    "ties": (True, (1, 3), ["weight"], GTA),
    "dare_ties": (True, (1, 3), ["weight"], GTA),
    "dare_linear": (True, (1, 3), ["weight"], GTA),
    "breadcrumbs": (True, (1, 3), ["weight"], GTA + ["gamma"]),
    "breadcrumbs_ties": (True, (1, 3), ["weight"], GTA + ["gamma"]),
    "della": (True, (1, 3), ["weight"], GTA + ["epsilon"]),
    "della_linear": (True, (1, 3), ["weight"], GTA + ["epsilon"]),
    "sce": (True, (1, 3), [], ["select_topk", "int8_mask"]),
    "ram": (True, (1, 3), [], []),
    "ramplus_tl": (True, (1, 3), [], ["r", "alpha"]),
    "model_stock": (True, (2, 3), [], ["filter_wise"]),
    "nearswap": (True, (1, 1), ["t"], []),
    "arcee_fusion": (True, (1, 1), [], []),
    "passthrough": (False, (1, 3), [], ["scale"]),
}
# della's density must keep density ± epsilon inside (0, 1), or both engines refuse it.
DELLA_DENSITY = _unit(0.3, 0.8)


def _spelled(rng: random.Random, value):
    """Sometimes the way YAML users write it: a number as a string, a flag as 0/1 or text."""
    if rng.random() >= 0.2:
        return value
    if isinstance(value, bool):
        return rng.choice([int(value), str(value).lower(), "y" if value else "n"])
    return f"{value}.0" if isinstance(value, int) else str(value)


def _value(rng: random.Random, name: str, method: str):
    sample, _, gradable = PARAMS[name]
    draw = DELLA_DENSITY if name == "density" and method.startswith("della") else sample
    if gradable and rng.random() < 0.35:
        return [_spelled(rng, draw(rng)) for _ in range(rng.randint(1, 5))]
    return _spelled(rng, draw(rng))


def _setting(rng: random.Random, name: str, method: str, required: bool):
    """A scalar, a gradient, or a list of filtered values (with a catch-all when required)."""
    if rng.random() < 0.3:
        entries = [{"filter": f, "value": _value(rng, name, method)} for f in rng.sample(FILTERS, rng.randint(1, 3))]
        if required or rng.random() < 0.5:
            entries.append({"value": _value(rng, name, method)})
        return entries
    return _value(rng, name, method)


def _models(rng: random.Random, model_dir, method: str, arch: str, depths: dict[str, int]) -> dict[str, str]:
    """The base and fine-tunes; sometimes with mixed dtypes, or one tied checkpoint among untied
    ones (not for the seeded methods: the tied model's lm_head is its embedding, so the lm_head and
    embedding tasks share their largest input name)."""
    dtype = rng.choice(list(DTYPES.values()))
    mixed_dtypes = rng.random() < 0.2
    tied = rng.random() < 0.4
    tied_one = rng.random() < 0.25 and method not in SEEDED
    paths = {}
    for name, depth in depths.items():
        variant = {"arch": arch, "layers": depth, "tied": tied != (tied_one and name == "m1")}
        variant["dtype"] = rng.choice(list(DTYPES.values())) if mixed_dtypes else dtype
        paths[name] = str(model_dir(name, **variant))
    return paths


def _slice_lengths(rng: random.Random, layers: int, grow: bool) -> list[int]:
    """Up to three slices covering ``layers`` output layers, plus one more if ``grow`` (a
    frankenmerge that deepens the model)."""
    lengths: list[int] = []
    while sum(lengths) < layers:
        left = layers - sum(lengths)
        lengths.append(left if len(lengths) == 2 else rng.randint(1, left))
    if grow:
        lengths.append(rng.randint(1, layers))
    return lengths


def _slices(rng, method, arch, depths, members, source_params, shared) -> list[dict]:
    """Each source reads its own equal-length layer range, so input ranges overlap and repeat,
    except for the seeded methods, whose slices read the same layers from every source, in order.

    Qwen2 keeps its layer count: mergekit 0.1.5 cannot write a Qwen2 config whose ``layer_types``
    no longer matches it (we rebuild the list; see test_architectures).
    """
    aligned = method in SEEDED
    layers = min(depths[name] for name in members)
    grow = arch != "qwen2" and not aligned and rng.random() < 0.3
    slices, start = [], 0
    for length in _slice_lengths(rng, layers, grow):
        chosen = [rng.choice(members)] if method == "passthrough" else members
        sources = []
        for name in chosen:
            offset = start if aligned else rng.randint(0, depths[name] - length)
            entry: dict = {"model": f"MODEL-{name}", "layer_range": [offset, offset + length]}
            if params := source_params():
                entry["parameters"] = params
            sources.append(entry)
        start += length
        sl: dict = {"sources": sources}
        if "base" in chosen and len(chosen) > 2 and rng.random() < 0.25:
            sl["base_model"] = f"MODEL-{rng.choice([m for m in chosen if m != 'base'])}"  # a per-slice base override
        if shared and rng.random() < 0.4:
            sl["parameters"] = {p: _setting(rng, p, method, False) for p in rng.sample(shared, 1)}
        slices.append(sl)
    return slices


def _break(rng: random.Random, doc: dict, method: str, required: list[str]) -> str:
    """Make the draw invalid in one of the ways users do; returns what was done, for the label."""
    how = rng.choice(["no_base", "drop_required", "bad_dtype", "extra_model"])
    if how == "no_base" and "base_model" in doc:
        del doc["base_model"]
    elif how == "drop_required" and required:
        for holder in [doc, *doc.get("models", []), *doc.get("slices", []), *(s for sl in doc.get("slices", []) for s in sl["sources"])]:
            holder.get("parameters", {}).pop(required[0], None)
    elif how == "extra_model" and "models" in doc:
        doc["models"].append(dict(doc["models"][0]))
        doc["models"][-1]["model"] = "MODEL-m3"
    else:
        how = "bad_dtype"
        doc["dtype"] = rng.choice(["bf16", "fp16", "half"])
    return how


def draw_case(index: int, model_dir) -> tuple[str, str]:
    """Case ``index`` of the sweep: a label and the YAML text, with model names as local paths."""
    rng = random.Random(SWEEP_SEED * 1000 + index)
    method = sorted(METHODS)[index % len(METHODS)]  # every method twice in CASES draws
    needs_base, (lo, hi), required, optional = METHODS[method]
    arch, layers = rng.choice(ARCHS), rng.choice(LAYERS)
    others = ["m1", "m2", "m3"][: rng.randint(lo, hi)]
    has_base = needs_base or (method in ("nuslerp", "multislerp", "linear", "karcher") and rng.random() < 0.4)
    use_slices = method == "passthrough" or rng.random() < 0.5
    depths = {name: layers for name in ["base", *others, "m3"]}
    if use_slices and arch != "qwen2" and rng.random() < 0.25:
        depths["m1"] = rng.choice(LAYERS)  # a frankenmerge of models of different depths
    doc: dict = {"merge_method": method}
    if has_base:
        doc["base_model"] = "MODEL-base"
    chosen = required + [p for p in optional if rng.random() < 0.5]
    per_model = [p for p in chosen if PARAMS[p][1]]
    shared = [p for p in chosen if not PARAMS[p][1]]

    def source_params() -> dict:
        """Per-model values; the base gets them too, where only linear and passthrough read them."""
        return {p: _setting(rng, p, method, p in required) for p in per_model if rng.random() < 0.8 or p in required}

    members = others + (["base"] if has_base and (method == "linear" or use_slices) else [])
    if use_slices:
        doc["slices"] = _slices(rng, method, arch, depths, members, source_params, shared)
    else:
        doc["models"] = [{"model": f"MODEL-{m}", **({"parameters": ps} if (ps := source_params()) else {})} for m in members]
    top = {p: _setting(rng, p, method, p in required) for p in shared + [p for p in per_model if rng.random() < 0.3]}
    if top:
        doc["parameters"] = top
    if rng.random() < 0.4:
        doc["dtype"] = rng.choice([*DTYPES, "float64"])
    if rng.random() < 0.3:
        doc["out_dtype"] = rng.choice([*DTYPES, "float64"])
    label = f"{index}-{method}-{arch}-{layers}{'-slices' if use_slices else ''}"
    if rng.random() < 0.12:
        label += "-broken-" + _break(rng, doc, method, required)
    if rng.random() < 0.1:  # the same merge, spelled as mergekit's single-module syntax
        body = {key: doc.pop(key) for key in ("models", "slices") if key in doc}
        if shared and rng.random() < 0.5:
            body["parameters"] = {p: _setting(rng, p, method, False) for p in rng.sample(shared, 1)}
        doc["modules"] = {"default": body}
    text = yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=200)
    used = {name: depth for name, depth in depths.items() if f"MODEL-{name}" in text}
    for name, path in _models(rng, model_dir, method, arch, used).items():
        text = text.replace(f"MODEL-{name}", path)
    return label, text


@pytest.mark.parametrize("index", range(CASES))
def test_sweep_case_matches_mergekit(index, model_dir, tmp_path):
    label, text = draw_case(index, model_dir)
    print(f"case {label}:\n{text}")  # shown when the case fails
    try:
        mergekit_merge(text, tmp_path / "mergekit")
    except Exception:  # mergekit refuses the draw: we must refuse it too, with our own error
        with pytest.raises(MergeflowError):
            mergeflow_merge(text, tmp_path / "mergeflow")
        return
    mergeflow_merge(text, tmp_path / "mergeflow")
    assert_bit_identical(tmp_path / "mergeflow", tmp_path / "mergekit")

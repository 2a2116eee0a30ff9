"""Parity: every tensor our engine writes is bit-identical to real mergekit 0.1.5's output.

Inputs are tiny Llama-family checkpoints built locally: a base and fine-tune-like children (base
plus a small delta), so task-vector methods see realistic deltas.
"""

from __future__ import annotations

import pytest
import torch

from mergeflow.engine.errors import ConfigError
from oracle import assert_bit_identical, mergeflow_merge, mergekit_merge

pytestmark = pytest.mark.parity

GTA = "base_model: {base}\nmodels:\n  - model: {m1}\n    parameters: {{weight: 0.6, density: 0.5}}\n  - model: {m2}\n    parameters: {{weight: [0.2, 0.9], density: 0.7}}\n"

METHOD_CONFIGS = {
    "linear": "models:\n  - model: {m1}\n    parameters: {{weight: 0.3}}\n  - model: {m2}\n    parameters: {{weight: 0.5}}\n  - model: {base}\n    parameters: {{weight: 0.2}}\n",
    "linear_unnormalized": "merge_method: linear\nmodels:\n  - model: {m1}\n    parameters: {{weight: 0.7}}\n  - model: {m2}\n    parameters: {{weight: 0.4}}\nparameters: {{normalize: false}}\n",
    "slerp": "base_model: {base}\nslices:\n  - sources:\n      - model: {base}\n        layer_range: [0, 4]\n      - model: {m1}\n        layer_range: [0, 4]\nparameters:\n  t:\n    - filter: self_attn\n      value: [0, 0.5, 0.3, 0.7, 1]\n    - filter: mlp\n      value: [1, 0.5, 0.7, 0.3, 0]\n    - value: 0.5\n",
    "nuslerp": "models:\n  - model: {m1}\n    parameters: {{weight: 0.7}}\n  - model: {m2}\n    parameters: {{weight: 0.3}}\n",
    "nuslerp_base": "merge_method: nuslerp\nbase_model: {base}\nmodels:\n  - model: {m1}\n    parameters: {{weight: 0.4}}\n  - model: {m2}\n    parameters: {{weight: 0.6}}\nparameters: {{nuslerp_flatten: false, nuslerp_row_wise: true}}\n",
    "multislerp": "base_model: {base}\nmodels:\n  - model: {m1}\n    parameters: {{weight: 0.5}}\n  - model: {m2}\n    parameters: {{weight: 0.3}}\n  - model: {m3}\n    parameters: {{weight: 0.2}}\n",
    "karcher": "base_model: {base}\nmodels:\n  - model: {m1}\n  - model: {m2}\n  - model: {m3}\nparameters: {{max_iter: 5}}\n",
    "task_arithmetic": GTA + "parameters: {{lambda: 0.8}}\n",
    "ties": GTA + "parameters: {{normalize: true}}\n",
    "dare_ties": GTA + "parameters: {{int8_mask: true}}\n",
    "dare_linear": GTA,
    "breadcrumbs": GTA.replace("density: 0.5", "density: 0.8, gamma: 0.05"),
    "breadcrumbs_ties": GTA.replace("density: 0.7", "density: 0.9, gamma: 0.02"),
    "della": GTA.replace("density: 0.5", "density: 0.6, epsilon: 0.1"),
    "della_linear": GTA.replace("density: 0.7", "density: 0.5, epsilon: 0.2"),
    "sce": "base_model: {base}\nmodels:\n  - model: {m1}\n  - model: {m2}\n  - model: {m3}\nparameters: {{select_topk: 0.5}}\n",
    "ram": "base_model: {base}\nmodels:\n  - model: {m1}\n  - model: {m2}\n",
    "ramplus_tl": "base_model: {base}\nmodels:\n  - model: {m1}\n  - model: {m2}\nparameters: {{r: 0.2, alpha: 0.3}}\n",
    "model_stock": "base_model: {base}\nmodels:\n  - model: {m1}\n  - model: {m2}\n  - model: {m3}\nparameters: {{filter_wise: false}}\n",
    "nearswap": "base_model: {base}\nmodels:\n  - model: {m1}\nparameters: {{t: 0.0005}}\n",
    "arcee_fusion": "base_model: {base}\nmodels:\n  - model: {m1}\n",
    "passthrough": "slices:\n  - sources:\n      - model: {m1}\n        layer_range: [0, 3]\n  - sources:\n      - model: {m2}\n        layer_range: [1, 4]\n        parameters:\n          scale:\n            - filter: o_proj\n              value: [0.5, 1.0]\n            - value: 1.0\n",
}


def render(template: str, model_dir, name: str, **variant) -> str:
    paths = {m: model_dir(m, **variant) for m in ("base", "m1", "m2", "m3")}
    method = name.split("_unnormalized")[0].split("_base")[0]
    text = template.format(**paths)
    return text if text.startswith("merge_method") else f"merge_method: {method}\n{text}"


def check(text: str, tmp_path, threads: tuple[int | None, ...] = (None,), **options) -> None:
    """mergekit's output against mergeflow's with each ``-j`` in ``threads`` (None: the default,
    one worker per available core)."""
    mergekit_merge(text, tmp_path / "mergekit", **options)
    for count in threads:
        out = tmp_path / f"mergeflow-j{count}"
        mergeflow_merge(text, out, num_threads=count, **options)
        assert_bit_identical(out, tmp_path / "mergekit")


@pytest.mark.parametrize("name", sorted(METHOD_CONFIGS))
def test_method_bf16(name, model_dir, tmp_path):
    """Also with one worker and with three: merging tensors concurrently changes no bit, and the
    random methods still draw their masks in mergekit's order."""
    check(render(METHOD_CONFIGS[name], model_dir, name, dtype=torch.bfloat16), tmp_path, threads=(1, 3))


@pytest.mark.parametrize("name", ["linear", "slerp", "ties", "dare_ties", "della", "karcher", "multislerp", "sce", "ram", "model_stock", "breadcrumbs"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_method_other_dtypes(name, dtype, model_dir, tmp_path):
    check(render(METHOD_CONFIGS[name], model_dir, name, dtype=dtype), tmp_path)


@pytest.mark.parametrize("name", ["dare_ties", "della_linear", "linear"])
def test_more_than_ten_layers_visits_tensors_in_lexicographic_order(name, model_dir, tmp_path):
    check(render(METHOD_CONFIGS[name], model_dir, name, layers=12), tmp_path, threads=(None, 4))


def test_dtype_upcast_and_out_dtype(model_dir, tmp_path):
    text = render(METHOD_CONFIGS["ties"], model_dir, "ties", dtype=torch.bfloat16)
    check(text + "dtype: float32\nout_dtype: bfloat16\n", tmp_path)


@pytest.mark.parametrize("name", ["linear", "task_arithmetic", "slerp"])
def test_tied_embeddings(name, model_dir, tmp_path):
    check(render(METHOD_CONFIGS[name], model_dir, name, tied=True), tmp_path)


def test_tied_and_untied_models_mix(model_dir, tmp_path):
    """A tied model contributes its embedding matrix as the lm_head the others have."""
    untied = model_dir("m1")
    tied = model_dir("m2", tied=True)
    text = f"merge_method: linear\nmodels:\n  - model: {untied}\n    parameters: {{weight: 0.5}}\n  - model: {tied}\n    parameters: {{weight: 0.5}}\n"
    check(text, tmp_path)


def test_sharded_inputs_and_outputs(model_dir, tmp_path):
    text = render(METHOD_CONFIGS["dare_linear"], model_dir, "dare_linear", shard_size="40KB")
    check(text, tmp_path, out_shard_size=30_000)
    assert len(list((tmp_path / "mergeflow-jNone").glob("model-*-of-*.safetensors"))) > 1


def test_frankenmerge_overlapping_slices_and_gradients(model_dir, tmp_path):
    m1, m2 = model_dir("m1", layers=12), model_dir("m2", layers=12)
    text = (
        "merge_method: passthrough\ndtype: float16\nslices:\n"
        f"  - sources:\n      - model: {m1}\n        layer_range: [0, 8]\n"
        f"  - sources:\n      - model: {m2}\n        layer_range: [4, 12]\n"
        f"  - sources:\n      - model: {m1}\n        layer_range: [10, 12]\n"
    )
    check(text, tmp_path)


def test_slices_with_per_slice_parameters_and_base(model_dir, tmp_path):
    base, m1 = model_dir("base"), model_dir("m1")
    text = (
        f"merge_method: slerp\nbase_model: {base}\nslices:\n"
        f"  - sources:\n      - model: {base}\n        layer_range: [0, 2]\n      - model: {m1}\n        layer_range: [0, 2]\n"
        "    parameters:\n      t: [0.1, 0.9]\n"
        f"  - sources:\n      - model: {base}\n        layer_range: [2, 4]\n      - model: {m1}\n        layer_range: [2, 4]\n"
        "parameters:\n  t:\n    - filter: mlp\n      value: 0.25\n    - value: [1, 0]\n"
    )
    check(text, tmp_path)


@pytest.mark.parametrize("method", ["ties", "dare_ties", "task_arithmetic"])
@pytest.mark.parametrize("count", [6, 16])
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_many_models(method, count, dtype, model_dir, tmp_path):
    """Past 4 models the combination runs natively up to each tensor's last multiple of 64
    elements and with torch's operations after it (the embeddings of a 47-token vocabulary end
    on half a block): mergekit's bits."""
    models = "".join(
        f"  - model: {model_dir(f'm{i}', vocab=47)}\n    parameters: {{weight: {0.1 + 0.05 * i:.2f}, density: 0.6}}\n"
        for i in range(1, count + 1)
    )
    check(f"merge_method: {method}\nbase_model: {model_dir('base', vocab=47)}\nmodels:\n{models}dtype: {dtype}\n", tmp_path)


@pytest.mark.parametrize(("name", "in_ranges"), [("ties", True), ("breadcrumbs", True), ("task_arithmetic", True), ("dare_ties", False)])
def test_which_merges_read_their_inputs_in_ranges(name, in_ranges, model_dir, tmp_path, monkeypatch):
    """The deterministic task-arithmetic merges read every input tensor a range at a time, never
    whole (``merge_streamed``), with mergekit's bits; the random ones load theirs whole."""
    from mergeflow.engine import checkpoint

    whole, ranges = set(), set()
    load, read = checkpoint.Checkpoint.load, checkpoint.StoredTensor.read
    monkeypatch.setattr(checkpoint.Checkpoint, "load", lambda self, name: whole.add(name) or load(self, name))
    monkeypatch.setattr(checkpoint.StoredTensor, "read", lambda self, *span: ranges.add(self.name) or read(self, *span))
    check(render(METHOD_CONFIGS[name], model_dir, name), tmp_path)
    assert (not whole, bool(ranges)) == (in_ranges, in_ranges)


def _models(model_dir, **variant) -> dict:
    """base, m1..m3 and tied_m2 (m2 saved with tied embeddings, so without an lm_head)."""
    names = {m: model_dir(m, **variant) for m in ("base", "m1", "m2", "m3")}
    return {**names, "tied_m2": model_dir("m2", tied=True, **variant)}


def _slice(*sources: tuple[str, int, int, str]) -> str:
    body = "".join(f"      - model: {{{m}}}\n        layer_range: [{a}, {b}]\n{p}" for m, a, b, p in sources)
    return f"  - sources:\n{body}"


HALF = "        parameters: {{weight: 0.5}}\n"  # a source's weight, for linear and task_arithmetic

# Accepted by mergekit, and once merged differently by us (each found by test_parity_sweep).
EDGE_CASES = {
    # A lone input comes back as is; karcher used to rescale it by its own norm (fp16 rounding).
    "karcher_single_model": "merge_method: karcher\nmodels:\n  - model: {m1}\n",
    # The base alone is returned in its own dtype; ramplus_tl used to declare float32 and crash.
    "ramplus_tl_base_only": "merge_method: ramplus_tl\nbase_model: {base}\nmodels:\n  - model: {base}\n",
    # Per-model filters see a tied model's head as lm_head.weight, not as the embedding it reads.
    "tied_head_per_model_filter": (
        "merge_method: linear\nmodels:\n  - model: {m1}\n    parameters: {{weight: 0.4}}\n"
        "  - model: {tied_m2}\n    parameters:\n      weight:\n        - filter: lm_head\n          value: 0.9\n"
        "        - value: 0.2\n"
    ),
    # Values are read as mergekit's pydantic reads them: a bool is a float, "5.0" an int, "y" true.
    "values_spelled_loosely": (
        "merge_method: karcher\nmodels:\n  - model: {m1}\n  - model: {m2}\nparameters: {{max_iter: '3.0', tol: '1e-3'}}\n"
    ),
    "bool_weight_and_flag_letters": (
        "merge_method: linear\nmodels:\n  - model: {m1}\n    parameters: {{weight: true}}\n"
        "  - model: {m2}\n    parameters: {{weight: '0.5'}}\nparameters: {{normalize: 'n'}}\n"
    ),
    # The final weights come from the last slice: tied models there leave lm_head out, as in
    # mergekit, even when an earlier slice's model has one.
    "frankenmerge_ending_on_tied_model": "merge_method: passthrough\nslices:\n" + _slice(("m1", 0, 2, "")) + _slice(("tied_m2", 2, 4, "")),
}

# Refused by mergekit's input contract before any merging; we refuse them up front too.
REJECTED = {
    "slerp_slice_with_one_source": (
        "merge_method: slerp\nbase_model: {base}\nparameters: {{t: 0.5}}\nslices:\n"
        + _slice(("base", 0, 2, "")) + _slice(("base", 2, 4, ""), ("m1", 2, 4, "")),
        "'slices[0].sources': 'slerp' needs exactly 2 model(s) per slice counting the base (got 1)",
    ),
    "nuslerp_base_among_its_two_models": (
        "merge_method: nuslerp\nbase_model: {base}\nmodels:\n  - model: {base}\n    parameters: {{weight: 0.5}}\n"
        "  - model: {m1}\n    parameters: {{weight: 0.5}}\n",
        "'models': 'nuslerp' needs exactly 2 model(s) per slice besides the base (got 1)",
    ),
    "multislerp_base_only": (
        "merge_method: multislerp\nbase_model: {base}\nmodels:\n  - model: {base}\n    parameters: {{weight: 1}}\n",
        "'models': 'multislerp' needs at least 1 model(s) per slice besides the base (got 0)",
    ),
    "model_listed_twice": (
        "merge_method: linear\nslices:\n" + _slice(("m1", 0, 2, HALF), ("m1", 2, 4, HALF)),
        "'slices[0].sources': model {m1} is listed twice",
    ),
    "base_cut_from_the_final_weights": (
        "merge_method: task_arithmetic\nbase_model: {base}\nslices:\n"
        + _slice(("base", 0, 2, HALF)) + _slice(("m1", 2, 4, HALF), ("base", 2, 4, HALF)),
        "'slices[1].sources': the final weights (lm_head.weight, model.norm.weight) are merged from this last slice's first 1 source(s)",
    ),
}


@pytest.mark.parametrize("name", sorted(EDGE_CASES))
def test_edge_case(name, model_dir, tmp_path):
    check(EDGE_CASES[name].format(**_models(model_dir, dtype=torch.float16)), tmp_path)


@pytest.mark.parametrize("name", sorted(REJECTED))
def test_rejected_up_front_as_by_mergekit(name, model_dir, tmp_path):
    template, message = REJECTED[name]
    names = _models(model_dir)
    text = template.format(**names)
    with pytest.raises(ValueError):
        mergekit_merge(text, tmp_path / "mergekit")
    with pytest.raises(ConfigError) as raised:
        mergeflow_merge(text, tmp_path / "mergeflow")
    assert message.format(**names) in str(raised.value)
    assert not (tmp_path / "mergeflow").exists()


@pytest.mark.parametrize("name", sorted(METHOD_CONFIGS))
def test_thread_count_matches_mergekits_own(name, model_dir, tmp_path):
    """``-j 3`` against mergekit with three torch threads, on a vocabulary whose embedding is
    past torch's parallel grain (32768 elements), where a full reduction's rounding depends on
    the thread count: each worker uses as many torch threads as mergekit does."""
    text = render(METHOD_CONFIGS[name], model_dir, name, dtype=torch.bfloat16, vocab=1100)
    previous = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        mergekit_merge(text, tmp_path / "mergekit")
    finally:
        torch.set_num_threads(previous)
    mergeflow_merge(text, tmp_path / "mergeflow", num_threads=3)
    assert_bit_identical(tmp_path / "mergeflow", tmp_path / "mergekit")

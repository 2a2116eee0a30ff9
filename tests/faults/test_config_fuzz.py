"""Property: whatever the config, parsing and planning end in a plan or in one line naming the
problem (a MergeflowError), never in another exception. Random documents and mutations of valid
configs (a value replaced by one of another type, a key dropped or added) are thrown at the
parser, the planner and the value checks."""

from __future__ import annotations

import logging

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mergeflow.engine.checkpoint import Checkpoint
from mergeflow.engine.errors import MergeflowError
from mergeflow.engine.plan import build_plan
from mergeflow.engine.ranges import check_values
from mergeflow.engine.references import resolve_model
from mergeflow.engine.validate import check_config

KEYS = ["merge_method", "models", "model", "slices", "sources", "layer_range", "base_model", "parameters",
        "weight", "density", "t", "filter", "value", "dtype", "out_dtype", "normalize", "epsilon", "modules",
        "default", "path", "revision", "lambda", "select_topk", "scale"]
METHODS = ["linear", "slerp", "ties", "dare_ties", "della", "task_arithmetic", "passthrough", "nuslerp",
           "model_stock", "breadcrumbs", "sce", "karcher", "multislerp", "nearswap", "arcee_fusion", "ram"]


def _seeds(models) -> list[dict]:
    base, m1, m2 = (str(models[n]) for n in ("base", "m1", "m2"))
    return [
        {"merge_method": "linear", "models": [{"model": m1, "parameters": {"weight": 0.5}}, {"model": m2, "parameters": {"weight": 0.5}}], "dtype": "float16"},
        {"merge_method": "dare_ties", "base_model": base, "parameters": {"normalize": True},
         "models": [{"model": m1, "parameters": {"weight": [0.2, 0.8], "density": 0.5}}, {"model": m2, "parameters": {"weight": 0.5, "density": {"filter": "mlp", "value": 0.7}}}]},
        {"merge_method": "slerp", "base_model": base, "parameters": {"t": [{"filter": "self_attn", "value": [0, 1]}, {"value": 0.5}]},
         "slices": [{"sources": [{"model": base, "layer_range": [0, 2]}, {"model": m1, "layer_range": [0, 2]}]}]},
        {"merge_method": "passthrough", "slices": [{"sources": [{"model": m1, "layer_range": [0, 1]}]}, {"sources": [{"model": m2, "layer_range": [1, 2]}]}]},
        {"merge_method": "della", "base_model": {"path": base}, "modules": {"default": {"models": [{"model": m1, "parameters": {"weight": 1, "density": 0.5, "epsilon": 0.1}}]}}},
    ]


scalars = (
    st.none() | st.booleans() | st.integers(-3, 40) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=6) | st.sampled_from(METHODS + KEYS + ["bfloat16", "float32", "*", "", "x@y", "a/b", "mlp"])
)
junk = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS) | st.integers(0, 3) | st.text(max_size=3), inner, max_size=3),
    max_leaves=8,
)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _paths(value, (*prefix, i))


def _mutate(doc, data):
    for _ in range(data.draw(st.integers(1, 3))):
        paths = list(_paths(doc))
        path = data.draw(st.sampled_from(paths))
        action = data.draw(st.sampled_from(["replace", "drop", "add"]))
        if not path:
            doc = data.draw(junk) if action == "replace" else doc
            continue
        parent = doc
        for step in path[:-1]:
            parent = parent[step]
        if action == "replace":
            parent[path[-1]] = data.draw(junk)
        elif action == "drop":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[data.draw(st.sampled_from(KEYS))] = data.draw(junk)
        else:
            parent.append(data.draw(junk))
    return doc


@pytest.fixture(scope="module")
def checkpoint_cache():
    return {}


def _plan(text: str, cache: dict) -> None:
    config, method = check_config(text)
    checkpoints = {}
    for ref in config.referenced_models():
        path = resolve_model(ref)
        if path not in cache:
            cache[path] = Checkpoint(path, str(ref))
        checkpoints[ref] = cache[path]
    plan = build_plan(config, method, checkpoints, False, False)
    check_values(config, method, plan)
    config.canonical_sha256  # what provenance records at the end of a merge


def _one_line_or_plan(text: str, cache: dict) -> None:
    try:
        _plan(text, cache)
    except MergeflowError as err:
        assert "\n" not in str(err) and str(err), repr(str(err))


SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


@SETTINGS
@given(data=st.data())
def test_mutated_configs_plan_or_fail_in_one_line(models, checkpoint_cache, data):
    logging.getLogger("mergeflow").setLevel(logging.ERROR)
    doc = _mutate(data.draw(st.sampled_from(_seeds(models))), data)
    _one_line_or_plan(yaml.safe_dump(doc, allow_unicode=True), checkpoint_cache)


@SETTINGS
@given(text=st.text(max_size=80) | junk.map(lambda doc: yaml.safe_dump(doc, allow_unicode=True)))
def test_random_documents_fail_in_one_line(checkpoint_cache, text):
    _one_line_or_plan(text, checkpoint_cache)

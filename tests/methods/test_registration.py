import pytest
import torch

import mergeflow.methods as methods
from mergeflow.methods import Param, Scope, get_method, method_names

G, M, I = Scope.GLOBAL, Scope.MODEL, Scope.INPUT
GTA_COMMON = {"weight": (float, M, None, True), "density": (float, M, 1.0, False)}


def gta(normalize, rescale, **extra):
    return {
        **GTA_COMMON,
        **extra,
        "int8_mask": (bool, G, False, False),
        "normalize": (bool, G, normalize, False),
        "rescale": (bool, G, rescale, False),
        "lambda": (float, G, 1.0, False),
    }


GAMMA = {"gamma": (float, M, 0.01, False)}
EPSILON = {"epsilon": (float, M, 0.15, False)}
# name -> (requires_base, {param: (kind, scope, default, required)})
EXPECTED = {
    "linear": (False, {"weight": (float, I, None, True), "normalize": (bool, G, True, False)}),
    "slerp": (True, {"t": (float, G, None, True)}),
    "nuslerp": (
        False,
        {
            "weight": (float, M, None, True),
            "nuslerp_flatten": (bool, G, True, False),
            "nuslerp_row_wise": (bool, G, False, False),
        },
    ),
    "multislerp": (
        False,
        {
            "weight": (float, M, None, True),
            "normalize_weights": (bool, G, True, False),
            "eps": (float, G, 1e-8, False),
        },
    ),
    "karcher": (False, {"max_iter": (int, G, 10, False), "tol": (float, G, 1e-5, False)}),
    "task_arithmetic": (True, gta(False, False)),
    "ties": (True, gta(True, False)),
    "dare_ties": (True, gta(False, True)),
    "dare_linear": (True, gta(False, True)),
    "breadcrumbs": (True, gta(False, False, **GAMMA)),
    "breadcrumbs_ties": (True, gta(False, False, **GAMMA)),
    "della": (True, gta(True, True, **EPSILON)),
    "della_linear": (True, gta(False, True, **EPSILON)),
    "sce": (
        True,
        {"int8_mask": (bool, G, False, False), "select_topk": (float, G, 1.0, False)},
    ),
    "ram": (True, {"epsilon": (float, G, 1e-5, False)}),
    "ramplus_tl": (
        True,
        {
            "epsilon": (float, G, 1e-5, False),
            "r": (float, G, 0.1, False),
            "alpha": (float, G, 0.2, False),
        },
    ),
    "model_stock": (True, {"filter_wise": (bool, G, False, False)}),
    "nearswap": (True, {"t": (float, G, None, True)}),
    "arcee_fusion": (True, {}),
    "passthrough": (False, {"scale": (float, I, None, False)}),
}


def test_exactly_the_twenty_mergekit_methods():
    assert method_names() == sorted(EXPECTED)
    assert len(method_names()) == 20


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_parameters_and_base(name):
    spec = get_method(name)
    requires_base, params = EXPECTED[name]
    assert spec.name == name
    assert spec.requires_base is requires_base
    assert spec.pretty_name
    assert {p.name: (p.kind, p.scope, p.default, p.required) for p in spec.params} == params


def test_float32_promoting_methods_declare_it():
    for name in method_names():
        expected = torch.float32 if name in ("arcee_fusion", "ramplus_tl") else torch.bfloat16
        assert get_method(name).result_dtype(torch.bfloat16) == expected
    assert get_method("model_stock").min_inputs == 3


def test_input_count_limits():
    """mergekit 0.1.5's per-slice input contract: (min, max) models counting the base, and
    (min, max) besides the base; every other method takes (1, None) and (0, None)."""
    contracts = {
        name: ((spec.min_inputs, spec.max_inputs), (spec.min_others, spec.max_others))
        for name in method_names()
        if ((spec := get_method(name)).min_inputs, spec.max_inputs, spec.min_others, spec.max_others) != (1, None, 0, None)
    }
    assert contracts == {
        "passthrough": ((1, 1), (0, None)),
        "slerp": ((2, 2), (0, None)),
        "nearswap": ((2, 2), (0, None)),
        "arcee_fusion": ((2, 2), (0, None)),
        "model_stock": ((3, None), (0, None)),
        "nuslerp": ((1, None), (2, 2)),
        "multislerp": ((1, None), (1, None)),
    }


def test_a_lone_input_keeps_its_dtype():
    for name in ("arcee_fusion", "ramplus_tl"):
        assert get_method(name).output_dtype(torch.bfloat16, 2) == torch.float32
        assert get_method(name).output_dtype(torch.bfloat16, 1) == torch.bfloat16


def test_paper_links():
    assert get_method("ties").reference_url == "https://arxiv.org/abs/2306.01708"
    assert get_method("dare_ties").reference_url == "https://arxiv.org/abs/2311.03099"
    assert get_method("model_stock").reference_url == "https://arxiv.org/abs/2403.19522"
    assert get_method("della").reference_url == "https://arxiv.org/abs/2406.11617"


def test_package_reexports_the_interface():
    assert set(methods.__all__) == {
        "get_method",
        "method_names",
        "MergeInputs",
        "MethodSpec",
        "Param",
        "Scope",
    }
    assert methods.Param is Param


def test_unknown_method_lists_the_known_ones():
    with pytest.raises(KeyError, match="known methods: arcee_fusion, breadcrumbs"):
        get_method("dare")

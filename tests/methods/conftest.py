"""A fixture that runs a registered method the way the engine would: defaults filled in from the
method's declared parameters, MODEL-scope ones only for the non-base inputs."""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import pytest
import torch

from mergeflow.methods import MergeInputs, Scope, get_method


def build_inputs(
    method: str,
    tensors: Sequence[torch.Tensor],
    base_index: int | None = None,
    params: Mapping[str, Any] | None = None,
    model_params: Sequence[Mapping[str, Any]] | None = None,
    tensor_name: str = "model.layers.0.mlp.up_proj.weight",
) -> MergeInputs:
    spec = get_method(method)
    model_params = model_params or [{} for _ in tensors]
    resolved = []
    for i, given in enumerate(model_params):
        scopes = (Scope.INPUT,) if i == base_index else (Scope.INPUT, Scope.MODEL)
        resolved.append({p.name: given.get(p.name, p.default) for p in spec.params_in(*scopes)})
    global_params = {p.name: p.default for p in spec.params_in(Scope.GLOBAL)}
    global_params.update(params or {})
    return MergeInputs(
        tensors=tuple(tensors),
        base_index=base_index,
        params=global_params,
        model_params=tuple(resolved),
        tensor_name=tensor_name,
    )


@pytest.fixture
def inputs_of() -> Callable[..., MergeInputs]:
    """:func:`build_inputs`, for tests that call a method's functions themselves."""
    return build_inputs


@pytest.fixture
def merge() -> Callable[..., torch.Tensor]:
    """``merge(method, tensors, base_index=..., params=..., model_params=...)`` -> result, with
    the declared result dtype checked on every call."""

    def run(method: str, tensors: Sequence[torch.Tensor], **kwargs: Any) -> torch.Tensor:
        spec = get_method(method)
        result = spec.merge(build_inputs(method, tensors, **kwargs))
        assert result.dtype == spec.output_dtype(tensors[0].dtype, len(tensors))
        return result

    return run


@pytest.fixture(params=[1, 3], ids=["1-thread", "3-threads"])
def torch_threads(request) -> int:
    """torch's thread count for the test, restored after: native kernels split their work among
    that many threads, which must not change a bit."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)

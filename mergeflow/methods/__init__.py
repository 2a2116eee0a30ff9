"""Merge methods. Importing this package registers all of them with the registry."""

from . import (  # noqa: F401  (imported for their registration side effect)
    arcee_fusion,
    karcher,
    linear,
    model_stock,
    nearswap,
    passthrough,
    ram,
    sce,
    spherical,
    task_arithmetic,
)
from .registry import MergeInputs, MethodSpec, Param, Scope, get_method, method_names

__all__ = ["MergeInputs", "MethodSpec", "Param", "Scope", "get_method", "method_names"]

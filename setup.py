"""The optional native kernel; everything else is declared in pyproject.toml.

``optional=True``: without a C compiler or Python headers the install still succeeds, and the
exact sparsifiers fall back to torch's own sort and the task-arithmetic family's per-element
passes to torch's operations (same bits, slower).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "mergeflow.methods._introsort",
            ["mergeflow/methods/_introsort.c"],
            extra_compile_args=["-O3"],
            optional=True,
        ),
        Extension(
            "mergeflow.methods._elementwise",
            ["mergeflow/methods/_elementwise.c"],
            # torch rounds every product before it is summed: no fused multiply-adds
            extra_compile_args=["-O3", "-ffp-contract=off"],
            optional=True,
        ),
    ]
)

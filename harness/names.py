"""The names the harness's registries hold, importable without torch: datasets, architectures, methods.

The registries themselves (`harness.data`'s dataset builders, `harness.models.ARCHS`,
`harness.sparse.METHODS`) import torch; config validation, the CLI's help and `analysis` need only the
names, and must start in milliseconds. So the names are listed once here, in registry order, and a test
(tests/test_names.py) holds each list equal to its registry.
"""

from __future__ import annotations

from collections.abc import Iterable

METHODS = (  # harness.sparse.METHODS
    "dense",
    "static",
    "gmp",
    "gmp-layerwise",
    "granet",
    "rigl",
    "set",
    "snip",
    "grasp",
    "synflow",
    "mest",
    "acdc",
)
# Methods whose initial sparsity s_i is a setting of its own (gradual magnitude pruning from s_i, the
# GradualMagnitude family); for the others s_i is fixed by the method (dense: 0; static, RigL, SET: the final
# sparsity).
GRADUAL_METHODS = ("gmp", "gmp-layerwise", "granet")


def choices(names: Iterable[str]) -> str:
    """`a | b | c`: the valid values in a command's help."""
    return " | ".join(names)

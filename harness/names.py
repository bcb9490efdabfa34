"""The names the harness's registries hold, importable without torch: datasets and architectures.

The registries themselves (`harness.data`'s dataset builders, `harness.models.ARCHS`) import torch; config
validation, the CLI's help and `analysis` need only the names, and must start in milliseconds. So the names
are listed once here, in registry order, and a test (tests/test_names.py) holds each list equal to its
registry. The method names come from their own registry, which is torch-free
(`harness.sparse.methods.registry.METHODS`).
"""

from __future__ import annotations

from collections.abc import Iterable


def choices(names: Iterable[str]) -> str:
    """`a | b | c`: the valid values in a command's help."""
    return " | ".join(names)

"""The method zoo (SPEC section 6): one module per method or tight family on the shared base (`base`),
and the registry of their names (`registry`).

Each method's class holds its settings next to its scores and its paper; see `base` for how to use a
method in any training loop and docs/methods.md for adding one. The names below are read lazily, so that
importing a method module for its settings (the config does) does not import the whole zoo.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from harness.sparse.methods.base import LayerUpdate, MaskUpdate, MethodSettings, SparsityMethod
    from harness.sparse.methods.registry import METHODS, build_method, method_class

_EXPORTS = {
    "LayerUpdate": "base",
    "MaskUpdate": "base",
    "MethodSettings": "base",
    "SparsityMethod": "base",
    "METHODS": "registry",
    "build_method": "registry",
    "method_class": "registry",
}
__all__ = [
    "LayerUpdate",
    "METHODS",
    "MaskUpdate",
    "MethodSettings",
    "SparsityMethod",
    "build_method",
    "method_class",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)

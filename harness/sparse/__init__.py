"""The sparse-training core: masks, distributions, schedules, criteria and methods.

Knows nothing of configs, the CLI, files or W&B: it takes a model, an optimizer and numbers, and
returns masks. See `harness.sparse.methods.base` for how to drop it into any training loop.

The names below are imported on first use (PEP 562): the method modules, which the config imports for
their settings in processes that never train, live in this package, and importing them must not import
torch through this file.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from harness.sparse.masks import MaskError, MaskSet, sparsifiable_weights
    from harness.sparse.methods.base import LayerUpdate, MaskUpdate, MethodSettings, SparsityMethod
    from harness.sparse.methods.registry import METHODS, build_method, method_class
    from harness.sparse.oneshot import PRUNING_CRITERIA, PruneResult, prune_fraction, regrow
    from harness.sparse.scores import ScoringInputs

_EXPORTS = {
    "MaskError": "masks",
    "MaskSet": "masks",
    "sparsifiable_weights": "masks",
    "LayerUpdate": "methods.base",
    "MaskUpdate": "methods.base",
    "MethodSettings": "methods.base",
    "SparsityMethod": "methods.base",
    "METHODS": "methods.registry",
    "build_method": "methods.registry",
    "method_class": "methods.registry",
    "PRUNING_CRITERIA": "oneshot",
    "PruneResult": "oneshot",
    "prune_fraction": "oneshot",
    "regrow": "oneshot",
    "ScoringInputs": "scores",
}
__all__ = [
    "LayerUpdate",
    "METHODS",
    "MaskError",
    "MaskSet",
    "MaskUpdate",
    "MethodSettings",
    "PRUNING_CRITERIA",
    "PruneResult",
    "ScoringInputs",
    "SparsityMethod",
    "build_method",
    "method_class",
    "prune_fraction",
    "regrow",
    "sparsifiable_weights",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)

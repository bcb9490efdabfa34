"""The sparse-training core: masks, distributions, schedules, criteria and methods.

Knows nothing of configs, the CLI, files or W&B: it takes a model, an optimizer and numbers, and
returns masks. See `harness.sparse.methods` for how to drop it into any training loop.
"""

from harness.sparse.masks import MaskError, MaskSet, sparsifiable_weights
from harness.sparse.methods import (
    METHODS,
    Hyperparameters,
    LayerUpdate,
    MaskUpdate,
    SparsityMethod,
    UnknownMethodError,
    build_method,
)
from harness.sparse.oneshot import PRUNING_CRITERIA, PruneResult, prune_fraction, regrow
from harness.sparse.scores import ScoringInputs

__all__ = [
    "METHODS",
    "PRUNING_CRITERIA",
    "Hyperparameters",
    "LayerUpdate",
    "MaskError",
    "MaskSet",
    "MaskUpdate",
    "PruneResult",
    "ScoringInputs",
    "SparsityMethod",
    "UnknownMethodError",
    "build_method",
    "prune_fraction",
    "regrow",
    "sparsifiable_weights",
]

"""A sparsity method of your own, with a setting of its own: one class in one file.

Gradual magnitude pruning whose pruning keeps the weights that are large *or still moving*: the prune score
is |w| + sensitivity * |g| (g the gradient of the last mini-batch) instead of |w|. It reuses GMP's cubic
schedule and global top-k, and adds one setting to GMP's.

Run it as a plug-in, with this folder importable (no change to the package):

    PYTHONPATH=examples/methods harness run sensitive_gmp:SensitiveGMP --dataset mnist1d --set sparsity.sensitivity=0.5

or make it a built-in name: move this file to harness/sparse/methods/ and add its line to the registry
(docs/methods.md, "Adding a method", shows the diff).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from harness.sparse.methods.gmp import GradualMagnitude

if TYPE_CHECKING:
    from torch import Tensor


class SensitiveGMP(GradualMagnitude):
    """GMP (Zhu & Gupta 2017) pruning by |w| + sensitivity * |g|: a small weight that still moves survives."""

    name = "sensitive-gmp"
    reference = (
        "an example for docs/methods.md; the score is MEST's drop score (Yuan et al. 2021) used to prune"
    )

    class Settings(GradualMagnitude.Settings):
        sensitivity: float = Field(1.0, ge=0)  # weight of |g| in the prune score; 0 is plain GMP

    def prune_scores(self) -> list[Tensor]:
        missing = [
            name
            for name, weight in zip(self.masks.names, self.masks.weights, strict=True)
            if weight.grad is None
        ]
        if missing:
            raise RuntimeError(f"{self.name} prunes by the gradient; none for {missing}")
        return [
            weight.detach().abs() + self.settings.sensitivity * weight.grad.detach().abs()
            for weight in self.masks.weights
        ]

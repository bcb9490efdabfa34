"""MEST (Yuan et al. 2021): SET whose drop score counts how much a weight still moves, not only its size."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from harness.sparse.methods.set import SET, SETSettings

if TYPE_CHECKING:
    from torch import Tensor


class MESTSettings(SETSettings):
    mest_lambda: float = Field(1.0, ge=0)  # drop score |w| + lambda * |g|


class MEST(SET):
    """MEST+EM (Yuan et al. 2021), without the soft memory bound and data-efficiency parts: SET's ERK start,
    schedule and random regrowth, but the drop removes the lowest |w| + lambda * |g| (the dense gradient of
    the last mini-batch), so weights that are small but still moving survive."""

    name = "mest"
    reference = "Yuan et al., MEST: Accurate and Fast Memory-Economic Sparse Training Framework on the Edge, NeurIPS 2021"
    Settings = MESTSettings

    def drop_scores(self) -> list[Tensor]:
        missing = [
            name
            for name, weight in zip(self.masks.names, self.masks.weights, strict=True)
            if weight.grad is None
        ]
        if missing:
            raise RuntimeError(
                f"MEST's drop score needs the gradient of every masked tensor; none for {missing}"
            )
        return [
            weight.detach().abs() + self.settings.mest_lambda * weight.grad.detach().abs()
            for weight in self.masks.weights
        ]

    def reads_dense_gradient(self) -> bool:
        return True

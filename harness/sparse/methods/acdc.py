"""AC/DC (Peste et al. 2021): compressed (sparse) and decompressed (dense) phases in alternation."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import Field, model_validator

from harness.sparse.lazy import lazy_module
from harness.sparse.methods.base import MaskUpdate, SparseSettings, SparsityMethod, TimePoint

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_module("torch")


class ACDCSettings(SparseSettings):
    acdc_warmup: TimePoint = Field(0.1, gt=0, lt=1)  # the dense warm-up
    acdc_phase: TimePoint = Field(0.05, gt=0, le=1)  # each compressed or decompressed phase
    acdc_final: TimePoint = Field(0.15, ge=0, lt=1)  # the final compressed phase

    @model_validator(mode="after")
    def _fits(self) -> ACDCSettings:
        if self.acdc_warmup + self.acdc_final > 1:
            raise ValueError(
                f"acdc_warmup + acdc_final ({self.acdc_warmup} + {self.acdc_final}) must not exceed the run (1)"
            )
        return self


class ACDC(SparsityMethod):
    """AC/DC (Peste et al. 2021): a dense warm-up, then compressed phases (global magnitude top-k at the
    final density, fixed) alternating with decompressed (dense) ones, ending with a longer compressed phase.

    A phase change happens after the step at its boundary. Decompression re-activates every weight at
    the value 0 it was held at (its optimizer state is 0 as well), as in the paper.
    """

    name = "acdc"
    reference = "Peste et al., AC/DC: Alternating Compressed/DeCompressed Training of Deep Neural Networks, NeurIPS 2021"
    Settings = ACDCSettings

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.warmup_end = max(1, self.step_of(self.settings.acdc_warmup))
        self.phase = max(1, self.step_of(self.settings.acdc_phase))
        self.final_start = max(self.warmup_end, self.total_steps - self.step_of(self.settings.acdc_final))

    def compressed(self, t: int) -> bool:
        """Whether the steps after step t train the compressed (sparse) network."""
        if t < self.warmup_end:
            return False
        if t >= self.final_start:
            return True
        return (t - self.warmup_end) // self.phase % 2 == 0

    def target_density(self, t: int) -> float:
        return 1.0 - self.settings.sparsity if self.compressed(t) else 1.0

    def is_update_step(self, t: int) -> bool:
        return self.compressed(t) != self.compressed(t - 1)

    def update(self, t: int) -> MaskUpdate:
        target = self.target_density(t)
        if target < 1.0:
            pruned = self.prune_to(target)
            layers, counts = self._layers(pruned=pruned)
        else:
            before = self.masks.active_counts()
            self.masks.set([torch.ones_like(mask) for mask in self.masks.masks])
            grown = [numel - active for numel, active in zip(self.masks.numels, before, strict=True)]
            layers, counts = self._layers(grown=grown)
        return self._event(t, target, None, layers, counts)

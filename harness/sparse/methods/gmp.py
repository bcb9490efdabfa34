"""Gradual magnitude pruning (Zhu & Gupta 2017): a cubic sparsity schedule, magnitude pruning at each event."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from harness.sparse.methods.base import MaskUpdate, RandomMaskSettings, SparsityMethod, TimePoint
from harness.sparse.schedules import CubicSparsity


class GradualSettings(RandomMaskSettings):
    init_sparsity: float = Field(0.0, ge=0, lt=1)  # s_i; above 0 the run starts from a random mask
    update_frequency: int = Field(1000, ge=1)  # dT, in optimizer steps
    prune_start: TimePoint = Field(0.0, ge=0, le=1)  # t_0
    prune_end: TimePoint = Field(0.5, ge=0, le=1)  # t_e (the paper's epoch 80 of 160)

    @model_validator(mode="after")
    def _ordered(self) -> GradualSettings:
        if self.init_sparsity > self.sparsity:
            raise ValueError(
                f"init_sparsity ({self.init_sparsity}) must not exceed the final sparsity ({self.sparsity})"
            )
        if self.prune_end < self.prune_start:
            raise ValueError(
                f"prune_end ({self.prune_end}) must not precede prune_start ({self.prune_start})"
            )
        return self


class GradualMagnitude(SparsityMethod):
    """GMP (Zhu & Gupta 2017): cubic schedule from s_i to s_f, global magnitude pruning at each event."""

    name = "gmp"
    reference = "Zhu & Gupta, To prune, or not to prune, 2017"
    Settings = GradualSettings
    layerwise = False

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        start = self.step_of(self.settings.prune_start)
        end = min(max(self.step_of(self.settings.prune_end), 1, start), self.total_steps)
        self.schedule = CubicSparsity(
            initial=self.settings.init_sparsity,
            final=self.settings.sparsity,
            start=start,
            end=end,
            every=self.settings.update_frequency,
        )

    def initial_density(self) -> float:
        return 1.0 - self.settings.init_sparsity

    def target_density(self, t: int) -> float:
        return 1.0 - self.schedule.sparsity(t)

    def is_update_step(self, t: int) -> bool:
        return self.schedule.is_event(t)

    def update(self, t: int) -> MaskUpdate:
        target = self.target_density(t)
        pruned = self.prune_to(target, layerwise=self.layerwise)
        layers, counts = self._layers(pruned=pruned)
        return self._event(t, target, None, layers, counts)


class GradualMagnitudeLayerwise(GradualMagnitude):
    """GMP keeping the top (1 - s(t)) fraction of every layer instead of a global threshold."""

    name = "gmp-layerwise"
    layerwise = True

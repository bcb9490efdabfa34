"""GraNet (Liu et al. 2021): gradual magnitude pruning with zero-cost neuroregeneration at every event."""

from __future__ import annotations

from typing import Any, Literal

from harness.sparse.methods.base import MaskUpdate, RegenerationSettings
from harness.sparse.methods.gmp import GradualMagnitude, GradualSettings
from harness.sparse.schedules import CosineRate


class GraNetSettings(GradualSettings, RegenerationSettings):
    # "end": regenerate every dT until the end of training (the authors' code); "prune_end": stop at t_e.
    regen_until: Literal["end", "prune_end"] = "end"


class GraNet(GradualMagnitude):
    """GraNet (Liu et al. 2021): GMP's global pruning, then zero-cost neuroregeneration at every event.

    After t_e the topology keeps being regenerated every dT until the end of training (the authors'
    behaviour; `regen_until="prune_end"` stops at t_e instead). s_i = 0 starts dense; s_i > 0 starts
    from an ERK mask at density 1 - s_i.
    """

    name = "granet"
    reference = (
        "Liu et al., Sparse Training via Boosting Pruning Plasticity with Neuroregeneration, NeurIPS 2021"
    )
    Settings = GraNetSettings

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.rate = CosineRate(self.settings.regen_rate, self.settings.regen_rate_min, self.total_steps)

    def is_update_step(self, t: int) -> bool:
        if self.schedule.is_event(t):
            return True
        return (
            self.settings.regen_until == "end"
            and self.schedule.end < t < self.total_steps
            and t % self.settings.update_frequency == 0
        )

    def update(self, t: int) -> MaskUpdate:
        target = self.target_density(t)
        pruned = self.prune_to(target) if self.schedule.is_event(t) else None
        rate = self.rate(t)
        # Regrowing at the very last step would add weights that never train.
        dropped, grown = self.regenerate(rate) if t < self.total_steps else (None, None)
        layers, counts = self._layers(pruned=pruned, dropped=dropped, grown=grown)
        return self._event(t, target, rate, layers, counts)

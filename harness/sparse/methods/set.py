"""SET (Mocanu et al. 2018) and RigL (Evci et al. 2020): a fixed density, the topology regenerated every dT."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from harness.sparse.methods.base import (
    MaskUpdate,
    RandomMaskSettings,
    RegenerationSettings,
    SparsityMethod,
    TimePoint,
)
from harness.sparse.schedules import CosineRate


class SETSettings(RandomMaskSettings, RegenerationSettings):
    update_frequency: int = Field(1000, ge=1)  # dT, in optimizer steps
    update_until: TimePoint = Field(1.0, gt=0, le=1)  # the last point that may update the topology


class SET(SparsityMethod):
    """SET (Mocanu et al. 2018): fixed density from an ERK start; every dT drop by magnitude, grow at random."""

    name = "set"
    reference = "Mocanu et al., Scalable training of artificial neural networks with adaptive sparse connectivity, 2018"
    Settings = SETSettings
    default_growth = "random"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.last_update = self.step_of(self.settings.update_until)
        self.rate = CosineRate(self.settings.regen_rate, self.settings.regen_rate_min, self.last_update)

    def initial_density(self) -> float:
        return 1.0 - self.settings.sparsity

    def is_update_step(self, t: int) -> bool:
        # Never at the very last step: regrown weights would never train.
        return t % self.settings.update_frequency == 0 and t <= self.last_update and t < self.total_steps

    def update(self, t: int) -> MaskUpdate:
        rate = self.rate(t)
        dropped, grown = self.regenerate(rate)
        layers, counts = self._layers(dropped=dropped, grown=grown)
        return self._event(t, self.initial_density(), rate, layers, counts)


class RigL(SET):
    """RigL (Evci et al. 2020): SET with regrowth by the largest dense-gradient magnitudes."""

    name = "rigl"
    reference = "Evci et al., Rigging the Lottery: Making All Tickets Winners, ICML 2020"
    default_growth = "gradient"

"""Schedules in optimizer steps: gradual sparsity (SPEC section 4) and the regeneration rate (section 5).

`t` always counts optimizer steps already taken; the sparsifier runs right after each step, so t >= 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class CubicSparsity:
    """Zhu & Gupta (2017): s(t) = s_f + (s_i - s_f) * (1 - (t - t_0) / (t_e - t_0))^3 on [t_0, t_e].

    Events fall at multiples of `every` inside [t_0, t_e], plus one at t_e when t_e is not a multiple,
    so that s_f is reached exactly at t_e (the authors' code stops one event short; we do not).
    """

    initial: float
    final: float
    start: int
    end: int
    every: int

    def __post_init__(self) -> None:
        if not (0 <= self.start <= self.end and self.end >= 1 and self.every >= 1):
            raise ValueError(f"need 0 <= start <= end, end >= 1 and every >= 1; got {self}")

    def sparsity(self, t: int) -> float:
        # The end is checked first: when start == end (one-shot pruning) the only event must reach s_f.
        if t >= self.end:
            return self.final
        if t <= self.start:
            return self.initial
        remaining = 1.0 - (t - self.start) / (self.end - self.start)
        return self.final + (self.initial - self.final) * remaining**3

    def is_event(self, t: int) -> bool:
        return t >= 1 and self.start <= t <= self.end and (t % self.every == 0 or t == self.end)

    def events(self) -> list[int]:
        return [t for t in range(max(self.start, 1), self.end + 1) if self.is_event(t)]


@dataclass(frozen=True)
class CosineRate:
    """r(t) = r_min + (r_0 - r_min) * (1 + cos(pi * t / T)) / 2, held at r_min after T."""

    initial: float
    minimum: float
    horizon: int

    def __call__(self, t: int) -> float:
        progress = min(max(t / self.horizon, 0.0), 1.0) if self.horizon > 0 else 1.0
        return self.minimum + (self.initial - self.minimum) * (1.0 + math.cos(math.pi * progress)) / 2.0

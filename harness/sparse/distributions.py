"""Layer-wise density distributions: uniform, ER and ERK (SPEC section 3).

Given the shapes of the masked tensors and a global density d, each layer l gets a density
d_l = eps * score_l (capped at 1), with eps solved so that sum_l d_l * n_l = d * sum_l n_l:

- uniform: score_l = 1
- ER (Erdős–Rényi, Mocanu et al. 2018): score_l = (n_in + n_out) / (n_in * n_out), channels only
- ERK (ER-Kernel, Evci et al. 2020): score_l = (sum of all dims) / (product of all dims), to a power

Layers whose density would exceed 1 are made dense and eps is solved again without them. Removing a
layer can only raise eps, so removing every offender at once gives the same answer as removing them one
by one. Exact counts then follow by largest remainder so that they sum to exactly round(d * N).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

DISTRIBUTIONS = ("uniform", "er", "erk")


def raw_scores(shapes: Sequence[Sequence[int]], kind: str, power: float = 1.0) -> list[float]:
    if kind == "uniform":
        return [1.0 for _ in shapes]
    if kind == "er":
        return [(shape[0] + shape[1]) / (shape[0] * shape[1]) for shape in shapes]
    if kind == "erk":
        return [(sum(shape) / math.prod(shape)) ** power for shape in shapes]
    raise ValueError(f"unknown distribution {kind!r}; valid: {', '.join(DISTRIBUTIONS)}")


def layer_densities(
    shapes: Sequence[Sequence[int]], density: float, kind: str = "erk", power: float = 1.0
) -> list[float]:
    """Per-layer densities in [0, 1] whose weighted mean (by size) is `density`."""
    if not 0.0 <= density <= 1.0:
        raise ValueError(f"density must be in [0, 1], got {density}")
    sizes = [math.prod(shape) for shape in shapes]
    scores = raw_scores(shapes, kind, power)
    target = density * sum(sizes)
    dense: set[int] = set()
    while True:
        budget = target - sum(sizes[index] for index in dense)
        weight = sum(scores[index] * sizes[index] for index in range(len(sizes)) if index not in dense)
        epsilon = budget / weight if weight > 0 else 0.0
        overflowing = {
            index for index in range(len(sizes)) if index not in dense and epsilon * scores[index] > 1.0
        }
        if not overflowing:
            break
        dense |= overflowing
    return [1.0 if index in dense else epsilon * scores[index] for index in range(len(sizes))]


def layer_counts(
    shapes: Sequence[Sequence[int]], density: float, kind: str = "erk", power: float = 1.0
) -> list[int]:
    """Exact active counts per layer: sum is round(density * N), each within one weight of d_l * n_l."""
    sizes = [math.prod(shape) for shape in shapes]
    ideal = [
        share * size for share, size in zip(layer_densities(shapes, density, kind, power), sizes, strict=True)
    ]
    return apportion(ideal, sizes, round(density * sum(sizes)))


def apportion(ideal: Sequence[float], capacity: Sequence[int], total: int) -> list[int]:
    """Integers near `ideal` that sum to `total`, each in [0, capacity]: largest remainder, ties by index."""
    counts = [min(int(math.floor(value)), cap) for value, cap in zip(ideal, capacity, strict=True)]
    remaining = total - sum(counts)
    order = sorted(range(len(ideal)), key=lambda index: (-(ideal[index] - math.floor(ideal[index])), index))
    while remaining > 0:
        progressed = False
        for index in order:
            if remaining == 0:
                break
            if counts[index] < capacity[index]:
                counts[index] += 1
                remaining -= 1
                progressed = True
        if not progressed:
            raise ValueError(f"cannot place {total} weights in layers of total size {sum(capacity)}")
    return counts

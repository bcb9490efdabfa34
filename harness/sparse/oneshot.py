"""One-shot pruning and regrowth for the pruning-plasticity study (SPEC section 7).

`prune_fraction` removes a fraction p of the remaining weights by one of three criteria:

- `global`: the smallest |w| over all masked tensors together;
- `layerwise`: the smallest |w| of every tensor separately;
- `filter`: whole filters (output channels) of every convolution, scored by sum |w| over the filter.
  Linear layers have no filters and are left alone (pruning classifier rows would delete classes).

`regrow` then restores the parameter count of every layer from the dense gradient of one mini-batch
(the caller computes it): by largest |g| per weight, or, after filter pruning, by filters scored by
sum |g| over the filter, as many filters as were pruned. Regrown weights and their optimizer state are 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from harness.sparse import criteria
from harness.sparse.masks import MaskSet

PRUNING_CRITERIA = ("global", "layerwise", "filter")


@dataclass
class PruneResult:
    weights: list[int]  # weights pruned per layer
    filters: list[int]  # whole filters pruned per layer (filter criterion; zeros otherwise)


def is_filtered(weight: Tensor) -> bool:
    """Convolution weights (out_channels, in_channels, *kernel) have filters; linear weights do not."""
    return weight.dim() >= 3


def filter_sums(values: Tensor) -> Tensor:
    return values.abs().reshape(values.shape[0], -1).sum(dim=1)


@torch.no_grad()
def prune_fraction(
    masks: MaskSet, fraction: float, criterion: str, optimizer: torch.optim.Optimizer | None = None
) -> PruneResult:
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"pruning fraction must be in [0, 1], got {fraction}")
    before = masks.active_counts()
    filters = [0] * len(masks)
    # The removed count is what gets rounded (round(p * n), as for filters below): rounding the kept count
    # instead differs at halves, e.g. p = 0.1 of 15 would remove round(15) - round(13.5) = 1, not 2.
    if criterion == "global":
        keep = sum(before) - round(fraction * sum(before))
        kept = criteria.global_magnitude(masks.weights, masks.masks, keep)
    elif criterion == "layerwise":
        keeps = [active - round(fraction * active) for active in before]
        kept = criteria.layerwise_magnitude(masks.weights, masks.masks, keeps)
    elif criterion == "filter":
        kept = []
        for index, (weight, mask) in enumerate(zip(masks.weights, masks.masks, strict=True)):
            if not is_filtered(weight):
                kept.append(mask.bool())
                continue
            alive = mask.bool().reshape(weight.shape[0], -1).any(dim=1)
            count = round(fraction * int(alive.sum()))
            scores = torch.where(
                alive, filter_sums(weight * mask), torch.full_like(alive, float("inf"), dtype=weight.dtype)
            )
            removed = criteria.bottom_k(scores.float(), count)
            filters[index] = count
            kept.append(mask.bool() & ~removed.view(-1, *([1] * (weight.dim() - 1))))
    else:
        raise ValueError(f"unknown pruning criterion {criterion!r}; valid: {', '.join(PRUNING_CRITERIA)}")
    masks.set(kept)
    masks.apply(optimizer)
    after = masks.active_counts()
    return PruneResult(weights=[old - new for old, new in zip(before, after, strict=True)], filters=filters)


@torch.no_grad()
def regrow(
    masks: MaskSet, pruned: PruneResult, criterion: str, optimizer: torch.optim.Optimizer | None = None
) -> list[int]:
    """Regrow, in every layer, as many weights as `pruned` removed there; returns the counts regrown."""
    if any(weight.grad is None for weight in masks.weights):
        raise RuntimeError(
            "regrowth needs the dense gradient of every masked tensor; run a backward pass first"
        )
    new_masks, grown_masks = [], []
    for weight, mask, count, filter_count in zip(
        masks.weights, masks.masks, pruned.weights, pruned.filters, strict=True
    ):
        active = mask.bool()
        gradient = weight.grad.detach().abs()
        if criterion == "filter" and is_filtered(weight):
            eligible = _regrowable_filter_positions(active, gradient, filter_count)
        else:
            eligible = ~active
        scores = torch.where(eligible, gradient, torch.full_like(gradient, float("-inf"))).reshape(-1).float()
        grown = criteria.top_k(scores, count).view(weight.shape)
        new_masks.append(active | grown)
        grown_masks.append(grown)
    masks.set(new_masks)
    masks.zero_positions(grown_masks, optimizer)
    return list(pruned.weights)


def _regrowable_filter_positions(active: Tensor, gradient: Tensor, filter_count: int) -> Tensor:
    """Positions inside the `filter_count` fully inactive filters with the largest sum |g|."""
    inactive_filters = ~active.reshape(active.shape[0], -1).any(dim=1)
    scores = torch.where(
        inactive_filters,
        filter_sums(gradient),
        torch.full_like(inactive_filters, float("-inf"), dtype=gradient.dtype),
    )
    chosen = criteria.top_k(scores.float(), filter_count)
    return chosen.view(-1, *([1] * (active.dim() - 1))).expand_as(active)

"""One-shot pruning and regrowth for the plasticity study (SPEC section 7): exact counts, by the right
scores, whole filters for the filter criterion, regrown weights and optimizer state at exactly 0."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch
from sparse_helpers import (
    TinyNet,
    backward,
    make_batches,
    one_thread,
    reference_order,
    sgd,
    state_tensors,
    tiny_model,
)
from torch import nn

from harness.sparse import MaskSet, PruneResult, prune_fraction, regrow


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Iterator[None]:
    with one_thread():
        yield


FRACTIONS = (0.1, 0.3, 0.5, 0.75)


def flat_indices(mask: torch.Tensor) -> set[int]:
    return set(torch.nonzero(mask.reshape(-1)).reshape(-1).tolist())


def trained_sparse_net(seed: int = 0) -> tuple[nn.Module, torch.optim.Optimizer, MaskSet]:
    """TinyNet after two SGD steps (so momentum exists) with a random 70%-dense mask and exact weight ties."""
    model = tiny_model(TinyNet, seed=seed)
    optimizer = sgd(model)
    masks = MaskSet.for_model(model)
    generator = torch.Generator().manual_seed(seed)
    masks.set([torch.rand(shape, generator=generator) < 0.7 for shape in masks.shapes])
    for batch in make_batches(model, 2):
        optimizer.zero_grad(set_to_none=True)
        backward(model, batch)
        optimizer.step()
        masks.apply(optimizer)
    with torch.no_grad():  # quantise so that many |w| tie exactly
        for weight, mask in zip(masks.weights, masks.masks, strict=True):
            weight.copy_(torch.round(weight * 8) / 8 * mask)
    return model, optimizer, masks


def masked_scores(weight: torch.Tensor, mask: torch.Tensor) -> list[float]:
    return torch.where(mask.bool(), weight.abs(), torch.tensor(-1.0)).reshape(-1).tolist()


def assert_pruned_state_is_zero(masks: MaskSet, optimizer: torch.optim.Optimizer) -> None:
    for weight, mask in zip(masks.weights, masks.masks, strict=True):
        assert not bool(weight[mask == 0].any())
        for state in state_tensors(optimizer, weight):
            assert not bool(state[mask == 0].any())


@pytest.mark.parametrize("fraction", FRACTIONS)
def test_global_pruning_removes_exactly_the_smallest(fraction: float) -> None:
    _, optimizer, masks = trained_sparse_net()
    before = masks.active_counts()
    weights = torch.cat([weight.detach().reshape(-1) for weight in masks.weights])
    old = torch.cat([mask.reshape(-1) for mask in masks.masks])
    result = prune_fraction(masks, fraction, "global", optimizer)
    remaining = sum(before)
    assert sum(result.weights) == round(fraction * remaining)
    assert result.filters == [0, 0, 0]
    assert result.weights == [b - a for b, a in zip(before, masks.active_counts(), strict=True)]
    kept = torch.cat([mask.reshape(-1) for mask in masks.masks])
    scores = torch.where(old.bool(), weights.abs(), torch.tensor(-1.0)).tolist()
    assert flat_indices(kept) == reference_order(scores, remaining - round(fraction * remaining))
    pruned = old.bool() & ~kept.bool()
    assert float(weights[pruned].abs().max()) <= float(weights[kept.bool()].abs().min())
    assert_pruned_state_is_zero(masks, optimizer)


@pytest.mark.parametrize("fraction", FRACTIONS)
def test_layerwise_pruning_removes_exactly_per_layer(fraction: float) -> None:
    _, optimizer, masks = trained_sparse_net()
    before = masks.active_counts()
    weights = [weight.detach().clone() for weight in masks.weights]
    old = [mask.clone() for mask in masks.masks]
    result = prune_fraction(masks, fraction, "layerwise", optimizer)
    assert result.weights == [round(fraction * active) for active in before]
    for weight, old_mask, new_mask, active in zip(weights, old, masks.masks, before, strict=True):
        expected = reference_order(masked_scores(weight, old_mask), active - round(fraction * active))
        assert flat_indices(new_mask) == expected
    assert_pruned_state_is_zero(masks, optimizer)


def test_pruning_rounds_the_removed_count_not_the_kept_count() -> None:
    # 15 active weights, p = 0.1: round(p * 15) = round(1.5) = 2 removed (13 kept). Rounding the kept count
    # instead, round(0.9 * 15) = round(13.5) = 14, would remove only 1.
    layer = nn.Linear(5, 3, bias=False)
    masks = MaskSet.for_model(layer)
    for criterion in ("global", "layerwise"):
        with torch.no_grad():
            layer.weight.copy_(torch.arange(1.0, 16.0).view(3, 5))
        masks.set([torch.ones(3, 5)])
        result = prune_fraction(masks, 0.1, criterion)
        assert result.weights == [round(0.1 * 15)] == [2]
        assert flat_indices(masks.masks[0]) == set(range(2, 15))


@pytest.mark.parametrize("fraction", FRACTIONS)
def test_filter_pruning_removes_whole_filters_of_convolutions_only(fraction: float) -> None:
    _, optimizer, masks = trained_sparse_net()
    before = masks.active_counts()
    weights = [weight.detach().clone() for weight in masks.weights]
    old = [mask.bool().clone() for mask in masks.masks]
    result = prune_fraction(masks, fraction, "filter", optimizer)
    for index, (weight, old_mask, new_mask) in enumerate(zip(weights, old, masks.masks, strict=True)):
        if weight.dim() == 2:  # the classifier: no filters, untouched
            assert torch.equal(new_mask.bool(), old_mask)
            assert result.filters[index] == 0 and result.weights[index] == 0
            continue
        alive = old_mask.reshape(weight.shape[0], -1).any(dim=1)
        removed_count = round(fraction * int(alive.sum()))
        assert result.filters[index] == removed_count
        scores = [
            float((weight[row] * old_mask[row]).abs().sum()) if bool(alive[row]) else math.inf
            for row in range(weight.shape[0])
        ]
        removed = reference_order(scores, removed_count, largest=False)
        for row in range(weight.shape[0]):
            if row in removed:
                assert not bool(new_mask[row].any()) and not bool(masks.weights[index][row].any())
                for state in state_tensors(optimizer, masks.weights[index]):
                    assert not bool(state[row].any())
            else:
                assert torch.equal(new_mask[row].bool(), old_mask[row])
        assert result.weights[index] == before[index] - int(new_mask.sum())
    assert_pruned_state_is_zero(masks, optimizer)


def take_gradient(model: nn.Module, seed: int = 5) -> None:
    model.zero_grad(set_to_none=True)
    backward(model, make_batches(model, 1, seed=seed)[0])


@pytest.mark.parametrize("criterion", ["global", "layerwise"])
@pytest.mark.parametrize("fraction", FRACTIONS)
def test_regrowth_restores_every_layer_by_largest_gradient(criterion: str, fraction: float) -> None:
    model, optimizer, masks = trained_sparse_net()
    before = masks.active_counts()
    pruned = prune_fraction(masks, fraction, criterion, optimizer)
    old = [mask.bool().clone() for mask in masks.masks]
    kept_values = [weight.detach().clone() for weight in masks.weights]
    take_gradient(model)
    grown = regrow(masks, pruned, criterion, optimizer)
    assert grown == pruned.weights
    assert masks.active_counts() == before
    layers = zip(masks.weights, old, masks.masks, pruned.weights, kept_values, strict=True)
    for weight, old_mask, new_mask, count, kept_value in layers:
        scores = torch.where(old_mask, torch.tensor(-math.inf), weight.grad.abs()).reshape(-1).tolist()
        expected_grown = reference_order(scores, count)
        assert flat_indices(new_mask) == flat_indices(old_mask) | expected_grown
        grown_index = torch.tensor(sorted(expected_grown), dtype=torch.long)
        assert not bool(weight.reshape(-1)[grown_index].any())
        for state in state_tensors(optimizer, weight):
            assert not bool(state.reshape(-1)[grown_index].any())
        assert torch.equal(weight[old_mask], kept_value[old_mask])
    assert_pruned_state_is_zero(masks, optimizer)


@pytest.mark.parametrize("fraction", FRACTIONS)
def test_filter_regrowth_picks_filters_by_gradient_score(fraction: float) -> None:
    model = tiny_model(TinyNet)
    optimizer = sgd(model)
    masks = MaskSet.for_model(model)  # dense: every pruned filter was full, so regrowth refills whole filters
    for batch in make_batches(model, 2):
        optimizer.zero_grad(set_to_none=True)
        backward(model, batch)
        optimizer.step()
    before = masks.active_counts()
    pruned = prune_fraction(masks, fraction, "filter", optimizer)
    old = [mask.bool().clone() for mask in masks.masks]
    take_gradient(model)
    regrow(masks, pruned, "filter", optimizer)
    assert masks.active_counts() == before
    for index, (weight, old_mask, new_mask) in enumerate(zip(masks.weights, old, masks.masks, strict=True)):
        if weight.dim() == 2:
            assert torch.equal(new_mask.bool(), old_mask)
            continue
        dead = ~old_mask.reshape(weight.shape[0], -1).any(dim=1)
        scores = [
            float(weight.grad[row].abs().sum()) if bool(dead[row]) else -math.inf
            for row in range(weight.shape[0])
        ]
        chosen = reference_order(scores, pruned.filters[index])
        for row in range(weight.shape[0]):
            if row in chosen:
                assert bool(new_mask[row].all())
                assert not bool(weight[row].any())
                for state in state_tensors(optimizer, weight):
                    assert not bool(state[row].any())
            else:
                assert torch.equal(new_mask[row].bool(), old_mask[row])


def test_filter_regrowth_after_sparse_filters_restores_the_weight_count() -> None:
    # Pruned filters were partly sparse: regrowth refills as many weights as were lost, inside the
    # chosen filters, by largest |g|.
    model, optimizer, masks = trained_sparse_net(seed=2)
    before = masks.active_counts()
    pruned = prune_fraction(masks, 0.5, "filter", optimizer)
    take_gradient(model)
    regrow(masks, pruned, "filter", optimizer)
    assert masks.active_counts() == before


def test_bad_input_raises() -> None:
    model, optimizer, masks = trained_sparse_net()
    with pytest.raises(ValueError, match="fraction must be in"):
        prune_fraction(masks, 1.5, "global")
    with pytest.raises(ValueError, match="unknown pruning criterion 'random'"):
        prune_fraction(masks, 0.5, "random")
    model.zero_grad(set_to_none=True)
    with pytest.raises(RuntimeError, match="dense gradient"):
        regrow(masks, PruneResult(weights=[0, 0, 0], filters=[0, 0, 0]), "global")

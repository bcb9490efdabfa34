"""Selection by score (top-k, global / layer-wise magnitude, drop-and-grow, growth scores), checked against
a pure-Python full sort on (score, index): exact counts, order, and lowest-index tie-breaking."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from sparse_helpers import one_thread, reference_order

from harness.sparse import criteria


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Iterator[None]:
    with one_thread():
        yield


def quantised(shape: tuple[int, ...], seed: int, levels: int = 5) -> torch.Tensor:
    """Weights with many exact ties: values in {-levels..levels} / 4."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(-levels, levels + 1, shape, generator=generator).float() / 4.0


def true_indices(flat_mask: torch.Tensor) -> set[int]:
    return set(torch.nonzero(flat_mask.reshape(-1)).reshape(-1).tolist())


def test_top_k_ties_go_to_the_lowest_index() -> None:
    scores = torch.tensor([1.0, 3.0, 3.0, 3.0, 2.0, 3.0, 0.0])
    assert true_indices(criteria.top_k(scores, 2)) == {1, 2}
    assert true_indices(criteria.top_k(scores, 3)) == {1, 2, 3}
    assert true_indices(criteria.top_k(scores, 5)) == {1, 2, 3, 4, 5}
    assert true_indices(criteria.bottom_k(scores, 1)) == {6}
    assert true_indices(criteria.bottom_k(scores, 3)) == {0, 4, 6}
    assert true_indices(criteria.bottom_k(scores, 4)) == {0, 1, 4, 6}


def test_top_k_all_equal_keeps_the_prefix() -> None:
    scores = torch.full((1000,), 0.25)
    assert true_indices(criteria.top_k(scores, 123)) == set(range(123))
    assert true_indices(criteria.bottom_k(scores, 7)) == set(range(7))


@pytest.mark.parametrize("k", [0, 1, 17, 499, 500])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_top_k_matches_the_full_sort_reference(k: int, dtype: torch.dtype) -> None:
    scores = quantised((500,), seed=k).to(dtype)
    expected = reference_order(scores.double().tolist(), k)
    selected = criteria.top_k(scores, k)
    assert selected.dtype == torch.bool
    assert int(selected.sum()) == k
    assert true_indices(selected) == expected
    assert true_indices(criteria.bottom_k(scores, k)) == reference_order(
        scores.double().tolist(), k, largest=False
    )


def test_kth_largest_on_both_paths() -> None:
    scores = torch.tensor([5.0, 1.0, 4.0, 4.0, 2.0])
    assert float(criteria.kth_largest(scores, 1)) == 5.0
    assert float(criteria.kth_largest(scores, 3)) == 4.0
    assert float(criteria.kth_largest(scores, 5)) == 1.0
    assert float(criteria.kth_largest(scores.half(), 3)) == 4.0  # torch.kthvalue path


def masks_and_weights(seed: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    shapes = [(6, 3, 3, 3), (40, 12), (7,)]  # a conv, a linear, a tiny odd tensor
    weights = [quantised(shape, seed + index) for index, shape in enumerate(shapes)]
    generator = torch.Generator().manual_seed(seed + 100)
    masks = [(torch.rand(shape, generator=generator) < 0.7).float() for shape in shapes]
    return weights, masks


@pytest.mark.parametrize("keep", [0, 1, 100, 300, 505, 649])  # 649 = all
def test_global_magnitude_keeps_exactly_the_largest(keep: int) -> None:
    weights, masks = masks_and_weights()
    kept = criteria.global_magnitude(weights, masks, keep)
    flat_kept = torch.cat([mask.reshape(-1) for mask in kept])
    flat_weight = torch.cat([weight.reshape(-1) for weight in weights])
    flat_active = torch.cat([mask.reshape(-1) for mask in masks]).bool()
    assert [mask.shape for mask in kept] == [weight.shape for weight in weights]
    assert int(flat_kept.sum()) == keep
    # Reference: masked entries score -1 (go first), ties by global index in layer order.
    scores = torch.where(flat_active, flat_weight.abs(), torch.tensor(-1.0)).tolist()
    assert true_indices(flat_kept) == reference_order(scores, keep)
    # Every kept |w| >= every dropped active |w|; no masked entry kept while an active one is dropped.
    dropped_active = flat_active & ~flat_kept
    if bool(flat_kept.any()) and bool(dropped_active.any()):
        assert float(flat_weight[flat_kept].abs().min()) >= float(flat_weight[dropped_active].abs().max())
        assert not bool((flat_kept & ~flat_active).any())
    active_count = int(flat_active.sum())
    if keep >= active_count:
        assert bool(flat_kept[flat_active].all())


def test_global_magnitude_is_deterministic_with_many_ties() -> None:
    weights = [torch.full((50, 20), 0.5), torch.full((30,), 0.5)]
    masks = [torch.ones_like(weight) for weight in weights]
    first = criteria.global_magnitude(weights, masks, 777)
    second = criteria.global_magnitude(weights, masks, 777)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    # All equal: the lowest global indices survive, i.e. the first 777 of the first tensor.
    assert int(first[0].sum()) == 777 and int(first[1].sum()) == 0
    assert true_indices(first[0]) == set(range(777))


def test_masked_zero_weights_go_before_active_zero_weights() -> None:
    weights = [torch.zeros(10)]
    masks = [torch.tensor([1.0, 0, 1, 0, 1, 0, 1, 0, 1, 0])]
    kept = criteria.global_magnitude(weights, masks, 5)
    assert true_indices(kept[0]) == {0, 2, 4, 6, 8}


@pytest.mark.parametrize("keeps", [[0, 0, 0], [100, 200, 3], [162, 480, 7], [1, 333, 5]])
def test_layerwise_magnitude_keeps_exactly_per_layer(keeps: list[int]) -> None:
    weights, masks = masks_and_weights(seed=3)
    kept = criteria.layerwise_magnitude(weights, masks, keeps)
    for weight, mask, layer_kept, keep in zip(weights, masks, kept, keeps, strict=True):
        assert int(layer_kept.sum()) == keep
        scores = torch.where(mask.bool(), weight.abs(), torch.tensor(-1.0)).reshape(-1).tolist()
        assert true_indices(layer_kept) == reference_order(scores, keep)


def test_drop_and_grow_by_hand() -> None:
    weight = torch.tensor([0.9, -0.1, 0.0, 0.5, 0.0, -0.2, 0.0, 0.3])
    mask = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0])
    gradient = torch.tensor([0.0, 5.0, 0.4, 9.0, 0.7, 0.1, 0.7, 0.0])
    new_mask, dropped, grown = criteria.drop_and_grow(weight, mask, gradient.abs(), 2)
    # Drop the two smallest active |w|: index 1 (0.1) and index 5 (0.2).
    assert true_indices(dropped) == {1, 5}
    # Grow among inactive {1, 2, 4, 5, 6} (just-dropped 1 and 5 eligible) by largest |g|: 1 (5.0), then a
    # tie at 0.7 between 4 and 6 -> the lower index 4.
    assert true_indices(grown) == {1, 4}
    assert true_indices(new_mask) == {0, 1, 3, 4, 7}
    assert int(new_mask.sum()) == int(mask.sum())


def test_drop_and_grow_zero_count_changes_nothing() -> None:
    weight, mask = torch.randn(20), (torch.arange(20) % 2).float()
    new_mask, dropped, grown = criteria.drop_and_grow(weight, mask, torch.rand(20), 0)
    assert torch.equal(new_mask, mask.bool()) and not bool(dropped.any()) and not bool(grown.any())


def test_growth_scores() -> None:
    weight = torch.nn.Parameter(torch.zeros(3, 4))
    with pytest.raises(RuntimeError, match="dense gradient"):
        criteria.growth_scores("gradient", [weight])
    weight.grad = torch.arange(-6.0, 6.0).view(3, 4)
    assert torch.equal(criteria.growth_scores("gradient", [weight])[0], weight.grad.abs())
    first = criteria.growth_scores("random", [weight], generator=torch.Generator().manual_seed(5))[0]
    second = criteria.growth_scores("random", [weight], generator=torch.Generator().manual_seed(5))[0]
    assert torch.equal(first, second)
    assert torch.equal(first, torch.rand(3, 4, generator=torch.Generator().manual_seed(5)))
    with pytest.raises(RuntimeError, match="GradientMomentum"):
        criteria.growth_scores("momentum", [weight])
    with pytest.raises(ValueError, match="unknown growth score 'magic'"):
        criteria.growth_scores("magic", [weight])


def test_gradient_momentum_is_an_exponential_average_of_dense_gradients() -> None:
    weight = torch.nn.Parameter(torch.zeros(2))
    momentum = criteria.GradientMomentum([weight], beta=0.5)
    momentum.observe()  # no gradient yet: ignored
    assert torch.equal(momentum.buffers[0], torch.zeros(2))
    for gradient in ([4.0, -8.0], [2.0, 0.0]):
        weight.grad = torch.tensor(gradient)
        momentum.observe()
    # 0.5 * (0.5 * [4, -8]) + 0.5 * [2, 0] = [2, -2]
    assert torch.equal(momentum.buffers[0], torch.tensor([2.0, -2.0]))
    restored = criteria.GradientMomentum([weight], beta=0.5)
    restored.load_state_dict(momentum.state_dict())
    assert torch.equal(restored.buffers[0], momentum.buffers[0])

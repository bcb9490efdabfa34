"""Scores of the five methods of issue 10, by hand on networks small enough to compute them on paper
(docs/methods.md gives the formulas), and each method's mask at the final density."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from sparse_helpers import make_batches, one_thread, setup_method, tiny_model, train_step
from torch import Tensor, nn

from harness.models.build import build_model
from harness.sparse import MaskSet, ScoringInputs, build_method, scores
from harness.sparse.methods.acdc import ACDC


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Iterator[None]:
    with one_thread():
        yield


# One linear layer y = W x, loss L = 1/2 |W x - t|^2: the gradient is g = r x^T with r = W x - t, and the
# Hessian over vec(W) is (x x^T) ⊗ I, so H g = (g x) x^T = (x^T x) g exactly.
W = [[1.0, -2.0], [0.5, 3.0]]
X = [[1.0, 2.0]]
T = [[0.0, 1.0]]  # W x = (-3, 6.5), r = (-3, 5.5)
G = [[-3.0, -6.0], [5.5, 11.0]]


def half_squared_error(output: Tensor, target: Tensor) -> Tensor:
    return 0.5 * ((output - target) ** 2).sum()


def linear_layer() -> nn.Module:
    layer = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(W))
    return layer


def one_batch(count: int) -> list[tuple[Tensor, Tensor]]:
    return [(torch.tensor(X), torch.tensor(T))] * count


def test_snip_score_is_the_gradient_times_the_weight_and_keeps_the_largest() -> None:
    layer = linear_layer()
    saliency, passes = scores.snip(layer, [layer.weight], one_batch(1), half_squared_error)
    assert torch.equal(saliency[0], torch.tensor([[3.0, 12.0], [2.75, 33.0]]))
    assert passes == 1
    assert layer.weight.grad is None  # the model is left as found

    masks = MaskSet.for_model(layer)
    method = build_method("snip", masks, None, {"sparsity": 0.5}, total_steps=5)
    requested: list[int] = []

    def batches(count: int) -> list[tuple[Tensor, Tensor]]:
        requested.append(count)
        return one_batch(count)

    assert method.prepare(ScoringInputs(layer, batches, (2,), half_squared_error)) == 1
    assert requested == [1]
    assert torch.equal(masks.masks[0], torch.tensor([[0.0, 1.0], [0.0, 1.0]]))
    assert torch.equal(layer.weight, torch.tensor([[0.0, -2.0], [0.0, 3.0]]))


def test_snip_averages_the_gradient_over_its_mini_batches() -> None:
    layer = linear_layer()
    # The second batch has target W x: zero gradient, so the mean gradient is G / 2.
    batches = [(torch.tensor(X), torch.tensor(T)), (torch.tensor(X), torch.tensor([[-3.0, 6.5]]))]
    saliency, passes = scores.snip(layer, [layer.weight], batches, half_squared_error)
    assert torch.equal(saliency[0], torch.tensor([[1.5, 6.0], [1.375, 16.5]]))
    assert passes == 2


def test_grasp_hessian_gradient_product_matches_the_closed_form() -> None:
    layer = linear_layer()
    gradient = scores.mean_gradient(layer, [layer.weight], one_batch(1), half_squared_error)
    assert torch.equal(gradient[0], torch.tensor(G))
    product = scores.hessian_gradient(layer, [layer.weight], one_batch(1), half_squared_error, gradient)
    assert torch.equal(product[0], 5.0 * torch.tensor(G))  # x^T x = 5
    saliency, passes = scores.grasp(layer, [layer.weight], one_batch(1), half_squared_error)
    # -w ⊙ Hg = -[[1 * -15, -2 * -30], [0.5 * 27.5, 3 * 55]]
    assert torch.equal(saliency[0], torch.tensor([[15.0, -60.0], [-13.75, -165.0]]))
    assert passes == 3

    masks = MaskSet.for_model(layer)
    method = build_method("grasp", masks, None, {"sparsity": 0.75}, total_steps=5)
    method.prepare(ScoringInputs(layer, one_batch, (2,), half_squared_error))
    # The highest scores go: only the lowest, -165 at W[1, 1], stays.
    assert torch.equal(masks.masks[0], torch.tensor([[0.0, 0.0], [0.0, 1.0]]))


def test_grasp_hessian_gradient_product_matches_finite_differences() -> None:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    weights = [model[0].weight, model[2].weight]
    batches = [(torch.randn(5, 3, dtype=torch.float64), torch.tensor([0, 1, 2, 1, 0]))]
    loss = nn.functional.cross_entropy
    gradient = scores.mean_gradient(model, weights, batches, loss)
    product = scores.hessian_gradient(model, weights, batches, loss, gradient)
    epsilon = 1e-5
    shifted = []
    for sign in (1.0, -1.0):
        with torch.no_grad():
            for weight, direction in zip(weights, gradient, strict=True):
                weight.add_(sign * epsilon * direction)
        shifted.append(scores.mean_gradient(model, weights, batches, loss))
        with torch.no_grad():
            for weight, direction in zip(weights, gradient, strict=True):
                weight.sub_(sign * epsilon * direction)
    for exact, plus, minus in zip(product, *shifted, strict=True):
        torch.testing.assert_close(exact, (plus - minus) / (2 * epsilon), rtol=1e-6, atol=1e-9)
    assert all(float(tensor.abs().max()) > 1e-3 for tensor in product)  # not trivially zero


def two_layers(batchnorm: bool = False) -> nn.Module:
    first, second = nn.Linear(2, 2, bias=False), nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        first.weight.copy_(torch.tensor(W))
        second.weight.copy_(torch.tensor([[-1.0, 2.0]]))
    middle = [nn.BatchNorm1d(2)] if batchnorm else []
    return nn.Sequential(first, *middle, nn.ReLU(), second)


def test_synflow_objective_and_scores_by_hand() -> None:
    model = two_layers()
    weights = [model[0].weight, model[2].weight]
    network = scores.SynFlowNetwork(model, weights)
    ones = [torch.ones(2, 2), torch.ones(1, 2)]
    # |W1| 1 = (3, 3.5); R = |W2| (3, 3.5) = 3 + 7 = 10.
    assert float(network.objective(ones, (2,)).detach()) == 10.0
    first, second = network.scores(ones, (2,))
    # dR/d|W2| = (3, 3.5) -> (3, 7); dR/d|W1|_ij = |W2|_i -> (1, 2; 1, 6). Each layer's scores sum to R.
    assert torch.equal(second, torch.tensor([[3.0, 7.0]], dtype=torch.float64))
    assert torch.equal(first, torch.tensor([[1.0, 2.0], [1.0, 6.0]], dtype=torch.float64))
    # With W1[1, 1] masked: R = |W2| (3, 0.5) = 4.
    masked = [torch.tensor([[1.0, 1.0], [1.0, 0.0]]), torch.ones(1, 2)]
    assert float(network.objective(masked, (2,)).detach()) == 4.0
    # The model itself keeps its signs, values and dtype.
    assert torch.equal(model[0].weight, torch.tensor(W)) and model[0].weight.dtype == torch.float32
    assert torch.equal(model[2].weight, torch.tensor([[-1.0, 2.0]]))


def test_synflow_uses_batchnorm_in_eval_mode_and_leaves_its_statistics() -> None:
    model = two_layers(batchnorm=True)
    with torch.no_grad():
        model[1].running_mean.copy_(torch.tensor([-1.0, 0.5]))  # |.| -> (1, 0.5)
        model[1].running_var.copy_(torch.tensor([4.0, 1.0]))
        model[1].eps = 0.0
    network = scores.SynFlowNetwork(model, [model[0].weight, model[3].weight])
    # BN(3, 3.5) in eval mode = ((3 - 1) / 2, (3.5 - 0.5) / 1) = (1, 3); R = 1 * 1 + 2 * 3 = 7.
    assert float(network.objective([torch.ones(2, 2), torch.ones(1, 2)], (2,)).detach()) == 7.0
    assert model.training and torch.equal(model[1].running_mean, torch.tensor([-1.0, 0.5]))


def test_synflow_prunes_iteratively_along_the_exponential_schedule() -> None:
    assert scores.exponential_densities(0.25, 2) == [0.5, 0.25]
    model = two_layers()
    masks = MaskSet.for_model(model)
    method = build_method("synflow", masks, None, {"sparsity": 0.5, "synflow_rounds": 2}, total_steps=5)
    assert method.prepare(ScoringInputs(model, one_batch, (2,))) == 2
    # Round 1 keeps round(0.5^(1/2) * 6) = 4 of scores (1, 2, 1, 6 | 3, 7): W1[0,1], W1[1,1], W2[0], W2[1]
    # (the tie between the two 1s is not reached). Round 2 rescores the masked network: |W1| 1 =
    # (2, 3), R = 2 + 6 = 8, scores (0, 2, 0, 6 | 2, 6), keeps 3: the two 6s and, of the tied 2s, the
    # lower flat index W1[0, 1].
    assert torch.equal(masks.masks[0], torch.tensor([[0.0, 1.0], [0.0, 1.0]]))
    assert torch.equal(masks.masks[1], torch.tensor([[0.0, 1.0]]))


def test_ties_go_to_the_lowest_flat_index_over_all_layers() -> None:
    model = nn.Sequential(nn.Linear(3, 2, bias=False), nn.Linear(2, 2, bias=False))
    masks = MaskSet.for_model(model)
    method = build_method("snip", masks, None, {"sparsity": 0.5}, total_steps=5)
    method.keep_top([torch.ones(2, 3), torch.ones(2, 2)], 0.5)  # 5 of 10, all tied
    assert masks.active_counts() == [5, 0]
    assert torch.equal(masks.masks[0], torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]))


@pytest.mark.parametrize("name", ["snip", "grasp", "synflow"])
def test_pruning_at_initialisation_reaches_the_exact_count_and_stays_fixed(name: str) -> None:
    model = tiny_model()
    optimizer, masks, method = setup_method(
        name, model, "sgd", total_steps=10, sparsity=0.8, synflow_rounds=10
    )
    chosen = [mask.clone() for mask in masks.masks]
    assert sum(masks.active_counts()) == round(0.2 * masks.total)
    for batch in make_batches(model, 10):
        assert train_step(model, optimizer, method, batch) is None
    assert all(torch.equal(a, b) for a, b in zip(chosen, masks.masks, strict=True))
    assert method.initial_record().density == round(0.2 * masks.total) / masks.total


def test_a_method_that_scores_refuses_to_train_unprepared() -> None:
    masks = MaskSet.for_model(tiny_model())
    method = build_method("snip", masks, None, total_steps=5)
    with pytest.raises(RuntimeError, match="snip scores before training"):
        method.step()


def test_synflow_keeps_every_layer_of_vgg19_alive_at_98_percent_where_snip_collapses_layers() -> None:
    """The layer-collapse property of the SynFlow paper, on VGG-19 (1-D convolutions, width 1/8: the 16
    convolutions and the classifier of the real network, ~105 k weights)."""
    shape = (1, 40)
    generator = torch.Generator().manual_seed(1)
    batch = (torch.randn(32, *shape, generator=generator), torch.randint(0, 10, (32,), generator=generator))
    active = {}
    for name in ("snip", "synflow"):
        torch.manual_seed(0)
        model = build_model("vgg19", num_classes=10, input_shape=(1, 40), width=0.125)
        masks = MaskSet.for_model(model)
        method = build_method(name, masks, None, {"sparsity": 0.98}, total_steps=5)
        method.prepare(ScoringInputs(model, lambda count, batch=batch: [batch] * count, shape))
        assert len(masks) == 17
        assert sum(masks.active_counts()) == round(0.02 * masks.total)  # exactly the target
        active[name] = masks.active_counts()
    assert min(active["synflow"]) > 0, active["synflow"]
    assert min(active["snip"]) == 0, active["snip"]  # single-shot SNIP empties some deep layers


def test_mest_drops_by_magnitude_plus_lambda_gradient() -> None:
    layer = nn.Linear(4, 1, bias=False)
    masks = MaskSet.for_model(layer)
    settings = {"sparsity": 0.25, "update_frequency": 5, "mest_lambda": 0.5}
    method = build_method("mest", masks, None, settings, total_steps=10, seed=0)
    set_method = build_method("set", MaskSet.for_model(layer), None, {"sparsity": 0.25}, total_steps=10)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.1, 0.5, -0.2, 0.3]]))
    layer.weight.grad = torch.tensor([[1.0, 0.0, 0.0, -0.4]])
    masks.set([torch.tensor([[1.0, 1.0, 1.0, 0.0]])])
    set_method.masks.set([torch.tensor([[1.0, 1.0, 1.0, 0.0]])])
    combined = method.drop_scores()[0]
    torch.testing.assert_close(combined, torch.tensor([[0.6, 0.5, 0.2, 0.5]]), rtol=0, atol=1e-7)
    assert method.reads_dense_gradient()
    # One drop (ceil(1/3 * 3)): MEST drops W[2] (0.2), where SET's magnitude drop takes W[0] (0.1).
    _, dropped, _ = method_drop(method)
    _, set_dropped, _ = method_drop(set_method)
    assert dropped.tolist() == [[False, False, True, False]]
    assert set_dropped.tolist() == [[True, False, False, False]]


def method_drop(method: object) -> tuple[Tensor, Tensor, Tensor]:
    from harness.sparse import criteria

    masks = method.masks  # type: ignore[attr-defined]
    weight, mask = masks.weights[0], masks.masks[0]
    drop = method.drop_scores()[0]  # type: ignore[attr-defined]
    return criteria.drop_and_grow(weight, mask, torch.zeros_like(weight), 1, drop_score=drop)


def test_acdc_alternates_phases_and_ends_compressed() -> None:
    masks = MaskSet.for_model(tiny_model())
    settings = {
        "sparsity": 0.9,
        "acdc_warmup": 0.1,
        "acdc_phase": 0.05,
        "acdc_final": 0.15,
    }  # 10, 5, 15 steps
    method = build_method("acdc", masks, None, settings, total_steps=100)
    assert isinstance(method, ACDC)
    events = [t for t in range(1, 101) if method.is_update_step(t)]
    # Compressed from 10, 20, .., 80 (and from 80 on to the end); decompressed from 15, 25, .., 75.
    assert events == list(range(10, 85, 5))
    sparse = 1.0 - 0.9
    densities = [method.target_density(t) for t in (9, 10, 15, 79, 85, 100)]
    assert densities == [1.0, sparse, 1.0, 1.0, sparse, sparse]


def test_acdc_masks_follow_the_phases_and_decompressed_weights_restart_at_zero() -> None:
    model = tiny_model()
    optimizer, masks, method = setup_method(
        "acdc", model, "sgd", total_steps=24, sparsity=0.8, acdc_warmup=4, acdc_phase=4, acdc_final=8
    )
    densities = []
    for step, batch in enumerate(make_batches(model, 24), start=1):
        was_active = [mask.bool().clone() for mask in masks.masks]
        update = train_step(model, optimizer, method, batch)
        if update is not None:
            densities.append((step, update.density))
            if update.target_density == 1.0:
                revived = [~active for active in was_active]
                assert all(not bool(w[r].any()) for w, r in zip(masks.weights, revived, strict=True))
                assert sum(layer.grown for layer in update.layers.values()) == sum(
                    int(r.sum()) for r in revived
                )
    target = round(0.2 * masks.total) / masks.total
    assert densities == [(4, target), (8, 1.0), (12, target)]
    assert sum(masks.active_counts()) == round(0.2 * masks.total)


def test_a_restored_scoring_method_trains_with_the_scored_mask_and_does_not_rescore() -> None:
    model = tiny_model()
    optimizer, masks, method = setup_method("snip", model, "sgd", total_steps=10, sparsity=0.8)
    state = method.state_dict()
    fresh = tiny_model(seed=5)
    fresh_masks = MaskSet.for_model(fresh)
    restored = build_method("snip", fresh_masks, None, {"sparsity": 0.8}, total_steps=10)
    restored.load_state_dict(state)
    assert restored.step() is None  # no RuntimeError: the restored masks are the scored ones
    assert all(torch.equal(a, b) for a, b in zip(masks.masks, fresh_masks.masks, strict=True))

"""The method zoo after real training steps: SPEC section 2 invariants for every registered method, the
reference trajectory, regeneration by hand, a GraNet trace, exact resume and the cost of the step path."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sparse_helpers import (
    TinyMLP,
    backward,
    make_batches,
    one_thread,
    reference_order,
    setup_method,
    state_tensors,
    tiny_model,
    train_step,
)
from torch import nn

from harness.errors import UserError
from harness.sparse import (
    METHODS,
    MaskError,
    MaskSet,
    MaskUpdate,
    SparsityMethod,
    build_method,
    method_class,
    sparsifiable_weights,
)
from harness.sparse.distributions import layer_counts


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Iterator[None]:
    with one_thread():
        yield


ALL_METHODS = sorted(METHODS)
# Short runs with frequent mask updates: every method that updates does so at least 5 times in 30 steps.
SHORT_RUN: dict[str, Any] = {
    "total_steps": 30,
    "sparsity": 0.8,
    "update_frequency": 4,
    "prune_start": 0,
    "prune_end": 20,
}


def test_registry_lists_every_method_and_rejects_unknown_names() -> None:
    assert set(METHODS) == {
        *("dense", "static", "gmp", "gmp-layerwise", "granet", "rigl", "set"),
        *("snip", "grasp", "synflow", "mest", "acdc"),
    }
    masks = MaskSet.for_model(tiny_model())
    with pytest.raises(UserError, match="unknown method 'lottery'; valid: dense, static"):
        build_method("lottery", masks, None, total_steps=10)


@pytest.mark.parametrize(
    ("name", "settings", "run", "message"),
    [
        ("granet", {}, {"total_steps": 0}, "total_steps must be >= 1, got 0"),
        ("granet", {}, {"total_steps": 10, "steps_per_epoch": 3}, r"steps_per_epoch \(3\) must divide"),
        ("granet", {"sparsity": 1.0}, {"total_steps": 10}, "sparsity\n  Input should be less than 1"),
        (
            "gmp",
            {"sparsity": 0.5, "init_sparsity": 0.6},
            {"total_steps": 10},
            r"init_sparsity \(0.6\) must not exceed the final sparsity \(0.5\)",
        ),
        ("granet", {"regen_until": "never"}, {"total_steps": 10}, "regen_until\n  Input should be 'end' or"),
        (
            "rigl",
            {"growth": "magic"},
            {"total_steps": 10},
            "growth\n  Input should be 'gradient', 'momentum'",
        ),
        (
            "rigl",
            {"init_sparsity": 0.5},
            {"total_steps": 10},
            "init_sparsity\n  Extra inputs are not permitted",
        ),
    ],
)
def test_bad_settings_raise(name: str, settings: dict[str, Any], run: dict[str, int], message: str) -> None:
    masks = MaskSet.for_model(tiny_model())
    with pytest.raises(ValueError, match=message):
        build_method(name, masks, None, settings, **run)


def test_a_method_takes_its_own_settings_class_or_a_mapping() -> None:
    masks = MaskSet.for_model(tiny_model())
    settings = method_class("rigl").Settings(sparsity=0.5, update_frequency=3)
    method = build_method("rigl", masks, None, settings, total_steps=10)
    assert method.settings is settings
    assert build_method("set", masks, None, settings, total_steps=10).settings is settings  # same class
    with pytest.raises(TypeError, match="granet takes GraNetSettings, not SETSettings"):
        build_method("granet", masks, None, settings, total_steps=10)


# ------------------------------------------------------------------------------------------------
# MaskSet basics


def test_sparsifiable_weights_selects_conv_and_linear_weights_only() -> None:
    model = tiny_model()
    assert [name for name, _ in sparsifiable_weights(model)] == ["conv1.weight", "conv2.weight", "fc.weight"]
    assert [
        name for name, _ in sparsifiable_weights(model, dense_first_layer=True, dense_classifier=True)
    ] == ["conv2.weight"]
    with pytest.raises(MaskError, match="no convolution or linear"):
        sparsifiable_weights(nn.Sequential(nn.ReLU()))


def test_mask_set_validates_and_round_trips() -> None:
    masks = MaskSet.for_model(tiny_model())
    with pytest.raises(MaskError, match="expected 3 masks"):
        masks.set([torch.ones(4, 3, 3, 3)])
    with pytest.raises(MaskError, match="conv2.weight has shape"):
        masks.set([torch.ones(4, 3, 3, 3), torch.ones(6, 4, 3), torch.ones(5, 6)])
    with pytest.raises(MaskError, match="values other than 0 and 1"):
        masks.set([torch.ones(4, 3, 3, 3), torch.full((6, 4, 3, 3), 0.5), torch.ones(5, 6)])
    new = [torch.rand(shape, generator=torch.Generator().manual_seed(0)) < 0.5 for shape in masks.shapes]
    masks.set(new)
    assert masks.active_counts() == [int(mask.sum()) for mask in new]
    assert not masks.is_dense
    other = MaskSet.for_model(tiny_model(seed=3))
    other.load_state_dict(masks.state_dict())
    assert torch.equal(other.checksums(), masks.checksums())
    with pytest.raises(MaskError, match="missing"):
        other.load_state_dict({"conv1.weight": new[0]})


def test_checksums_tell_masks_apart() -> None:
    masks = MaskSet([("w", torch.zeros(100))])
    sums = set()
    for position in range(100):  # every single-entry mask has its own checksum
        mask = torch.zeros(100, dtype=torch.bool)
        mask[position] = True
        masks.set([mask])
        sums.add(int(masks.checksums().sum()))
    assert len(sums) == 100


# ------------------------------------------------------------------------------------------------
# Invariants after real training steps


def assert_invariants(masks: MaskSet, optimizer: torch.optim.Optimizer) -> None:
    """SPEC section 2, items 1, 2 and 4: masked weights and their state exactly 0; dense gradients kept."""
    for name, weight, mask in zip(masks.names, masks.weights, masks.masks, strict=True):
        assert torch.equal(weight, weight * mask), name
        assert not bool(weight[mask == 0].any()), name
        for state in state_tensors(optimizer, weight):
            assert not bool(state[mask == 0].any()), f"optimizer state of masked {name} is not 0"
        assert weight.grad is not None and weight.grad.shape == weight.shape


@pytest.mark.parametrize("optimizer_kind", ["sgd", "adam"])
@pytest.mark.parametrize("name", ALL_METHODS)
def test_invariants_hold_after_every_step(name: str, optimizer_kind: str) -> None:
    model = tiny_model()
    optimizer, masks, method = setup_method(name, model, optimizer_kind, **SHORT_RUN)
    updates = []
    for step, batch in enumerate(make_batches(model, 30), start=1):
        update = train_step(model, optimizer, method, batch)
        assert_invariants(masks, optimizer)
        if update is not None:
            assert update.step == step
            updates.append(update)
    # Pruning events at 4, 8, .., 20 (t_e); GraNet regenerates on at 24 and 28, RigL / SET update every 4.
    # Pruning at initialisation never updates; AC/DC changes phase at 3, 5, .., 25 and 26 (defaults:
    # warm-up 10% = 3 steps, phases of round(1.5) = 2 steps, the final compressed phase from step 26).
    expected_updates = {"dense": 0, "static": 0, "gmp": 5, "gmp-layerwise": 5}.get(name, 7)
    expected_updates = {"snip": 0, "grasp": 0, "synflow": 0, "acdc": 13}.get(name, expected_updates)
    assert len(updates) == expected_updates
    if name != "dense":
        # Density of every method that ends sparse: the final target, to the weight.
        assert sum(masks.active_counts()) == round(0.2 * masks.total)


def test_pruned_weights_with_momentum_and_decay_stay_exactly_zero() -> None:
    # A large learning rate, momentum and weight decay: any leak through the optimizer would show.
    model = tiny_model()
    optimizer, masks, method = setup_method("static", model, "sgd", total_steps=50, sparsity=0.9)
    optimizer.param_groups[0]["lr"] = 1.0
    initial = [mask.clone() for mask in masks.masks]
    for batch in make_batches(model, 50):
        train_step(model, optimizer, method, batch)
        assert_invariants(masks, optimizer)
    assert all(torch.equal(before, after) for before, after in zip(initial, masks.masks, strict=True))
    # The optimizer really did see non-zero gradients at the masked positions (SPEC 2.4: dense gradient).
    assert all(
        bool(weight.grad[mask == 0].any()) for weight, mask in zip(masks.weights, masks.masks, strict=True)
    )


def copy_state(
    source: tuple[nn.Module, torch.optim.Optimizer], target: tuple[nn.Module, torch.optim.Optimizer]
) -> None:
    target[0].load_state_dict(copy.deepcopy(source[0].state_dict()))
    target[1].load_state_dict(copy.deepcopy(source[1].state_dict()))


def assert_reference_trajectory(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    reference: nn.Module,
    reference_optimizer: torch.optim.Optimizer,
    masks: MaskSet,
    update: MaskUpdate | None,
) -> None:
    """Bit-identical to the reference, except at positions regrown by this step's update (which start at 0)."""
    weight_ids = {id(weight) for weight in masks.weights}
    grown = {name: layer.grown for name, layer in update.layers.items()} if update else {}
    named_reference = dict(reference.named_parameters())
    for name, parameter in model.named_parameters():
        mirror = named_reference[name]
        states = list(optimizer.state[parameter].values())
        mirror_states = list(reference_optimizer.state[mirror].values())
        if id(parameter) not in weight_ids or update is None:
            assert torch.equal(parameter, mirror), name
            assert all(torch.equal(a, b) for a, b in zip(states, mirror_states, strict=True)), name
            continue
        mask = masks.masks[masks.names.index(name)].bool()
        differs = parameter != mirror
        for state, mirror_state in zip(states, mirror_states, strict=True):
            if state.shape == parameter.shape:
                differs |= state != mirror_state
                assert not bool(state[differs].any()), name
        # Differences only where the update regrew a weight: active, weight 0, state 0.
        assert bool(mask[differs].all()), name
        assert not bool(parameter[differs].any()), name
        assert int(differs.sum()) <= grown.get(name, 0), name
    for buffer, mirror_buffer in zip(model.buffers(), reference.buffers(), strict=True):
        assert torch.equal(buffer, mirror_buffer)


@pytest.mark.parametrize("optimizer_kind", ["sgd", "adam"])
@pytest.mark.parametrize("name", ALL_METHODS)
def test_active_weights_follow_the_reference_semantics(name: str, optimizer_kind: str) -> None:
    """SPEC 2.3: "optimizer.step() on dense gradients, then zero W and its state where M == 0", hand-rolled."""
    model = tiny_model()
    optimizer, masks, method = setup_method(name, model, optimizer_kind, **SHORT_RUN)
    reference = copy.deepcopy(model)
    reference_optimizer = type(optimizer)(reference.parameters(), **optimizer.defaults)
    reference_weights = dict(reference.named_parameters())
    for batch in make_batches(model, 30):
        update = train_step(model, optimizer, method, batch)

        reference_optimizer.zero_grad(set_to_none=True)
        backward(reference, batch)
        reference_optimizer.step()
        with torch.no_grad():
            for weight_name, mask in zip(masks.names, masks.bool_masks(), strict=True):
                weight = reference_weights[weight_name]
                weight.masked_fill_(~mask, 0.0)
                for state in state_tensors(reference_optimizer, weight):
                    state.masked_fill_(~mask, 0.0)

        assert_reference_trajectory(model, optimizer, reference, reference_optimizer, masks, update)
        if update is not None:
            # The update decided a new topology; continue the reference from the method's exact state.
            copy_state((model, optimizer), (reference, reference_optimizer))


# ------------------------------------------------------------------------------------------------
# Regeneration, checked by hand against the state right before the update


@contextmanager
def spy_on_regeneration(method: SparsityMethod) -> Iterator[list[dict[str, Any]]]:
    """Record weights, masks, gradients and generator state right before each `regenerate` call."""
    calls: list[dict[str, Any]] = []
    original = method.regenerate

    def spy(rate: float) -> tuple[list[int], list[int]]:
        calls.append(
            {
                "rate": rate,
                "weights": [weight.detach().clone() for weight in method.masks.weights],
                "masks": [mask.bool().clone() for mask in method.masks.masks],
                "gradients": [weight.grad.clone() for weight in method.masks.weights],
                "states": [
                    [state.clone() for state in state_tensors(method.optimizer, weight)]
                    for weight in method.masks.weights
                ],
                "generator": method.generator.get_state(),
                "momentum": [buffer.clone() for buffer in method.momentum.buffers]
                if method.momentum
                else None,
            }
        )
        return original(rate)

    method.regenerate = spy  # type: ignore[method-assign]
    try:
        yield calls
    finally:
        del method.regenerate


def expected_regeneration(
    weight: torch.Tensor, mask: torch.Tensor, growth_score: torch.Tensor, rate: float
) -> tuple[set[int], set[int]]:
    """(dropped, grown) flat indices by SPEC section 5, by a full sort in plain Python."""
    active = mask.reshape(-1).tolist()
    count = math.ceil(rate * sum(active))
    magnitudes = weight.abs().reshape(-1).tolist()
    drop_scores = [magnitude if on else math.inf for magnitude, on in zip(magnitudes, active, strict=True)]
    dropped = reference_order(drop_scores, count, largest=False)
    scores = growth_score.reshape(-1).tolist()
    grow_scores = [
        score if (not on or index in dropped) else -math.inf
        for index, (score, on) in enumerate(zip(scores, active, strict=True))
    ]
    return dropped, reference_order(grow_scores, count)


def run_and_check_regeneration(
    name: str, growth_scores: Callable[[dict[str, Any]], list[torch.Tensor]], **hyper: Any
) -> int:
    """Train until two updates happened and check each layer of each against the hand computation.

    Returns how many grown positions were inactive before the update (not just dropped and regrown).
    """
    model = tiny_model(TinyMLP)
    optimizer, masks, method = setup_method(
        name, model, "sgd", total_steps=40, sparsity=0.7, update_frequency=10, **hyper
    )
    fresh_growth = 0
    with spy_on_regeneration(method) as calls:
        for batch in make_batches(model, 20):
            before_counts = masks.active_counts()
            update = train_step(model, optimizer, method, batch)
            if update is None:
                continue
            call = calls[-1]
            assert call["rate"] == update.regen_rate
            scores = growth_scores(call)
            for index, layer_name in enumerate(masks.names):
                old_mask, weight = call["masks"][index], masks.weights[index]
                dropped, grown = expected_regeneration(
                    call["weights"][index], old_mask, scores[index], call["rate"]
                )
                new_mask = masks.masks[index].bool().reshape(-1)
                expected_mask = (
                    set(torch.nonzero(old_mask.reshape(-1)).reshape(-1).tolist()) - dropped
                ) | grown
                assert set(torch.nonzero(new_mask).reshape(-1).tolist()) == expected_mask, layer_name
                assert masks.active_counts()[index] == before_counts[index]
                layer = update.layers[layer_name]
                assert layer.dropped == layer.grown == len(dropped) == len(grown)
                old_active = set(torch.nonzero(old_mask.reshape(-1)).reshape(-1).tolist())
                # Newly activated positions start at exactly 0, with optimizer state 0.
                new_index = torch.tensor(sorted(grown - old_active), dtype=torch.long)
                assert not bool(weight.reshape(-1)[new_index].any())
                for state in state_tensors(optimizer, weight):
                    assert not bool(state.reshape(-1)[new_index].any())
                # Every position active before and after keeps its weight and state, including positions
                # dropped and regrown in the same event: they were never removed (the authors' code and
                # RigL's default, reinit_when_same=False).
                kept = torch.tensor(sorted(expected_mask & old_active), dtype=torch.long)
                assert torch.equal(weight.reshape(-1)[kept], call["weights"][index].reshape(-1)[kept])
                states = state_tensors(optimizer, weight)
                for state, old_state in zip(states, call["states"][index], strict=True):
                    assert torch.equal(state.reshape(-1)[kept], old_state.reshape(-1)[kept])
                fresh_growth += len(grown - old_active)
    assert len(calls) == 2
    return fresh_growth


def test_gradient_regeneration_by_hand() -> None:
    fresh = run_and_check_regeneration(
        "rigl", lambda call: [gradient.abs() for gradient in call["gradients"]]
    )
    # Growth picked positions that were masked, which only a dense gradient can rank.
    assert fresh > 0


def test_random_regeneration_draws_from_the_methods_generator() -> None:
    def scores(call: dict[str, Any]) -> list[torch.Tensor]:
        generator = torch.Generator()
        generator.set_state(call["generator"])
        return [torch.rand(gradient.shape, generator=generator) for gradient in call["gradients"]]

    assert run_and_check_regeneration("set", scores) > 0


def test_momentum_regeneration_uses_an_average_of_dense_gradients() -> None:
    model = tiny_model(TinyMLP)
    hand = [torch.zeros_like(weight) for _, weight in sparsifiable_weights(model)]

    # The hand-kept average must equal the method's: check it at the update and use it as the score.
    def scores(call: dict[str, Any]) -> list[torch.Tensor]:
        assert all(torch.equal(a, b) for a, b in zip(call["momentum"], hand, strict=True))
        return [buffer.abs() for buffer in hand]

    optimizer, masks, method = setup_method(
        "rigl", model, "sgd", total_steps=40, sparsity=0.7, update_frequency=10, growth="momentum"
    )
    with spy_on_regeneration(method) as calls:
        for batch in make_batches(model, 20):
            optimizer.zero_grad(set_to_none=True)
            backward(model, batch)
            for buffer, weight in zip(hand, masks.weights, strict=True):
                buffer.mul_(0.9).add_(weight.grad, alpha=0.1)
            optimizer.step()
            update = method.step()
            if update is not None:
                call = calls[-1]
                for index in range(len(masks)):
                    dropped, grown = expected_regeneration(
                        call["weights"][index], call["masks"][index], scores(call)[index], call["rate"]
                    )
                    old = set(torch.nonzero(call["masks"][index].reshape(-1)).reshape(-1).tolist())
                    new = set(torch.nonzero(masks.masks[index].reshape(-1)).reshape(-1).tolist())
                    assert new == (old - dropped) | grown
    assert len(calls) == 2
    assert update is not None and not update.dense_gradient  # momentum growth reads no fresh dense gradient


def test_regenerating_a_dense_layer_changes_no_weight() -> None:
    """A dense (e.g. ERK-capped) layer can only regrow what it just dropped: the event must leave it as it
    was. Zeroing dropped-and-regrown weights would reset the smallest ceil(r * n) weights of every dense
    layer at every event (half of them at GraNet's first event, r ~ 0.5)."""
    model = tiny_model(TinyMLP)
    optimizer, masks, method = setup_method("granet", model, "sgd", total_steps=100)
    train_step(model, optimizer, method, make_batches(model, 1)[0])
    assert masks.is_dense
    weights = [weight.detach().clone() for weight in masks.weights]
    states = [[state.clone() for state in state_tensors(optimizer, weight)] for weight in masks.weights]
    with torch.no_grad():
        dropped, grown = method.regenerate(0.5)
    assert dropped == grown == [math.ceil(0.5 * n) for n in masks.numels]
    assert masks.active_counts() == masks.numels
    for weight, before, state_before in zip(masks.weights, weights, states, strict=True):
        assert torch.equal(weight, before)
        for state, old in zip(state_tensors(optimizer, weight), state_before, strict=True):
            assert torch.equal(state, old)


# ------------------------------------------------------------------------------------------------
# Gradual magnitude pruning through the methods


@pytest.mark.parametrize("layerwise", [False, True])
def test_gmp_events_hit_exact_counts(layerwise: bool) -> None:
    model = tiny_model()
    name = "gmp-layerwise" if layerwise else "gmp"
    optimizer, masks, method = setup_method(
        name, model, "sgd", total_steps=30, sparsity=0.9, update_frequency=5, prune_end=18
    )
    seen = []
    for batch in make_batches(model, 30):
        before = masks.active_counts()
        update = train_step(model, optimizer, method, batch)
        if update is None:
            continue
        seen.append(update.step)
        sparsity = 0.9 - 0.9 * (1 - update.step / 18) ** 3
        assert update.target_density == pytest.approx(1 - sparsity, abs=1e-12)
        counts = masks.active_counts()
        if layerwise:
            assert counts == [
                min(round((1 - sparsity) * n), a) for n, a in zip(masks.numels, before, strict=True)
            ]
        else:
            assert sum(counts) == round((1 - sparsity) * masks.total)
        assert [layer.pruned for layer in update.layers.values()] == [
            b - a for b, a in zip(before, counts, strict=True)
        ]
        assert update.regen_rate is None and not update.dense_gradient
    assert seen == [5, 10, 15, 18]
    assert sum(masks.active_counts()) == round(0.1 * masks.total) or layerwise


def test_one_shot_gmp_prunes_to_the_final_sparsity_at_the_start_step() -> None:
    model = tiny_model()
    optimizer, masks, method = setup_method(
        "gmp", model, "sgd", total_steps=20, sparsity=0.9, update_frequency=100, prune_start=7, prune_end=7
    )
    updates = [
        (step, train_step(model, optimizer, method, batch))
        for step, batch in enumerate(make_batches(model, 20), 1)
    ]
    events = [(step, update) for step, update in updates if update is not None]
    assert [step for step, _ in events] == [7]
    assert sum(masks.active_counts()) == round(0.1 * masks.total)


def test_static_and_dense_never_change_their_masks() -> None:
    model = tiny_model()
    optimizer, masks, method = setup_method("dense", model, "sgd", total_steps=10)
    assert masks.is_dense and masks.density() == 1.0
    for batch in make_batches(model, 10):
        assert train_step(model, optimizer, method, batch) is None
    assert masks.is_dense


def test_rigl_stops_updating_after_update_until() -> None:
    model = tiny_model()
    optimizer, masks, method = setup_method(
        "rigl", model, "sgd", total_steps=40, sparsity=0.8, update_frequency=5, update_until=22
    )
    steps = [
        step
        for step, batch in enumerate(make_batches(model, 40), 1)
        if train_step(model, optimizer, method, batch)
    ]
    assert steps == [5, 10, 15, 20]
    # RigL's rate is annealed over the updating part of the run: r(20) with horizon 22.
    assert method.rate(22) == 0.005


# ------------------------------------------------------------------------------------------------
# A GraNet trace


def hand_sparsity(t: int, initial: float, final: float, start: int, end: int) -> float:
    if t >= end:
        return final
    return final + (initial - final) * (1 - (t - start) / (end - start)) ** 3


def hand_rate(t: int, total: int) -> float:
    return 0.005 + (0.5 - 0.005) * (1 + math.cos(math.pi * t / total)) / 2


@pytest.mark.parametrize("regen_until", ["end", "prune_end"])
@pytest.mark.parametrize("init_sparsity", [0.0, 0.5])
def test_granet_trace(regen_until: str, init_sparsity: float) -> None:
    total, every, start, end, final = 300, 20, 10, 190, 0.9
    model = tiny_model(TinyMLP)
    optimizer, masks, method = setup_method(
        "granet",
        model,
        "sgd",
        total_steps=total,
        sparsity=final,
        init_sparsity=init_sparsity,
        update_frequency=every,
        prune_start=start,
        prune_end=end,
        regen_until=regen_until,
    )
    if init_sparsity == 0.0:
        assert masks.is_dense
    else:
        assert masks.active_counts() == layer_counts(masks.shapes, 1.0 - init_sparsity, "erk")
    initial = method.initial_record()
    assert initial.step == 0 and initial.density == sum(masks.active_counts()) / masks.total

    expected_steps = list(range(20, 181, 20)) + [190]
    if regen_until == "end":
        # Regeneration continues every dT after t_e, but not at the very last step (300): weights regrown
        # there would never train.
        expected_steps += list(range(200, 300, 20))
    seen = []
    for step, batch in enumerate(make_batches(model, total, batch_size=4), start=1):
        before = masks.active_counts()
        update = train_step(model, optimizer, method, batch)
        if update is None:
            continue
        seen.append(step)
        after = masks.active_counts()
        pruning_event = step <= end
        sparsity = hand_sparsity(step, init_sparsity, final, start, end)
        assert update.step == step
        assert update.target_density == pytest.approx(1 - sparsity, abs=1e-12)
        if pruning_event:
            assert sum(after) == round((1 - sparsity) * masks.total)
        else:
            assert after == before
        assert update.density == sum(after) / masks.total
        assert update.regen_rate == pytest.approx(hand_rate(step, total), abs=1e-15)
        assert update.dense_gradient
        assert update.checksum == int(masks.checksums().sum())
        for index, layer_name in enumerate(masks.names):
            layer = update.layers[layer_name]
            assert layer.size == masks.numels[index]
            assert layer.active == after[index]
            assert before[index] - layer.pruned - layer.dropped + layer.grown == layer.active
            assert (
                layer.dropped == layer.grown == math.ceil(update.regen_rate * (before[index] - layer.pruned))
            )
            if not pruning_event:
                assert layer.pruned == 0
        record = update.record()
        assert record["density"] == update.density and record["regen/rate"] == update.regen_rate
        assert record["mask/checksum"] == update.checksum
        assert {key for key in record if key.startswith("layers/")} == {
            f"layers/{name}/{field}"
            for name in masks.names
            for field in ("density", "pruned", "dropped", "grown")
        }
    assert seen == expected_steps
    assert sum(masks.active_counts()) == round((1 - final) * masks.total)
    assert masks.density() == pytest.approx(1 - final, abs=0.5 / masks.total)


# ------------------------------------------------------------------------------------------------
# Exact resume through a real file


def resume_hyper(name: str) -> dict[str, Any]:
    hyper: dict[str, Any] = {"total_steps": 60, "sparsity": 0.8, "update_frequency": 10, "prune_end": 40}
    if name == "rigl-momentum":
        hyper["growth"] = "momentum"
    return hyper


@pytest.mark.parametrize("name", ["granet", "rigl", "set", "gmp", "rigl-momentum", "mest", "acdc"])
def test_state_dict_round_trip_is_bit_identical(name: str, tmp_path: Path) -> None:
    method_name = name.split("-momentum")[0]
    batches = make_batches(tiny_model(), 60)

    model = tiny_model()
    optimizer, masks, method = setup_method(method_name, model, "sgd", **resume_hyper(name))
    uninterrupted = []
    for batch in batches:
        update = train_step(model, optimizer, method, batch)
        if update is not None:
            uninterrupted.append((update.step, masks.state_dict()))

    model = tiny_model()
    optimizer, masks, method = setup_method(method_name, model, "sgd", **resume_hyper(name))
    for batch in batches[:23]:
        train_step(model, optimizer, method, batch)
    path = tmp_path / "state.pt"
    torch.save(
        {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "method": method.state_dict()},
        path,
    )
    del model, optimizer, masks, method

    state = torch.load(path, weights_only=True)
    model = tiny_model(seed=99)  # different initial weights and, for sparse starts, different masks
    optimizer, masks, method = setup_method(method_name, model, "sgd", **{**resume_hyper(name), "seed": 7})
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    method.load_state_dict(state["method"])
    resumed = []
    for batch in batches[23:]:
        update = train_step(model, optimizer, method, batch)
        if update is not None:
            resumed.append((update.step, masks.state_dict()))

    after_resume = [(step, snapshot) for step, snapshot in uninterrupted if step > 23]
    assert [step for step, _ in resumed] == [step for step, _ in after_resume]
    assert len(resumed) >= 2
    for (_, got), (_, want) in zip(resumed, after_resume, strict=True):
        assert all(torch.equal(got[key], want[key]) for key in want)

    reference = tiny_model()
    reference_optimizer, _, reference_method = setup_method(
        method_name, reference, "sgd", **resume_hyper(name)
    )
    for batch in batches:
        train_step(reference, reference_optimizer, reference_method, batch)
    for (key, got), want in zip(model.state_dict().items(), reference.state_dict().values(), strict=True):
        assert torch.equal(got, want), key
    assert method.steps == reference_method.steps == 60


def test_loading_the_wrong_methods_state_raises() -> None:
    model = tiny_model()
    _, _, granet = setup_method("granet", model, "sgd", total_steps=10)
    _, _, rigl = setup_method("rigl", tiny_model(), "sgd", total_steps=10)
    with pytest.raises(ValueError, match="state of method 'granet' cannot be loaded into 'rigl'"):
        rigl.load_state_dict(granet.state_dict())


def test_apply_zeroes_optimizer_state_loaded_after_the_masks() -> None:
    """The cached list of optimizer-state tensors must follow `optimizer.load_state_dict`."""
    model = tiny_model()
    optimizer, masks, method = setup_method("static", model, "sgd", total_steps=10, sparsity=0.9)
    for batch in make_batches(model, 2):
        train_step(model, optimizer, method, batch)
    saved = copy.deepcopy(optimizer.state_dict())
    for buffer in saved["state"].values():
        buffer["momentum_buffer"].fill_(1.0)  # dense state, as if from a dense checkpoint
    optimizer.load_state_dict(saved)
    masks.apply(optimizer)
    assert_invariants(masks, optimizer)


# ------------------------------------------------------------------------------------------------
# The cost of the per-step path: no host synchronisation, no per-parameter dict look-ups, no sorts


class CountingState(dict):
    """Stands in for `optimizer.state`; counts look-ups while `counting` is set."""

    counting = False
    lookups = 0

    def __missing__(self, key: object) -> dict:
        value: dict = {}
        self[key] = value
        return value

    def _count(self) -> None:
        if CountingState.counting:
            CountingState.lookups += 1

    def __getitem__(self, key: object) -> Any:
        self._count()
        return super().__getitem__(key)

    def get(self, key: object, default: Any = None) -> Any:
        self._count()
        return super().get(key, default)

    def __contains__(self, key: object) -> bool:
        self._count()
        return super().__contains__(key)


def forbid(*_: Any, **__: Any) -> Any:
    raise AssertionError("forbidden call in the sparse step path")


@pytest.mark.parametrize("name", [*ALL_METHODS, "rigl-momentum"])
def test_non_update_steps_do_not_synchronise_or_look_up_per_parameter(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A model with many masked tensors, so per-parameter work would be visible in the count.
    model = nn.Sequential(*[nn.Linear(6, 6) for _ in range(12)])
    model.input_shape, model.num_classes = (6,), 6  # type: ignore[assignment]
    growth = {"growth": "momentum"} if name == "rigl-momentum" else {}
    optimizer, masks, method = setup_method(
        name.split("-momentum")[0],
        model,
        "adam",
        total_steps=100,
        sparsity=0.5,
        init_sparsity=0.5 if name == "granet" else 0.0,
        update_frequency=50,
        prune_start=0,
        prune_end=50,
        **growth,
    )
    optimizer.state = CountingState(optimizer.state)  # type: ignore[assignment]
    for step, batch in enumerate(make_batches(model, 6), start=1):
        optimizer.zero_grad(set_to_none=True)
        backward(model, batch)
        optimizer.step()
        CountingState.lookups = 0
        with monkeypatch.context() as patch:
            for attribute in (
                "item",
                "__bool__",
                "__int__",
                "__float__",
                "__index__",
                "tolist",
                "numpy",
                "cpu",
            ):
                patch.setattr(torch.Tensor, attribute, forbid)
            CountingState.counting = True
            try:
                assert method.step() is None
            finally:
                CountingState.counting = False
        # At most one look-up for the whole set (the cache key), never one per masked tensor. The first
        # step is exempt: the optimizer creates its state there and the mask set builds its cache once.
        if step > 1:
            assert CountingState.lookups <= 1, (step, CountingState.lookups)


@pytest.mark.parametrize("name", ["gmp", "gmp-layerwise", "granet", "rigl", "set", "static"])
def test_mask_updates_never_sort(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_model(TinyMLP)
    optimizer, masks, method = setup_method(
        name, model, "sgd", total_steps=20, sparsity=0.8, update_frequency=5
    )
    for target, attribute in [
        (torch, "sort"), (torch, "argsort"), (torch, "msort"), (torch.Tensor, "sort"), (torch.Tensor, "argsort"),
        (np, "sort"), (np, "argsort"), (np, "lexsort"),
    ]:  # fmt: skip
        monkeypatch.setattr(target, attribute, forbid)
    original_topk = torch.topk

    def unsorted_topk_only(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("sorted", True):
            raise AssertionError("sorted top-k in a mask update")
        return original_topk(*args, **kwargs)

    monkeypatch.setattr(torch, "topk", unsorted_topk_only)
    monkeypatch.setattr(torch.Tensor, "topk", unsorted_topk_only)
    # Also the initial masks of a sparse start are drawn without sorting.
    _, fresh_masks, _ = setup_method(name, tiny_model(TinyMLP), "sgd", total_steps=20, sparsity=0.8)
    updates = [train_step(model, optimizer, method, batch) for batch in make_batches(model, 20)]
    # t_e defaults to half the run: pruning events at 5 and 10; RigL, SET and GraNet (regenerating to the
    # end) update at 5, 10, 15 (never at the last step, 20: what they regrew there would never train).
    expected = {"static": 0, "gmp": 2, "gmp-layerwise": 2}.get(name, 3)
    assert sum(update is not None for update in updates) == expected


@pytest.mark.parametrize(
    ("rate", "active", "ceil", "nearest"),
    [
        (0.005, 20, 1, 0),
        (0.1, 20, 2, 2),
        (0.125, 20, 3, 3),
        (0.12, 20, 3, 2),
        (0.5, 7, 4, 4),
        (0.0, 20, 0, 0),
    ],
)
def test_drop_count_rounding(rate, active, ceil, nearest) -> None:
    """ceil drops at least one weight of every layer at every event; nearest rounds r * n half up."""
    from harness.sparse.methods.base import drop_count

    assert drop_count(rate, active, "ceil") == ceil
    assert drop_count(rate, active, "nearest") == nearest
    with pytest.raises(ValueError, match="drop_rounding"):
        drop_count(rate, active, "floor")


def test_nearest_rounding_drops_nothing_where_r_n_is_below_a_half() -> None:
    """The same regeneration event with both roundings: at r = 0.001 ceil moves one weight per layer,
    nearest none (r * n < 0.5 in every layer of the tiny network), and the masks are unchanged."""
    results = {}
    for rounding in ("ceil", "nearest"):
        model = tiny_model(TinyMLP)
        optimizer, masks, method = setup_method(
            "granet", model, "sgd", total_steps=100, sparsity=0.5, drop_rounding=rounding
        )
        train_step(model, optimizer, method, make_batches(model, 1)[0])
        before = [mask.clone() for mask in masks.masks]
        with torch.no_grad():
            dropped, _ = method.regenerate(0.001)
        results[rounding] = dropped
        if rounding == "nearest":
            assert all(torch.equal(a, b) for a, b in zip(before, masks.masks, strict=True))
    layers = len(results["ceil"])
    assert layers > 1 and results["ceil"] == [1] * layers and results["nearest"] == [0] * layers

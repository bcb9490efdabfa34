"""The cubic sparsity schedule and the cosine regeneration rate (SPEC sections 4 and 5), by exact values."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch
from sparse_helpers import one_thread

from harness.sparse import MaskSet, build_method
from harness.sparse.schedules import CosineRate, CubicSparsity


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Iterator[None]:
    with one_thread():
        yield


def test_cubic_values_at_chosen_steps() -> None:
    schedule = CubicSparsity(initial=0.0, final=0.9, start=0, end=1000, every=100)
    # s(t) = 0.9 - 0.9 * (1 - t/1000)^3, by hand:
    assert schedule.sparsity(100) == pytest.approx(0.9 - 0.9 * 0.729, abs=1e-15)  # 0.2439
    assert schedule.sparsity(500) == pytest.approx(0.9 - 0.9 * 0.125, abs=1e-15)  # 0.7875
    assert schedule.sparsity(900) == pytest.approx(0.9 - 0.9 * 0.001, abs=1e-15)  # 0.8991
    assert schedule.sparsity(100) == pytest.approx(0.2439, abs=1e-15)
    assert schedule.sparsity(500) == pytest.approx(0.7875, abs=1e-15)


def test_cubic_from_a_sparse_start_with_an_offset() -> None:
    schedule = CubicSparsity(initial=0.5, final=0.98, start=200, end=1000, every=100)
    # t = 600 is halfway: 0.98 + (0.5 - 0.98) * 0.5^3 = 0.98 - 0.06 = 0.92.
    assert schedule.sparsity(600) == pytest.approx(0.92, abs=1e-15)
    # t = 400: a quarter of the way: 0.98 - 0.48 * 0.75^3 = 0.98 - 0.2025 = 0.7775.
    assert schedule.sparsity(400) == pytest.approx(0.7775, abs=1e-15)
    assert schedule.sparsity(200) == 0.5
    assert schedule.sparsity(150) == 0.5


def test_cubic_is_exactly_final_at_and_after_the_end() -> None:
    schedule = CubicSparsity(initial=0.0, final=0.9, start=0, end=1000, every=100)
    assert schedule.sparsity(1000) == 0.9
    assert schedule.sparsity(5000) == 0.9


def test_events_at_multiples_inside_the_window_only() -> None:
    schedule = CubicSparsity(initial=0.0, final=0.9, start=250, end=1000, every=100)
    events = schedule.events()
    assert events == [300, 400, 500, 600, 700, 800, 900, 1000]
    assert [t for t in range(0, 2000) if schedule.is_event(t)] == events


def test_final_event_lands_on_the_end_when_it_is_not_a_multiple() -> None:
    schedule = CubicSparsity(initial=0.0, final=0.9, start=0, end=1050, every=100)
    events = schedule.events()
    assert events == [100, 200, 300, 400, 500, 600, 700, 800, 900, 1000, 1050]
    assert schedule.sparsity(events[-1]) == 0.9
    assert not schedule.is_event(1100)


def test_event_at_the_start_when_it_is_a_multiple_but_never_at_step_zero() -> None:
    assert CubicSparsity(0.0, 0.9, start=200, end=500, every=100).events() == [200, 300, 400, 500]
    assert CubicSparsity(0.0, 0.9, start=0, end=300, every=100).events() == [100, 200, 300]
    assert not CubicSparsity(0.0, 0.9, start=0, end=300, every=100).is_event(0)


def test_one_shot_schedule_reaches_final_sparsity_at_its_only_event() -> None:
    # t_0 == t_e: a single event at t_e, which must prune to s_f (the SPEC: s_f is reached exactly at t_e).
    schedule = CubicSparsity(initial=0.0, final=0.9, start=100, end=100, every=30)
    assert schedule.events() == [100]
    assert schedule.sparsity(100) == 0.9
    assert schedule.sparsity(99) == 0.0


def test_gmp_turns_its_fractions_into_the_pruning_window_in_steps() -> None:
    def window(total_steps: int, steps_per_epoch: int | None = None, **settings: float) -> tuple[int, int]:
        masks = MaskSet([("w", torch.zeros(10))])
        run = {"total_steps": total_steps, "steps_per_epoch": steps_per_epoch}
        schedule = build_method("gmp", masks, None, settings, **run).schedule
        return schedule.start, schedule.end

    assert window(100) == (0, 50)  # t_e defaults to half of the run
    assert window(100, prune_start=0.25, prune_end=1.0) == (25, 100)
    # An end at 0 is moved to step 1 (the first step that can prune); an end equal to the start prunes once.
    assert window(100, prune_end=0.0) == (0, 1)
    assert window(100, prune_start=0.4, prune_end=0.4) == (40, 40)
    # fraction x epochs x steps per epoch, in that order, as the trainer computes its LR milestones (and as
    # every existing run was scheduled): here the two products differ in their last bit, across .5.
    assert 0.05 * 3 * 30 == 4.500000000000001 and 0.05 * 90 == 4.5
    assert window(90, steps_per_epoch=30, prune_end=0.05) == (0, 5)
    assert window(90, prune_end=0.05) == (0, 4)  # one epoch of 90 steps: 4.5 rounds to even


def test_bad_schedule_raises() -> None:
    with pytest.raises(ValueError, match="start <= end"):
        CubicSparsity(0.0, 0.9, start=10, end=5, every=1)
    with pytest.raises(ValueError, match="every >= 1"):
        CubicSparsity(0.0, 0.9, start=0, end=5, every=0)


def test_cosine_rate_exact_values() -> None:
    rate = CosineRate(initial=0.5, minimum=0.005, horizon=1000)
    assert rate(0) == 0.5
    assert rate(1000) == 0.005
    assert rate(500) == pytest.approx(0.005 + 0.495 * 0.5, abs=1e-15)  # 0.2525
    assert rate(500) == pytest.approx(0.2525, abs=1e-15)
    # A quarter: (1 + cos(pi/4)) / 2 = (1 + sqrt(2)/2) / 2.
    assert rate(250) == pytest.approx(0.005 + 0.495 * (1 + math.sqrt(2) / 2) / 2, abs=1e-15)
    # Held at r_min after the horizon.
    assert rate(4000) == 0.005

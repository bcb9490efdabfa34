"""FLOPs accounting (SPEC section 10) against hand-computed values on TinyNet.

TinyNet on a 3 x 8 x 8 input:
- conv1 3 -> 4, 3x3, padding 1: output 4 x 8 x 8, 64 positions, 108 weights: 2 * 108 * 64 = 13,824
- conv2 4 -> 6, 3x3, stride 2, padding 1: output 6 x 4 x 4, 16 positions, 216 weights: 2 * 216 * 16 = 6,912
- fc 6 -> 5: one position, 30 weights: 2 * 30 = 60
Dense inference: 20,796 FLOPs per sample.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from sparse_helpers import make_batches, one_thread, setup_method, tiny_model, train_step
from torch import nn

from harness.engine.flops import InferenceFlops, TrainingFlops, inference_flops, output_positions
from harness.sparse import MaskSet


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Iterator[None]:
    with one_thread():
        yield


POSITIONS = {"conv1.weight": 64, "conv2.weight": 16, "fc.weight": 1}
DENSE = 13_824 + 6_912 + 60


def hand_flops(counts: list[int]) -> float:
    """2 * active * positions, summed over conv1, conv2, fc."""
    return float(
        sum(2 * count * positions for count, positions in zip(counts, POSITIONS.values(), strict=True))
    )


def masks_with_counts(model: nn.Module, counts: list[int], **options: bool) -> MaskSet:
    masks = MaskSet.for_model(model, **options)
    new = []
    for shape, count in zip(masks.shapes, counts, strict=True):
        flat = torch.zeros(torch.Size(shape).numel(), dtype=torch.bool)
        flat[:count] = True
        new.append(flat.view(shape))
    masks.set(new)
    return masks


def test_output_positions_per_sample() -> None:
    model = tiny_model()
    model.train()
    positions = output_positions(model, (3, 8, 8))
    assert positions == POSITIONS
    assert model.training  # restored


def test_dense_inference_flops() -> None:
    model = tiny_model()
    flops = inference_flops(model, None, output_positions(model, (3, 8, 8)))
    assert flops == InferenceFlops(sparse=20_796.0, dense=20_796.0)
    assert DENSE == 20_796
    assert flops.relative == 1.0


def test_masked_inference_flops() -> None:
    model = tiny_model()
    masks = masks_with_counts(model, [54, 100, 10])
    flops = inference_flops(model, masks, POSITIONS)
    # 2*54*64 + 2*100*16 + 2*10*1 = 6,912 + 3,200 + 20 = 10,132
    assert flops.sparse == 10_132.0
    assert flops.dense == 20_796.0
    assert flops.relative == pytest.approx(10_132 / 20_796)


def test_unmasked_layers_count_as_dense() -> None:
    model = tiny_model()
    masks = masks_with_counts(model, [54, 100], dense_classifier=True)
    assert inference_flops(model, masks, POSITIONS).sparse == 6_912 + 3_200 + 60


def test_masks_of_another_model_raise() -> None:
    model = tiny_model()
    wrapped = nn.Sequential(tiny_model())  # names "0.conv1.weight", ...: they match no layer of `model`
    with pytest.raises(ValueError, match="not conv/linear weights of this model"):
        inference_flops(model, MaskSet.for_model(wrapped), POSITIONS)


def test_training_flops_dense_and_static_by_hand() -> None:
    dense = TrainingFlops(InferenceFlops(sparse=20_796.0, dense=20_796.0))
    for _ in range(3):
        dense.step(8)
    assert dense.total == 3 * 3 * 8 * 20_796 == 1_497_312
    assert dense.relative == 1.0

    static = TrainingFlops(InferenceFlops(sparse=10_132.0, dense=20_796.0))
    for _ in range(3):
        static.step(8)
    assert static.total == 3 * 3 * 8 * 10_132
    assert static.dense_total == 1_497_312
    assert static.relative == pytest.approx(10_132 / 20_796)
    restored = TrainingFlops(InferenceFlops(sparse=1.0, dense=1.0))
    restored.load_state_dict(static.state_dict())
    assert (restored.total, restored.dense_total) == (static.total, static.dense_total)


@pytest.mark.parametrize("name", ["dense", "static", "granet"])
def test_training_flops_over_real_steps(name: str) -> None:
    """Per step: 3 * samples * inference FLOPs of the masks the step trained with; at a mask update that
    read the dense gradient, the weight-gradient product is dense: + samples * (dense - sparse)."""
    batch_size, steps = 8, 13
    model = tiny_model()
    optimizer, masks, method = setup_method(
        name, model, "sgd", total_steps=steps, sparsity=0.8, update_frequency=4, prune_end=8
    )
    flops = TrainingFlops(inference_flops(model, masks, output_positions(model, (3, 8, 8))))
    expected = 0.0
    update_steps = []
    for step, batch in enumerate(make_batches(model, steps, batch_size=batch_size), start=1):
        counts = masks.active_counts()  # the masks this step's forward and backward passes ran with
        update = train_step(model, optimizer, method, batch)
        flops.step(batch_size)
        expected += 3 * batch_size * hand_flops(counts)
        if update is not None:
            update_steps.append(step)
            if update.dense_gradient:
                flops.dense_gradient(batch_size)
                expected += batch_size * (DENSE - hand_flops(counts))
            flops.masks_changed(inference_flops(model, masks, POSITIONS))
        assert flops.total == expected
    assert flops.dense_total == steps * 3 * batch_size * DENSE
    if name == "dense":
        assert flops.relative == 1.0 and update_steps == []
    elif name == "static":
        assert update_steps == []
        assert flops.relative == pytest.approx(hand_flops(masks.active_counts()) / DENSE)
    else:
        # GraNet from dense: pruning at 4 and 8 (t_e), regeneration at 12 (not at the last step, 13);
        # all three read the dense gradient.
        assert update_steps == [4, 8, 12]
        assert flops.relative < 1.0

"""Layer-wise densities (SPEC section 3) on the real ResNet-20 and VGG-19 shapes, checked against an
independent solve (bisection on eps), plus exact counts and the initial masks the methods draw."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch
from sparse_helpers import ARCH_SHAPES, build_cifar_model, one_thread, settings_in_steps

from harness.sparse import MaskSet, build_method, sparsifiable_weights
from harness.sparse.distributions import apportion, layer_counts, layer_densities


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Iterator[None]:
    with one_thread():
        yield


DENSITIES = (0.5, 0.1, 0.02)


def closed_form_score(shape: tuple[int, ...], kind: str, power: float = 1.0) -> float:
    """SPEC section 3, written out again: uniform 1; ER (n_in + n_out) / (n_in * n_out) over channels only;
    ERK (sum of all dims) / (product of all dims), to a power."""
    if kind == "uniform":
        return 1.0
    out_channels, in_channels = shape[0], shape[1]
    if kind == "er":
        return (in_channels + out_channels) / (in_channels * out_channels)
    return (sum(shape) / math.prod(shape)) ** power


def bisection_densities(
    shapes: list[tuple[int, ...]], density: float, kind: str, power: float = 1.0
) -> list[float]:
    """Solve sum_l min(1, eps * score_l) * n_l = d * N for eps by bisection.

    The left side is continuous and non-decreasing in eps, so the root is the eps of the iterative
    "cap the overflowing layers and solve again" algorithm of the SPEC, reached by a different route.
    """
    sizes = [math.prod(shape) for shape in shapes]
    scores = [closed_form_score(shape, kind, power) for shape in shapes]
    target = density * sum(sizes)

    def active(epsilon: float) -> float:
        return sum(min(1.0, epsilon * score) * size for score, size in zip(scores, sizes, strict=True))

    low, high = 0.0, 1.0
    while active(high) < target:
        high *= 2.0
    for _ in range(200):
        middle = (low + high) / 2.0
        if active(middle) < target:
            low = middle
        else:
            high = middle
    epsilon = (low + high) / 2.0
    return [min(1.0, epsilon * score) for score in scores]


@pytest.mark.parametrize("arch", ["resnet20", "vgg19"])
def test_hardcoded_shapes_are_the_models_shapes(arch: str) -> None:
    model = build_cifar_model(arch)
    shapes = [tuple(weight.shape) for _, weight in sparsifiable_weights(model)]
    assert shapes == ARCH_SHAPES[arch]


def test_hand_solved_two_layer_example_caps_the_small_layer() -> None:
    # Layers 4x2 (n=8, ERK score 6/8 = 0.75) and 100x100 (n=10,000, score 200/10,000 = 0.02); d = 0.5,
    # target 5,004. First solve: eps = 5004 / (0.75*8 + 0.02*10000) = 5004/206 = 24.29 -> the small layer
    # would get 18.2 > 1, so it is dense. Second solve: eps = (5004 - 8) / 200 = 24.98 -> 0.4996.
    densities = layer_densities([(4, 2), (100, 100)], 0.5, "erk")
    assert densities[0] == 1.0
    assert densities[1] == pytest.approx(0.4996, rel=1e-12)
    assert layer_counts([(4, 2), (100, 100)], 0.5, "erk") == [8, 4996]


@pytest.mark.parametrize("arch", ["resnet20", "vgg19"])
@pytest.mark.parametrize("kind", ["uniform", "er", "erk"])
@pytest.mark.parametrize("density", DENSITIES)
def test_densities_match_the_independent_solve(arch: str, kind: str, density: float) -> None:
    shapes = ARCH_SHAPES[arch]
    expected = bisection_densities(shapes, density, kind)
    actual = layer_densities(shapes, density, kind)
    assert actual == pytest.approx(expected, rel=1e-9, abs=1e-12)
    # Capped layers are exactly 1.0, the others strictly below.
    for got, want in zip(actual, expected, strict=True):
        assert (got == 1.0) == (want >= 1.0 - 1e-12)
    sizes = [math.prod(shape) for shape in shapes]
    assert sum(d * n for d, n in zip(actual, sizes, strict=True)) == pytest.approx(
        density * sum(sizes), rel=1e-12
    )


@pytest.mark.parametrize(
    ("arch", "density", "capped"),
    [
        # From the closed form: at d = 0.5 ERK caps most of ResNet-20's first two stages, its 32-channel
        # shortcut and the classifier; at 0.1 only the first shortcut and the classifier; at 0.02 nothing.
        ("resnet20", 0.5, {0, 1, 2, 3, 4, 5, 6, 7, 9, 16, 21}),
        ("resnet20", 0.1, {9, 21}),
        ("resnet20", 0.02, set()),
        ("vgg19", 0.5, {0, 1, 2, 3, 4, 16}),
        ("vgg19", 0.1, {0, 16}),
        ("vgg19", 0.02, {0, 16}),
    ],
)
def test_erk_caps_exactly_the_overflowing_layers(arch: str, density: float, capped: set[int]) -> None:
    densities = layer_densities(ARCH_SHAPES[arch], density, "erk")
    assert {index for index, value in enumerate(densities) if value == 1.0} == capped


def test_uniform_and_er_on_conv_use_channels_only() -> None:
    shapes = [(8, 4, 3, 3), (8, 8, 1, 1), (10, 8)]
    assert layer_densities(shapes, 0.3, "uniform") == pytest.approx([0.3, 0.3, 0.3])
    er = layer_densities(shapes, 0.3, "er")
    # The kernel size does not enter ER: the ratio of two conv layers' densities is the ratio of
    # (n_in + n_out) / (n_in * n_out) = 12/32 and 16/64.
    assert er[0] / er[1] == pytest.approx((12 / 32) / (16 / 64))
    assert er[2] / er[1] == pytest.approx((18 / 80) / (16 / 64))


def test_erk_power_scales_the_scores() -> None:
    shapes = ARCH_SHAPES["resnet20"]
    assert layer_densities(shapes, 0.05, "erk", power=0.5) == pytest.approx(
        bisection_densities(shapes, 0.05, "erk", power=0.5), rel=1e-9
    )


@pytest.mark.parametrize("arch", ["resnet20", "vgg19"])
@pytest.mark.parametrize("kind", ["uniform", "er", "erk"])
@pytest.mark.parametrize("density", DENSITIES)
def test_counts_are_exact(arch: str, kind: str, density: float) -> None:
    shapes = ARCH_SHAPES[arch]
    sizes = [math.prod(shape) for shape in shapes]
    counts = layer_counts(shapes, density, kind)
    assert sum(counts) == round(density * sum(sizes))
    ideal = bisection_densities(shapes, density, kind)
    for count, share, size in zip(counts, ideal, sizes, strict=True):
        assert 0 <= count <= size
        assert abs(count - share * size) <= 1.0
        if share >= 1.0:
            assert count == size


def test_density_one_is_all_dense_and_density_zero_is_empty() -> None:
    shapes = ARCH_SHAPES["resnet20"]
    sizes = [math.prod(shape) for shape in shapes]
    assert layer_densities(shapes, 1.0, "erk") == [1.0] * len(shapes)
    assert layer_counts(shapes, 1.0, "erk") == sizes
    assert layer_counts(shapes, 0.0, "erk") == [0] * len(shapes)


def test_apportion_largest_remainder_ties_by_index() -> None:
    # Remainders 0.5, 0.5, 0.5: two extra weights go to the first two layers.
    assert apportion([1.5, 1.5, 1.5], [10, 10, 10], 5) == [2, 2, 1]
    # A full layer cannot take an extra weight.
    assert apportion([3.0, 0.6, 0.4], [3, 5, 5], 4) == [3, 1, 0]


def test_bad_distribution_and_density_raise() -> None:
    with pytest.raises(ValueError, match="unknown distribution 'gaussian'"):
        layer_densities([(4, 4)], 0.5, "gaussian")
    with pytest.raises(ValueError, match="density must be in"):
        layer_densities([(4, 4)], 1.5, "erk")


# ------------------------------------------------------------------------------------------------
# Initial masks drawn by the methods


def initial_masks(arch_model: torch.nn.Module, method: str, density: float, kind: str = "erk") -> MaskSet:
    masks = MaskSet.for_model(arch_model)
    values = {"sparsity": 1.0 - density, "init_sparsity": 1.0 - density, "distribution": kind}
    build_method(method, masks, None, settings_in_steps(method, 100, values), total_steps=100)
    return masks


def expected_counts(arch: str, density: float, kind: str = "erk") -> list[int]:
    """The counts at the density the methods actually use, 1 - (1 - d): in floating point 1 - 0.9 is
    0.09999999999999998, which moves near-tied remainders between equal-sized layers."""
    return layer_counts(ARCH_SHAPES[arch], 1.0 - (1.0 - density), kind)


@pytest.fixture(scope="module")
def resnet20() -> torch.nn.Module:
    return build_cifar_model("resnet20")


@pytest.fixture(scope="module")
def vgg19() -> torch.nn.Module:
    return build_cifar_model("vgg19")


@pytest.mark.parametrize("method", ["static", "set", "rigl", "granet"])
@pytest.mark.parametrize("density", DENSITIES)
def test_resnet20_initial_masks_have_the_exact_counts(
    resnet20: torch.nn.Module, method: str, density: float
) -> None:
    masks = initial_masks(resnet20, method, density)
    assert masks.active_counts() == expected_counts("resnet20", density)
    # Masked weights were zeroed when the masks were drawn.
    for weight, mask in zip(masks.weights, masks.masks, strict=True):
        assert torch.equal(weight, weight * mask)


@pytest.mark.parametrize("density", DENSITIES)
def test_vgg19_initial_masks_have_the_exact_counts(vgg19: torch.nn.Module, density: float) -> None:
    masks = initial_masks(vgg19, "static", density)
    assert masks.active_counts() == expected_counts("vgg19", density)


@pytest.mark.parametrize("kind", ["uniform", "er"])
def test_other_distributions_give_their_counts_to_the_initial_mask(
    resnet20: torch.nn.Module, kind: str
) -> None:
    masks = initial_masks(resnet20, "static", 0.1, kind)
    assert masks.active_counts() == expected_counts("resnet20", 0.1, kind)


def test_initial_masks_depend_only_on_the_seed(resnet20: torch.nn.Module) -> None:
    first = initial_masks(resnet20, "static", 0.1).state_dict()
    second = initial_masks(resnet20, "static", 0.1).state_dict()
    assert all(torch.equal(first[name], second[name]) for name in first)
    masks = MaskSet.for_model(resnet20)
    build_method("static", masks, None, {"sparsity": 0.9}, total_steps=10, seed=1)
    assert any(not torch.equal(first[name], mask) for name, mask in masks.state_dict().items())

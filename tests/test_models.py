"""The paper's architectures: exact sizes, output shapes in 1-D and 2-D, layer conventions, registry errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from harness.errors import UserError
from harness.models.build import build_model
from harness.registry.models import MODELS, NARROWEST_CHANNELS

ALL_ARCHS = ["resnet20", "resnet32", "resnet56", "vgg19", "resnet50"]
# Large networks are checked at a small width: the layout is the same, the test stays fast.
TEST_WIDTH = {"resnet20": 1.0, "resnet32": 1.0, "resnet56": 0.5, "vgg19": 0.125, "resnet50": 0.125}


def parameter_count(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def convs(model: nn.Module) -> list[nn.Module]:
    return [module for module in model.modules() if isinstance(module, nn.Conv1d | nn.Conv2d)]


def linears(model: nn.Module) -> list[nn.Linear]:
    return [module for module in model.modules() if isinstance(module, nn.Linear)]


def cifar_resnet_count(
    blocks_per_stage: int, kernel_area: int, in_channels: int = 3, num_classes: int = 10
) -> int:
    """Hand count for the CIFAR ResNet: conv weights + BatchNorm (weight, bias) + classifier."""

    def conv_bn(cin: int, cout: int, area: int) -> int:
        return cin * cout * area + 2 * cout

    total = conv_bn(in_channels, 16, kernel_area)  # stem
    channels = 16
    for width in (16, 32, 64):
        for block in range(blocks_per_stage):
            total += conv_bn(channels, width, kernel_area) + conv_bn(width, width, kernel_area)
            if block == 0 and channels != width:
                total += conv_bn(channels, width, 1)  # 1x1 projection shortcut
            channels = width
    return total + 64 * num_classes + num_classes


def test_resnet20_2d_parameter_count_matches_hand_derivation() -> None:
    # Stem 3*16*9 + 32 = 464. Stage 1: 3 blocks * (2 * 16*16*9 + 2*32) = 14,016.
    # Stage 2: first block 16*32*9 + 32*32*9 + 16*32 (shortcut) + 3*64 = 14,528; two more 2*(2*9,216 + 128)
    # = 37,120. Stage 3: 32*64*9 + 64*64*9 + 32*64 + 3*128 = 57,728; two more 2*(2*36,864 + 256) = 147,968.
    # Classifier 64*10 + 10 = 650. Total 272,474 (~0.27 M, as the paper says).
    expected = 464 + 14_016 + 14_528 + 37_120 + 57_728 + 147_968 + 650
    assert expected == 272_474
    model = build_model("resnet20", num_classes=10, input_shape=(3, 32, 32))
    assert parameter_count(model) == expected
    assert parameter_count(model) == cifar_resnet_count(3, kernel_area=9)


@pytest.mark.parametrize(("arch", "blocks"), [("resnet20", 3), ("resnet32", 5), ("resnet56", 9)])
@pytest.mark.parametrize("spatial_dims", [1, 2])
def test_cifar_resnet_depths_and_dimensions(arch: str, blocks: int, spatial_dims: int) -> None:
    in_channels = 1 if spatial_dims == 1 else 3
    input_shape = (1, 40) if spatial_dims == 1 else (3, 32, 32)
    model = build_model(arch, num_classes=10, input_shape=input_shape)
    kernel_area = 3**spatial_dims
    assert parameter_count(model) == cifar_resnet_count(blocks, kernel_area, in_channels)
    # 6n + 2 layers: stem, 6n convolutions in the blocks, classifier; plus two projection shortcuts.
    assert len(convs(model)) == 1 + 6 * blocks + 2
    assert len(linears(model)) == 1


def test_vgg19_and_resnet50_have_their_published_sizes() -> None:
    # VGG-19 (BN) CIFAR: 16 convs of the layout, BN (2 per channel), one 512 -> 10 classifier.
    layout = [64, 64, 128, 128, 256, 256, 256, 256, 512, 512, 512, 512, 512, 512, 512, 512]
    channels, expected = 3, 0
    for width in layout:
        expected += channels * width * 9 + 2 * width
        channels = width
    expected += 512 * 10 + 10
    vgg = build_model("vgg19", num_classes=10, input_shape=(3, 32, 32))
    assert parameter_count(vgg) == expected == 20_035_018
    assert len(convs(vgg)) == 16
    # CIFAR ResNet-50 = torchvision's ResNet-50 (23,528,522 with 1000 classes, 25,557,032 with its 7x7
    # stem) with a 3x3 stem (3*64*9 instead of 3*64*49) and a 10-way classifier.
    resnet = build_model("resnet50", num_classes=10, input_shape=(3, 32, 32))
    torchvision_resnet50 = 25_557_032
    expected = torchvision_resnet50 - 3 * 64 * 49 + 3 * 64 * 9 - (2048 * 1000 + 1000) + (2048 * 10 + 10)
    assert parameter_count(resnet) == expected


@pytest.mark.parametrize("arch", ALL_ARCHS)
@pytest.mark.parametrize(("spatial_dims", "input_shape"), [(1, (1, 40)), (2, (3, 32, 32))])
def test_forward_shapes(arch: str, spatial_dims: int, input_shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    model = build_model(arch, num_classes=7, input_shape=input_shape, width=TEST_WIDTH[arch])
    model.train()
    output = model(torch.randn(3, *input_shape))
    assert output.shape == (3, 7)
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, *input_shape)).shape == (2, 7)
    conv_type = nn.Conv1d if spatial_dims == 1 else nn.Conv2d
    assert all(isinstance(conv, conv_type) for conv in convs(model))


@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_first_conv_and_classifier_are_identifiable(arch: str) -> None:
    model = build_model(arch, num_classes=10, input_shape=(3, 32, 32), width=TEST_WIDTH[arch])
    first = convs(model)[0]
    assert first.in_channels == 3 and first.kernel_size == (3, 3) and first.stride == (1, 1)
    classifier = getattr(model, "fc", None) or model.classifier
    assert linears(model)[-1] is classifier
    assert classifier.out_features == 10 and classifier.bias is not None
    assert all(conv.bias is None for conv in convs(model))


def test_initialisation() -> None:
    torch.manual_seed(0)
    model = build_model("resnet56", num_classes=10, input_shape=(3, 32, 32))
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            assert torch.equal(module.weight, torch.ones_like(module.weight))
            assert torch.equal(module.bias, torch.zeros_like(module.bias))
    # Kaiming normal, fan_out, ReLU gain: std = sqrt(2 / (out_channels * kernel area)).
    conv = model.stages[2][1].conv2  # 64 -> 64, 3x3: 36,864 draws
    expected_std = (2 / (64 * 9)) ** 0.5
    assert conv.weight.std().item() == pytest.approx(expected_std, rel=0.03)
    assert conv.weight.mean().abs().item() < 0.05 * expected_std


def test_same_seed_builds_identical_weights() -> None:
    states = []
    for _ in range(2):
        torch.manual_seed(3)
        states.append(build_model("resnet20", num_classes=10, input_shape=(1, 40)).state_dict())
    assert all(torch.equal(states[0][name], states[1][name]) for name in states[0])


@pytest.mark.parametrize(
    ("width", "stage_widths"), [(0.5, (8, 16, 32)), (2.0, (32, 64, 128)), (0.01, (1, 1, 1))]
)
def test_width_scales_every_channel_count(width: float, stage_widths: tuple[int, int, int]) -> None:
    model = build_model("resnet20", num_classes=10, input_shape=(1, 40), width=width)
    assert convs(model)[0].out_channels == stage_widths[0]
    assert [stage[-1].conv2.out_channels for stage in model.stages] == list(stage_widths)
    assert model.fc.in_features == stage_widths[-1]
    assert convs(model)[0].in_channels == 1  # the input is never scaled


def test_width_scales_vgg_and_resnet50_classifier_inputs() -> None:
    vgg = build_model("vgg19", num_classes=10, input_shape=(1, 40), width=0.25)
    assert [conv.out_channels for conv in convs(vgg)][:3] == [16, 16, 32]
    assert vgg.classifier.in_features == 128
    resnet = build_model("resnet50", num_classes=10, input_shape=(1, 40), width=0.25)
    assert resnet.fc.in_features == 512  # 2048 * 0.25
    assert convs(resnet)[0].out_channels == 16


def test_imagenet_resnet50_is_torchvision_reference() -> None:
    model = build_model("resnet50", num_classes=1000, input_shape=(3, 32, 32), imagenet=True)
    assert parameter_count(model) == 25_557_032
    first = convs(model)[0]
    assert first.kernel_size == (7, 7) and first.stride == (2, 2)
    assert linears(model)[-1] is model.fc


def test_registry_and_errors() -> None:
    assert MODELS.names() == tuple(ALL_ARCHS)
    with pytest.raises(
        UserError,
        match=r"model\.arch: unknown architecture 'resnet18' \(did you mean 'resnet56'\?\); valid: resnet20, ",
    ):
        build_model("resnet18", num_classes=10, input_shape=(3, 32, 32))
    with pytest.raises(UserError, match="spatial_dims"):
        build_model("resnet20", num_classes=10, input_shape=(3, 8, 8, 8))
    with pytest.raises(UserError, match="no ImageNet variant"):
        build_model("vgg19", num_classes=10, input_shape=(3, 32, 32), imagenet=True)
    with pytest.raises(UserError, match="2-D RGB input at width 1.0"):
        build_model("resnet50", num_classes=10, input_shape=(1, 40), imagenet=True)
    with pytest.raises(UserError, match="model.width"):
        build_model("resnet20", num_classes=10, input_shape=(3, 32, 32), width=0)


@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_narrowest_channels_match_the_built_networks(arch: str) -> None:
    """The registry's width check knows each network's narrowest layer without building it: hold it to the truth."""
    model = build_model(arch, num_classes=10, input_shape=(1, 40))
    narrowest = min(module.out_channels for module in convs(model))
    assert NARROWEST_CHANNELS[arch] == narrowest


def test_an_input_the_network_cannot_take_is_one_line_before_anything_is_created(
    harness_cli, tmp_path
) -> None:
    # VGG-19's five max-pools shrink the synthetic 16x16 images to nothing before its 2x2 average pool.
    with pytest.raises(UserError, match=r"^model\.arch: 'vgg19' cannot take inputs of shape \(3, 16, 16\)"):
        build_model("vgg19", num_classes=10, input_shape=(3, 16, 16))
    runs = tmp_path / "runs"
    result = harness_cli.invoke(
        "run", "snip", "--arch", "vgg19", "--dataset", "synthetic", "--runs-dir", str(runs), "--epochs", "1",
        "--wandb", "disabled",
    )  # fmt: skip
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "model.arch: 'vgg19' cannot take inputs of shape (3, 16, 16)" in lines[0]
    assert not runs.exists()

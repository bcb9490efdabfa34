"""The CIFAR ResNet of He et al. 2016 (section 4.2): ResNet-20/32/56, for 1-D or 2-D inputs.

A 3x3 stem convolution with 16 channels, three stages of basic blocks with 16/32/64 channels (stride 2
at the start of stages 2 and 3), global average pooling and one linear classifier. Depth = 6n + 2 with
n blocks per stage. Where the shape changes, the shortcut is a 1x1 convolution + BatchNorm (option B),
which the GraNet authors' code uses too; elsewhere it is the identity.
"""

from __future__ import annotations

from torch import Tensor, nn

from harness.models.layers import LayerKit, conv_bn, initialise, layer_kit, scaled, shortcut

STAGE_CHANNELS = (16, 32, 64)
STAGE_STRIDES = (1, 2, 2)
BLOCKS_PER_STAGE = {"resnet20": 3, "resnet32": 5, "resnet56": 9}


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection."""

    def __init__(self, kit: LayerKit, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = conv_bn(kit, in_channels, out_channels, 3, stride)
        self.conv2, self.bn2 = conv_bn(kit, out_channels, out_channels, 3)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = shortcut(kit, in_channels, out_channels, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(
        self,
        *,
        blocks_per_stage: int,
        num_classes: int,
        in_channels: int,
        spatial_dims: int,
        width: float = 1.0,
    ) -> None:
        super().__init__()
        kit = layer_kit(spatial_dims)
        channels = scaled(STAGE_CHANNELS[0], width)
        self.stem = nn.Sequential(*conv_bn(kit, in_channels, channels, 3), nn.ReLU(inplace=True))
        stages = []
        for stage_channels, stride in zip(STAGE_CHANNELS, STAGE_STRIDES, strict=True):
            out_channels = scaled(stage_channels, width)
            blocks = []
            for index in range(blocks_per_stage):
                blocks.append(BasicBlock(kit, channels, out_channels, stride if index == 0 else 1))
                channels = out_channels
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = kit.global_avg_pool(1)
        self.fc = nn.Linear(channels, num_classes)
        initialise(self)

    def forward(self, x: Tensor) -> Tensor:
        features = self.pool(self.stages(self.stem(x)))
        return self.fc(features.flatten(1))


def resnet_cifar(
    arch: str, *, num_classes: int, input_shape: tuple[int, ...], width: float = 1.0
) -> CifarResNet:
    return CifarResNet(
        blocks_per_stage=BLOCKS_PER_STAGE[arch],
        num_classes=num_classes,
        in_channels=input_shape[0],
        spatial_dims=len(input_shape) - 1,
        width=width,
    )


def resnet20(*, num_classes: int, input_shape: tuple[int, ...], width: float = 1.0) -> CifarResNet:
    return resnet_cifar("resnet20", num_classes=num_classes, input_shape=input_shape, width=width)


def resnet32(*, num_classes: int, input_shape: tuple[int, ...], width: float = 1.0) -> CifarResNet:
    return resnet_cifar("resnet32", num_classes=num_classes, input_shape=input_shape, width=width)


def resnet56(*, num_classes: int, input_shape: tuple[int, ...], width: float = 1.0) -> CifarResNet:
    return resnet_cifar("resnet56", num_classes=num_classes, input_shape=input_shape, width=width)

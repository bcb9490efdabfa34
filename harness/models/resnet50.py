"""ResNet-50: the bottleneck ResNet of He et al. 2016.

The CIFAR variant (1-D or 2-D) replaces the ImageNet stem (7x7 stride-2 convolution + max-pool) by a
3x3 stride-1 convolution, as in the GraNet authors' CIFAR code, and otherwise follows the ImageNet
network: stages of 3/4/6/3 bottleneck blocks with 64/128/256/512 inner channels, expansion 4, stride 2
on the 3x3 convolution at the start of stages 2-4, and a 1x1 convolution + BatchNorm shortcut where the
shape changes. For ImageNet the harness uses torchvision's reference model unchanged.
"""

from __future__ import annotations

from torch import Tensor, nn

from harness.errors import UserError
from harness.models.layers import LayerKit, conv_bn, initialise, layer_kit, scaled, shortcut

EXPANSION = 4
STAGE_CHANNELS = (64, 128, 256, 512)
STAGE_BLOCKS = (3, 4, 6, 3)
STAGE_STRIDES = (1, 2, 2, 2)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride), 1x1 expand, with a residual connection."""

    def __init__(
        self, kit: LayerKit, in_channels: int, inner_channels: int, out_channels: int, stride: int
    ) -> None:
        super().__init__()
        self.conv1, self.bn1 = conv_bn(kit, in_channels, inner_channels, 1)
        self.conv2, self.bn2 = conv_bn(kit, inner_channels, inner_channels, 3, stride)
        self.conv3, self.bn3 = conv_bn(kit, inner_channels, out_channels, 1)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = shortcut(kit, in_channels, out_channels, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet50(nn.Module):
    def __init__(self, *, num_classes: int, in_channels: int, spatial_dims: int, width: float = 1.0) -> None:
        super().__init__()
        kit = layer_kit(spatial_dims)
        channels = scaled(STAGE_CHANNELS[0], width)
        self.stem = nn.Sequential(*conv_bn(kit, in_channels, channels, 3), nn.ReLU(inplace=True))
        stages = []
        for stage_channels, num_blocks, stride in zip(
            STAGE_CHANNELS, STAGE_BLOCKS, STAGE_STRIDES, strict=True
        ):
            inner = scaled(stage_channels, width)
            out_channels = scaled(stage_channels * EXPANSION, width)
            blocks = []
            for index in range(num_blocks):
                blocks.append(Bottleneck(kit, channels, inner, out_channels, stride if index == 0 else 1))
                channels = out_channels
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = kit.global_avg_pool(1)
        self.fc = nn.Linear(channels, num_classes)
        initialise(self)

    def forward(self, x: Tensor) -> Tensor:
        features = self.pool(self.stages(self.stem(x)))
        return self.fc(features.flatten(1))


def resnet50(*, num_classes: int, input_shape: tuple[int, ...], width: float = 1.0) -> CifarResNet50:
    return CifarResNet50(
        num_classes=num_classes, in_channels=input_shape[0], spatial_dims=len(input_shape) - 1, width=width
    )


def imagenet_resnet50(*, num_classes: int, input_shape: tuple[int, ...], width: float = 1.0) -> nn.Module:
    """torchvision's ResNet-50 (7x7 stem + max-pool), randomly initialised: the paper's ImageNet model."""
    if len(input_shape) != 3 or input_shape[0] != 3 or width != 1.0:
        raise UserError(
            "model: the ImageNet ResNet-50 is torchvision's reference network: 2-D RGB input at width 1.0 only "
            f"(got input shape {tuple(input_shape)}, width={width})"
        )
    # Imported here: `import torchvision` costs ~2.5 s (it loads every model family and torch._dynamo),
    # paid by every run and probe process of a CPU sweep that never builds this model.
    import torchvision

    return torchvision.models.resnet50(weights=None, num_classes=num_classes)

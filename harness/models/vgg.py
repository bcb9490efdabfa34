"""VGG-19 with BatchNorm, the CIFAR variant used in the sparse-training literature, for 1-D or 2-D inputs.

Sixteen 3x3 convolutions (no bias) each followed by BatchNorm and ReLU, max-pooling by 2 after each
block, then a 2x2 average pool and one linear classifier on the 512 remaining features. A 32x32 image
ends at 2x2 before the average pool; an MNIST-1D sequence of length 40 goes 40 -> 20 -> 10 -> 5 -> 2 -> 1.
"""

from __future__ import annotations

from torch import Tensor, nn

from harness.models.layers import conv_bn, initialise, layer_kit, scaled

# Channel counts of the convolutions; "M" is a max-pool by 2.
VGG19_LAYOUT: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512,
)  # fmt: skip


class VGG(nn.Module):
    def __init__(
        self,
        layout: tuple[int | str, ...],
        *,
        num_classes: int,
        in_channels: int,
        spatial_dims: int,
        width: float = 1.0,
    ) -> None:
        super().__init__()
        kit = layer_kit(spatial_dims)
        layers: list[nn.Module] = []
        channels = in_channels
        for item in layout:
            if item == "M":
                layers.append(kit.max_pool(2))
                continue
            out_channels = scaled(int(item), width)
            layers += [*conv_bn(kit, channels, out_channels, 3), nn.ReLU(inplace=True)]
            channels = out_channels
        layers.append(kit.avg_pool(2))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, num_classes)
        initialise(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).flatten(1))


def vgg19(*, num_classes: int, input_shape: tuple[int, ...], width: float = 1.0) -> VGG:
    return VGG(
        VGG19_LAYOUT,
        num_classes=num_classes,
        in_channels=input_shape[0],
        spatial_dims=len(input_shape) - 1,
        width=width,
    )

"""Shared building blocks: the layer classes for 1-D or 2-D inputs, channel scaling and initialisation.

Every architecture is written once against `LayerKit`, so the MNIST-1D (1-D) and image (2-D) variants are
the same code with different layer classes.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from harness.errors import UserError


@dataclass(frozen=True)
class LayerKit:
    """The layer classes of one spatial dimensionality."""

    conv: type[nn.Module]
    batch_norm: type[nn.Module]
    max_pool: type[nn.Module]
    avg_pool: type[nn.Module]
    global_avg_pool: type[nn.Module]


_KITS = {
    1: LayerKit(nn.Conv1d, nn.BatchNorm1d, nn.MaxPool1d, nn.AvgPool1d, nn.AdaptiveAvgPool1d),
    2: LayerKit(nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d),
}


def layer_kit(spatial_dims: int) -> LayerKit:
    if spatial_dims not in _KITS:
        raise UserError(f"spatial_dims: must be 1 (sequences) or 2 (images), got {spatial_dims!r}")
    return _KITS[spatial_dims]


def scaled(channels: int, width: float) -> int:
    """A channel count multiplied by the width factor, rounded, never below one channel."""
    return max(1, round(channels * width))


def conv_bn(
    kit: LayerKit, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1
) -> list[nn.Module]:
    """Convolution (no bias: the BatchNorm after it has one) followed by BatchNorm; 'same' padding for odd kernels."""
    return [
        kit.conv(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False),
        kit.batch_norm(out_channels),
    ]


def shortcut(kit: LayerKit, in_channels: int, out_channels: int, stride: int) -> nn.Module:
    """The residual branch's identity, or 1x1 conv + BatchNorm when the block changes the shape."""
    if stride != 1 or in_channels != out_channels:
        return nn.Sequential(*conv_bn(kit, in_channels, out_channels, 1, stride))
    return nn.Identity()


def initialise(model: nn.Module) -> None:
    """Kaiming-normal (fan_out, ReLU) convolutions, BatchNorm at identity; linear layers keep PyTorch's default."""
    for module in model.modules():
        if isinstance(module, nn.Conv1d | nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

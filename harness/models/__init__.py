"""The paper's architectures behind one registry: `build_model(arch, ...)`.

Every architecture exists for 2-D inputs (images) and 1-D inputs (MNIST-1D sequences), so each study
runs at CPU scale on the paper's networks. Conventions the sparse core relies on: the first convolution
in `model.modules()` order is the network's first layer; the last `nn.Linear` in that order is the
classifier (attribute `fc` or `classifier`); convolutions have no bias (BatchNorm follows each one).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import nn

from harness.errors import UserError
from harness.models.layers import layer_kit
from harness.models.resnet50 import imagenet_resnet50, resnet50
from harness.models.resnet_cifar import resnet_cifar
from harness.models.vgg import vgg19

# Each builder takes keyword arguments num_classes, in_channels, spatial_dims and width.
ARCHS: dict[str, Callable[..., nn.Module]] = {
    "resnet20": partial(resnet_cifar, "resnet20"),
    "resnet32": partial(resnet_cifar, "resnet32"),
    "resnet56": partial(resnet_cifar, "resnet56"),
    "vgg19": vgg19,
    "resnet50": resnet50,
}

# Architectures with a separate ImageNet variant (different stem); the CIFAR ones are built for 32x32.
IMAGENET_ARCHS: dict[str, Callable[..., nn.Module]] = {"resnet50": imagenet_resnet50}


def build_model(
    arch: str,
    *,
    num_classes: int,
    in_channels: int,
    spatial_dims: int,
    width: float = 1.0,
    imagenet: bool = False,
) -> nn.Module:
    """A randomly initialised model (drawn from the global torch RNG: seed before calling)."""
    if arch not in ARCHS:
        raise UserError(f"model.arch: unknown architecture {arch!r}; valid: {', '.join(ARCHS)}")
    if width <= 0:
        raise UserError(f"model.width: must be positive, got {width!r}")
    layer_kit(spatial_dims)  # validates spatial_dims before any layer is built
    if not imagenet:
        return ARCHS[arch](
            num_classes=num_classes, in_channels=in_channels, spatial_dims=spatial_dims, width=width
        )
    if arch not in IMAGENET_ARCHS:
        raise UserError(
            f"model.arch: {arch!r} has no ImageNet variant; valid for ImageNet: {', '.join(IMAGENET_ARCHS)}"
        )
    if spatial_dims != 2 or in_channels != 3 or width != 1.0:
        raise UserError(
            "model: the ImageNet ResNet-50 is torchvision's reference network: 2-D RGB input at width 1.0 only "
            f"(got spatial_dims={spatial_dims}, in_channels={in_channels}, width={width})"
        )
    return IMAGENET_ARCHS[arch](num_classes=num_classes)


__all__ = ["ARCHS", "IMAGENET_ARCHS", "build_model"]


def sample_forward(model: nn.Module, input_shape: tuple[int, ...] | list[int]) -> None:
    """One forward pass of a single zero sample, in eval mode and without gradients, for tracing what the
    network does (hooks see every layer); the model's training mode is restored afterwards."""
    parameter = next(model.parameters())
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=parameter.device, dtype=parameter.dtype))
    finally:
        model.train(was_training)

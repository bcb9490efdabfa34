"""The architectures by name, without importing torch: built-ins, `MODULE:FUNCTION` plug-ins, entry points.

A model builder is any callable `builder(*, num_classes, input_shape, width) -> torch.nn.Module`, where
`input_shape` is one sample's shape without the batch dimension (`(3, 32, 32)` for CIFAR, `(1, 40)` for
MNIST-1D) and `width` multiplies every layer's channel count. Its parameters are drawn from the global torch
RNG (the trainer seeds it before building). The sparse core masks every convolution and linear layer's
weight; the first convolution in `model.modules()` order is taken as the first layer and the last linear
layer as the classifier (`sparsity.dense_first_layer`, `dense_classifier`).
"""

from __future__ import annotations

from harness.registry.plugins import Registry

MODELS = Registry(
    kind="models",
    field="model.arch",
    noun="architecture",
    builtins={
        "resnet20": "harness.models.resnet_cifar:resnet20",
        "resnet32": "harness.models.resnet_cifar:resnet32",
        "resnet56": "harness.models.resnet_cifar:resnet56",
        "vgg19": "harness.models.vgg:vgg19",
        "resnet50": "harness.models.resnet50:resnet50",
    },
)

# The paper's ImageNet networks differ from the CIFAR ones (a 7x7 stem and max-pool for 224x224 input):
# on the `imagenet` dataset an architecture listed here is built by its ImageNet variant.
IMAGENET_VARIANTS = {"resnet50": "harness.models.resnet50:imagenet_resnet50"}

# Channels of each built-in architecture's narrowest layer at width 1: layers are clamped to one channel, so
# a width below 1 / narrowest would silently build 1-channel layers; config validation refuses it without
# building the network (tests/test_models.py builds each one and checks these numbers).
NARROWEST_CHANNELS = {"resnet20": 16, "resnet32": 16, "resnet56": 16, "vgg19": 64, "resnet50": 64}


def check_width(arch: str, width: float) -> None:
    """ValueError when `width` leaves a built-in architecture's narrowest layer without a whole channel."""
    narrowest = NARROWEST_CHANNELS.get(arch)
    if narrowest is not None and width * narrowest < 1:
        raise ValueError(
            f"{width:g} leaves {arch}'s narrowest layer ({narrowest} channels at width 1) with less "
            f"than one channel; use a width >= {1 / narrowest:g}"
        )

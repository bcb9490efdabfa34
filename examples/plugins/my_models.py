"""A model plug-in for the harness: a small convolutional network for 1-D or 2-D inputs.

With this folder on PYTHONPATH (or the file in an installed package):

    harness run granet --arch my_models:tiny_cnn --dataset mnist1d --epochs 5

The harness calls the builder with keyword arguments; the model it returns is trained, masked, checkpointed,
swept and plotted like a built-in one, and `my_models:tiny_cnn` is part of the run id.
"""

from __future__ import annotations

from torch import nn


def tiny_cnn(*, num_classes: int, input_shape: tuple[int, ...], width: float = 1.0) -> nn.Module:
    """Two convolutions with BatchNorm, global average pooling and a linear classifier.

    `input_shape` is one sample's shape without the batch (`(1, 40)` for MNIST-1D, `(3, 32, 32)` for CIFAR);
    `width` scales the channel counts, as `model.width` does for the built-in networks.
    """
    if len(input_shape) == 2:
        conv, norm, pool = nn.Conv1d, nn.BatchNorm1d, nn.AdaptiveAvgPool1d
    else:
        conv, norm, pool = nn.Conv2d, nn.BatchNorm2d, nn.AdaptiveAvgPool2d
    channels = max(1, round(16 * width))
    return nn.Sequential(
        conv(input_shape[0], channels, 3, padding=1, bias=False),
        norm(channels),
        nn.ReLU(),
        conv(channels, 2 * channels, 3, padding=1, bias=False),
        norm(2 * channels),
        nn.ReLU(),
        pool(1),
        nn.Flatten(),
        nn.Linear(2 * channels, num_classes),
    )

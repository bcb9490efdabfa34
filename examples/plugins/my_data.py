"""A dataset plug-in for the harness: noisy 1-D waveforms of four shapes, generated in memory.

    harness run rigl --arch resnet20 --dataset my_data:waveforms --epochs 5 --set data.val_size=100

The builder receives the config's data section and returns a `Datasets`; leaving `val=None` lets the harness
hold out `data.val_size` training samples with its own fixed split, as it does for the built-in datasets.
"""

from __future__ import annotations

import math

import torch

from harness.config import DataConfig
from harness.data.datasets import Datasets, DataSpec, InMemoryDataset

LENGTH = 32
CLASSES = 4


def waveforms(data: DataConfig) -> Datasets:
    samples = data.num_samples or 600
    # A fixed generator: the data must not change with the run's seed, or seeds would see different tasks.
    generator = torch.Generator().manual_seed(7)
    train = _draw(samples, generator)
    test = _draw(max(samples // 4, CLASSES), generator)
    spec = DataSpec(num_classes=CLASSES, in_channels=1, spatial_dims=1, input_shape=(1, LENGTH))
    return Datasets(train=train, val=None, test=test, spec=spec)


def _draw(count: int, generator: torch.Generator) -> InMemoryDataset:
    labels = torch.randint(CLASSES, (count,), generator=generator)
    phase = torch.rand(count, 1, generator=generator) * 2 * math.pi
    t = torch.linspace(0, 2 * math.pi, LENGTH).expand(count, LENGTH) + phase
    shapes = torch.stack([t.sin(), t.sin().sign(), (t % (2 * math.pi)) / math.pi - 1, (2 * t).sin()], dim=1)
    clean = shapes[torch.arange(count), labels]
    noisy = clean + 0.5 * torch.randn(count, LENGTH, generator=generator)
    return InMemoryDataset(noisy.unsqueeze(1), labels)

"""The datasets by name, without importing torch: built-ins, `MODULE:FUNCTION` plug-ins, entry points.

A dataset builder is any callable `builder(data: DataConfig) -> harness.data.datasets.Datasets`: the
training, validation and test sets (map-style torch datasets of `(input, integer label)` pairs, or
`InMemoryDataset`s, which the loaders batch without a DataLoader) and a `DataSpec` (number of classes and
one sample's shape). It reads what it needs from the data section (`data_dir`, `num_samples`, `augment`);
a plug-in may return `val=None` and the harness holds out `data.val_size` training samples with the same
constant-seed split as the built-ins. Augmentation inside a dataset draws from the global torch RNG, which
the loaders seed per batch, so it resumes exactly.
"""

from __future__ import annotations

from harness.registry.plugins import Registry

DATASETS = Registry(
    kind="datasets",
    field="data.dataset",
    noun="dataset",
    builtins={
        "cifar10": "harness.data.datasets:cifar",
        "cifar100": "harness.data.datasets:cifar",
        "imagenet": "harness.data.datasets:imagenet",
        "mnist1d": "harness.data.datasets:mnist1d",
        "synthetic": "harness.data.datasets:synthetic",
    },
)

# (classes, one sample's shape) of the built-in datasets, known without their files: exporting or timing a
# network for a dataset needs its shape, not its data (tests/test_data.py holds each equal to what the
# builder returns).
INPUT_SPECS: dict[str, tuple[int, tuple[int, ...]]] = {
    "cifar10": (10, (3, 32, 32)),
    "cifar100": (100, (3, 32, 32)),
    "imagenet": (1000, (3, 224, 224)),
    "mnist1d": (10, (1, 40)),
    "synthetic": (10, (3, 16, 16)),
}

# The built-in datasets the loaders can hold on the training device (`data.pipeline`): CIFAR as uint8 images
# augmented there (harness/data/resident.py), MNIST-1D and synthetic as the tensors they already are.
RESIDENT_DATASETS = ("cifar10", "cifar100", "mnist1d", "synthetic")

"""CIFAR-format files with random images, written without a download: for benchmarks, GPU checks and tests
that exercise torchvision's own CIFAR loaders on CIFAR-shaped data.

`write_cifar_files(root, "cifar10" | "cifar100", train=..., test=...)` writes the folder torchvision's CIFAR
classes read (`cifar-10-batches-py/data_batch_1..5, test_batch, batches.meta` or `cifar-100-python/train,
test, meta`): pickled dicts with "data" uint8 (N, 3072) in channel-major order and "labels" (CIFAR-100:
"fine_labels" and "coarse_labels"). The official files are Python 2 pickles whose byte-string keys
torchvision decodes with encoding="latin1" to str keys; writing str keys gives the same dicts after loading.

torchvision checks every CIFAR file against the official MD5, which these files cannot match: open them inside
`accept_unofficial_cifar()`, which accepts any file that exists for as long as it lasts. The harness's own
loader (`harness.data.datasets.cifar`) keeps torchvision's verification for the real data.
"""

from __future__ import annotations

import contextlib
import os
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR100_FOLDER = "cifar-100-python"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_BATCHES = 5  # data_batch_1 .. data_batch_5
IMAGE_VALUES = 3 * 32 * 32


def write_cifar_files(
    root: Path | str, dataset: str = "cifar10", *, train: int = 50000, test: int = 10000, seed: int = 0
) -> Path:
    """`train` training and `test` test images (uniform random pixels and labels from `seed`) in the on-disk
    format of `dataset`, under `root`; returns the dataset's folder. CIFAR-10's training images are spread
    over its five batch files as evenly as the count allows."""
    if train < 0 or test < 0:
        raise ValueError(f"image counts must be >= 0 (got train={train}, test={test})")
    rng = np.random.default_rng(seed)
    if dataset == "cifar10":
        folder = Path(root) / CIFAR10_FOLDER
        folder.mkdir(parents=True, exist_ok=True)
        sizes = [
            train // CIFAR10_BATCHES + (index < train % CIFAR10_BATCHES) for index in range(CIFAR10_BATCHES)
        ]
        for index, size in enumerate(sizes, start=1):
            labels = rng.integers(0, 10, size=size).tolist()
            content = {
                "data": _images(size, rng),
                "labels": labels,
                "batch_label": f"training batch {index} of 5",
            }
            _pickle(folder / f"data_batch_{index}", content)
        labels = rng.integers(0, 10, size=test).tolist()
        _pickle(
            folder / "test_batch",
            {"data": _images(test, rng), "labels": labels, "batch_label": "testing batch 1 of 1"},
        )
        meta = {
            "label_names": list(CIFAR10_CLASSES),
            "num_cases_per_batch": sizes[0],
            "num_vis": IMAGE_VALUES,
        }
        _pickle(folder / "batches.meta", meta)
        return folder
    if dataset == "cifar100":
        folder = Path(root) / CIFAR100_FOLDER
        folder.mkdir(parents=True, exist_ok=True)
        for name, count in (("train", train), ("test", test)):
            fine = rng.integers(0, 100, size=count)
            # CIFAR-100 groups its 100 classes into 20 superclasses of 5.
            content = {
                "data": _images(count, rng),
                "fine_labels": fine.tolist(),
                "coarse_labels": (fine // 5).tolist(),
            }
            _pickle(folder / name, content)
        meta = {
            "fine_label_names": [f"class_{index}" for index in range(100)],
            "coarse_label_names": [f"superclass_{index}" for index in range(20)],
        }
        _pickle(folder / "meta", meta)
        return folder
    raise ValueError(f"dataset: {dataset!r} is not a CIFAR dataset; use 'cifar10' or 'cifar100'")


def _images(count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` random 32x32 RGB images in CIFAR's row layout: uint8 (count, 3072), all red, then green, then blue."""
    return rng.integers(0, 256, size=(count, IMAGE_VALUES), dtype=np.uint8)


def _pickle(path: Path, content: dict[str, Any]) -> None:
    with open(path, "wb") as handle:
        pickle.dump(content, handle, protocol=2)


def file_exists(path: str, md5: str | None = None) -> bool:
    """torchvision's `check_integrity(path, md5)` without the MD5: whether the file exists."""
    return os.path.isfile(path)


@contextlib.contextmanager
def accept_unofficial_cifar() -> Iterator[None]:
    """Inside the block, torchvision's CIFAR classes accept any existing file instead of only the official
    ones. Both of their checks (the batch files and the meta file) call the module's `check_integrity`; it is
    restored on exit. Not thread-safe: it swaps a module attribute, for the process."""
    import torchvision.datasets.cifar

    official = torchvision.datasets.cifar.check_integrity
    torchvision.datasets.cifar.check_integrity = file_exists
    try:
        yield
    finally:
        torchvision.datasets.cifar.check_integrity = official

"""Writers of small datasets in the real on-disk formats, for tests that exercise the production loaders.

Import with `from fixtures_data import ...` (pytest puts tests/ on sys.path; tests/ has no __init__.py).

- `write_cifar(data_dir, "cifar10" | "cifar100", ...)`: the folder torchvision's CIFAR classes read
  (`cifar-10-batches-py/data_batch_1..5, test_batch, batches.meta` or `cifar-100-python/train, test, meta`),
  pickled dicts with "data" uint8 (N, 3072) in channel-major order and "labels" (CIFAR-100: "fine_labels"
  and "coarse_labels"). The official files are Python 2 pickles whose byte-string keys torchvision
  decodes with encoding="latin1" to str keys; writing str keys gives the same dicts after loading.
- `allow_unofficial_cifar(monkeypatch)`: torchvision checks every CIFAR file against the official MD5,
  which small files cannot match; this patches that check (for the test only) to "the file exists".
- `write_image_folder(root, ...)` / `write_imagenet(data_dir, ...)`: class folders of PNG images, the layout
  `torchvision.datasets.ImageFolder` reads (`<data_dir>/imagenet/{train,val}/<class>/<image>.png`).
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR100_FOLDER = "cifar-100-python"
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _pickle(path: Path, content: dict) -> None:
    with open(path, "wb") as handle:
        pickle.dump(content, handle, protocol=2)


def random_images(count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` random 32x32 RGB images in CIFAR's row layout: uint8 (count, 3072), all red, then green, then blue."""
    return rng.integers(0, 256, size=(count, 3 * 32 * 32), dtype=np.uint8)


def write_cifar(
    data_dir: Path,
    dataset: str = "cifar10",
    *,
    train_per_batch: int = 20,
    test_size: int = 20,
    seed: int = 0,
) -> Path:
    """A small CIFAR-10 (5 training batches of `train_per_batch`) or CIFAR-100 folder; returns the folder."""
    rng = np.random.default_rng(seed)
    if dataset == "cifar10":
        folder = Path(data_dir) / CIFAR10_FOLDER
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(1, 6):
            labels = rng.integers(0, 10, size=train_per_batch).tolist()
            _pickle(
                folder / f"data_batch_{index}",
                {
                    "data": random_images(train_per_batch, rng),
                    "labels": labels,
                    "batch_label": f"training batch {index} of 5",
                },
            )
        labels = rng.integers(0, 10, size=test_size).tolist()
        _pickle(
            folder / "test_batch",
            {"data": random_images(test_size, rng), "labels": labels, "batch_label": "testing batch 1 of 1"},
        )
        _pickle(
            folder / "batches.meta",
            {"label_names": CIFAR10_CLASSES, "num_cases_per_batch": train_per_batch, "num_vis": 3072},
        )
        return folder
    if dataset == "cifar100":
        folder = Path(data_dir) / CIFAR100_FOLDER
        folder.mkdir(parents=True, exist_ok=True)
        for name, count in (("train", 5 * train_per_batch), ("test", test_size)):
            fine = rng.integers(0, 100, size=count)
            _pickle(
                folder / name,
                {
                    "data": random_images(count, rng),
                    "fine_labels": fine.tolist(),
                    "coarse_labels": (fine // 5).tolist(),
                },
            )
        _pickle(
            folder / "meta",
            {
                "fine_label_names": [f"class_{i}" for i in range(100)],
                "coarse_label_names": [f"superclass_{i}" for i in range(20)],
            },
        )
        return folder
    raise ValueError(f"unknown CIFAR dataset {dataset!r}")


def allow_unofficial_cifar(monkeypatch: pytest.MonkeyPatch) -> None:
    """Accept any existing CIFAR file: the class's `_check_integrity` and its meta-file check both use this."""
    import torchvision.datasets.cifar

    monkeypatch.setattr(
        torchvision.datasets.cifar, "check_integrity", lambda path, md5=None: os.path.isfile(path)
    )


def write_image_folder(
    root: Path,
    classes: Sequence[str] = ("class_a", "class_b", "class_c"),
    *,
    per_class: int = 4,
    size: tuple[int, int] = (48, 40),
    seed: int = 0,
) -> Path:
    """`root/<class>/<n>.png` random RGB images of `size` (width, height); returns root."""
    rng = np.random.default_rng(seed)
    width, height = size
    for name in classes:
        (Path(root) / name).mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(Path(root) / name / f"{index:04d}.png")
    return Path(root)


def write_imagenet(
    data_dir: Path,
    classes: Sequence[str] = ("n01440764", "n01443537", "n01484850"),
    *,
    train_per_class: int = 6,
    val_per_class: int = 2,
    size: tuple[int, int] = (48, 40),
) -> Path:
    """`<data_dir>/imagenet/train` and `/val` ImageFolder trees with the same classes; returns the imagenet folder."""
    root = Path(data_dir) / "imagenet"
    write_image_folder(root / "train", classes, per_class=train_per_class, size=size, seed=1)
    write_image_folder(root / "val", classes, per_class=val_per_class, size=size, seed=2)
    return root

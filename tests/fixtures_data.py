"""Writers of small datasets in the real on-disk formats, for tests that exercise the production loaders.

Import with `from fixtures_data import ...` (pytest puts tests/ on sys.path; tests/ has no __init__.py).

- `write_cifar(data_dir, "cifar10" | "cifar100", ...)`: the folder torchvision's CIFAR classes read, written
  by the package's `harness.data.cifar_files.write_cifar_files` (the format is described there).
- `allow_unofficial_cifar(monkeypatch)`: torchvision checks every CIFAR file against the official MD5,
  which small files cannot match; this patches that check (for the test only) to the package's
  `cifar_files.file_exists`, the check `accept_unofficial_cifar()` puts in place for benchmarks.
- `write_image_folder(root, ...)` / `write_imagenet(data_dir, ...)`: class folders of PNG images, the layout
  `torchvision.datasets.ImageFolder` reads (`<data_dir>/imagenet/{train,val}/<class>/<image>.png`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harness.data import cifar_files


def write_cifar(
    data_dir: Path,
    dataset: str = "cifar10",
    *,
    train_per_batch: int = 20,
    test_size: int = 20,
    seed: int = 0,
) -> Path:
    """A small CIFAR-10 (5 training batches of `train_per_batch`) or CIFAR-100 folder; returns the folder."""
    return cifar_files.write_cifar_files(
        data_dir, dataset, train=5 * train_per_batch, test=test_size, seed=seed
    )


def allow_unofficial_cifar(monkeypatch: pytest.MonkeyPatch) -> None:
    """Accept any existing CIFAR file: the class's `_check_integrity` and its meta-file check both use this."""
    import torchvision.datasets.cifar

    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", cifar_files.file_exists)


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

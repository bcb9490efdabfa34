"""The datasets: CIFAR-10/100, an ImageNet folder, MNIST-1D and synthetic, each with its fixed validation split.

`build_datasets(cfg.data)` returns the train / validation / test sets and the `DataSpec` the model builder
needs, for a built-in dataset or a plug-in (`harness.registry.datasets`). Every run shares the same validation
split: it is drawn from the training set with a constant seed, never the run seed, so runs with different
seeds are compared on the same held-out data. The official test set is never used for selection.
CIFAR also comes as uint8 arrays (`Datasets.resident`) from which the loaders can build the device-resident
pipeline (harness/data/resident.py), whose batches are the torchvision transforms' bit for bit.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import random
import shutil
import socket
import urllib.error
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset

from harness.config import DataConfig
from harness.data.presence import CPU_COMMAND, how_to_provide
from harness.data.resident import PADDING, ResidentSource, normalisation_table
from harness.errors import UserError
from harness.registry.datasets import DATASETS, INPUT_SPECS
from harness.store import rundir

# torchvision is imported inside the CIFAR and ImageNet functions: `import torchvision` takes ~2.5 s (it
# loads every model family and torch._dynamo), which every MNIST-1D run and probe of a sweep would pay.
if TYPE_CHECKING:
    import torchvision

logger = logging.getLogger(__name__)

# Constant seeds: the validation split and the synthetic data must not change with the run seed.
SPLIT_SEED = 2021
SYNTHETIC_SEED = 1234
# Without a timeout, a download attempt behind a firewall that drops packets hangs indefinitely.
DOWNLOAD_TIMEOUT_SECONDS = 30.0

CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

MNIST1D_DEFAULT_SAMPLES = 5000
SYNTHETIC_DEFAULT_SAMPLES = 256
SYNTHETIC_SHAPE = (3, 16, 16)
SYNTHETIC_CLASSES = 10


@dataclass(frozen=True)
class DataSpec:
    """What the model builder needs to know about the inputs (shapes without the batch dimension)."""

    num_classes: int
    in_channels: int
    spatial_dims: int
    input_shape: tuple[int, ...]


@dataclass
class Datasets:
    train: Dataset
    val: Dataset | None
    test: Dataset
    spec: DataSpec
    # The same images as uint8 arrays the loaders can hold on the training device (harness/data/resident.py),
    # for the datasets that have a resident pipeline (CIFAR); None for the others.
    resident: ResidentSource | None = None
    # `data.pipeline`, recorded by `build_datasets` for `build_loaders`, which resolves "auto" on its device.
    pipeline: Literal["auto", "device", "torchvision"] = "auto"


class InMemoryDataset(Dataset):
    """Inputs and integer targets held as two tensors; loaders index them a whole batch at a time."""

    def __init__(self, inputs: Tensor, targets: Tensor) -> None:
        if len(inputs) != len(targets):
            raise ValueError(f"{len(inputs)} inputs but {len(targets)} targets")
        self.inputs = inputs
        self.targets = targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.inputs[index], self.targets[index]

    def subset(self, indices: Tensor) -> InMemoryDataset:
        return InMemoryDataset(self.inputs[indices], self.targets[indices])

    def to(self, device: torch.device) -> InMemoryDataset:
        return InMemoryDataset(self.inputs.to(device), self.targets.to(device))

    @property
    def nbytes(self) -> int:
        return self.inputs.nbytes + self.targets.nbytes


# ---------------------------------------------------------------------------------------------------------
# Datasets


def build_datasets(cfg: DataConfig) -> Datasets:
    """The dataset `cfg.dataset` names (built-in or plug-in) with its fixed validation split.

    A builder is called as `builder(cfg)` with the data section and returns a `Datasets`. A plug-in may
    return `val=None`: then `cfg.val_size` samples of its training set are held out here, with the same
    constant-seed split as the built-ins, so selection never sees the test set whoever wrote the dataset.
    Raises UserError for missing data or a builder that breaks the contract.
    """
    data_dir = Path(cfg.data_dir)
    if data_dir.exists() and not data_dir.is_dir():
        raise UserError(
            f"data.data_dir: {data_dir} is not a directory; give the folder that holds the datasets"
        )
    builder = DATASETS.load(cfg.dataset)
    if not callable(builder):
        raise UserError(
            f"data.dataset: plug-in {cfg.dataset!r} is not callable (a dataset builder is a function)"
        )
    datasets = builder(cfg)
    if not isinstance(datasets, Datasets):
        raise UserError(
            f"data.dataset: plug-in {cfg.dataset!r} returned {type(datasets).__name__}, not "
            "harness.data.datasets.Datasets(train, val, test, spec)"
        )
    if not isinstance(datasets.spec, DataSpec):
        raise UserError(f"data.dataset: plug-in {cfg.dataset!r} returned a spec that is not a DataSpec")
    if datasets.val is None and cfg.val_size > 0 and not DATASETS.is_builtin(cfg.dataset):
        train, val = fixed_split(len(datasets.train), cfg.val_size)
        held_out = Subset(datasets.train, val.tolist())
        datasets = dataclasses.replace(datasets, train=Subset(datasets.train, train.tolist()), val=held_out)
    return dataclasses.replace(datasets, pipeline=cfg.pipeline)


def input_spec(cfg: DataConfig) -> tuple[int, tuple[int, ...]]:
    """(classes, one sample's shape): from the registry for a built-in dataset (no files needed), from the
    builder's `DataSpec` for a plug-in."""
    if DATASETS.is_builtin(cfg.dataset):
        return INPUT_SPECS[cfg.dataset]
    spec = build_datasets(cfg).spec
    return spec.num_classes, tuple(spec.input_shape)


def fixed_split(num_samples: int, val_size: int) -> tuple[Tensor, Tensor]:
    """(train indices, validation indices), sorted; the same for every run because the seed is constant."""
    if val_size >= num_samples:
        raise UserError(
            f"data.val_size: {val_size} must be smaller than the training set ({num_samples} samples)"
        )
    permutation = torch.randperm(num_samples, generator=torch.Generator().manual_seed(SPLIT_SEED))
    return permutation[val_size:].sort().values, permutation[:val_size].sort().values


def _split_in_memory(
    train: InMemoryDataset, test: InMemoryDataset, val_size: int, spec: DataSpec
) -> Datasets:
    train_indices, val_indices = fixed_split(len(train), val_size)
    val = train.subset(val_indices) if val_size else None
    return Datasets(train=train.subset(train_indices), val=val, test=test, spec=spec)


def _split_files(
    train_full: Dataset, test_transform: Callable, test: Dataset, split: tuple[Tensor, Tensor], spec: DataSpec
) -> Datasets:
    """Train and validation as subsets of one file-backed dataset (`split` from `fixed_split`); validation
    images get the test transform."""
    train_indices, val_indices = split
    val = (
        Subset(_with_transform(train_full, test_transform), val_indices.tolist())
        if len(val_indices)
        else None
    )
    return Datasets(train=Subset(train_full, train_indices.tolist()), val=val, test=test, spec=spec)


def _with_transform(dataset: Any, transform: Callable) -> Any:
    """A shallow copy sharing the loaded images, with another transform."""
    import torchvision

    clone = copy.copy(dataset)
    clone.transform = transform
    clone.transforms = torchvision.datasets.vision.StandardTransform(transform, None)
    return clone


def cifar(cfg: DataConfig) -> Datasets:
    import torchvision
    from torchvision import transforms as T

    mean, std = CIFAR_STATS[cfg.dataset]
    normalise = [T.ToTensor(), T.Normalize(mean, std)]
    augment = [T.RandomCrop(32, padding=PADDING), T.RandomHorizontalFlip()] if cfg.augment else []
    train_transform, test_transform = T.Compose(augment + normalise), T.Compose(normalise)
    dataset_class = (
        torchvision.datasets.CIFAR10 if cfg.dataset == "cifar10" else torchvision.datasets.CIFAR100
    )
    train_full = _open_cifar(dataset_class, cfg, train=True, transform=train_transform)
    test = _open_cifar(dataset_class, cfg, train=False, transform=test_transform)
    spec = DataSpec(
        num_classes=len(train_full.classes), in_channels=3, spatial_dims=2, input_shape=(3, 32, 32)
    )
    train_indices, val_indices = fixed_split(len(train_full), cfg.val_size)
    datasets = _split_files(train_full, test_transform, test, (train_indices, val_indices), spec)
    # torchvision holds each file's images as one uint8 (N, 32, 32, 3) array: the resident pipeline's source.
    resident = ResidentSource(
        train_images=torch.from_numpy(train_full.data),
        train_targets=torch.tensor(train_full.targets, dtype=torch.int64),
        test_images=torch.from_numpy(test.data),
        test_targets=torch.tensor(test.targets, dtype=torch.int64),
        train_indices=train_indices,
        val_indices=val_indices if len(val_indices) else None,
        table=normalisation_table(mean, std),
        augment=cfg.augment,
    )
    return dataclasses.replace(datasets, resident=resident)


def _open_cifar(dataset_class: type, cfg: DataConfig, *, train: bool, transform: Callable) -> Any:
    folder = Path(cfg.data_dir) / dataset_class.base_folder
    # Download at most once (with the training set); torchvision re-verifies the files either way.
    download = cfg.download and train
    # torchvision creates data_dir before downloading; a failed attempt must leave nothing behind.
    created = _first_missing(Path(cfg.data_dir)) if download else None
    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT_SECONDS) if download else contextlib.nullcontext():
            return dataset_class(root=str(cfg.data_dir), train=train, transform=transform, download=download)
    except (urllib.error.URLError, OSError, RuntimeError) as error:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        reason = " ".join(str(error).split())
        state = "damaged (its files fail torchvision's check)" if folder.is_dir() else "absent"
        problem = f", and the attempt failed: {reason}" if download else f" (torchvision: {reason})"
        raise UserError(how_to_provide(cfg, folder, state, CPU_COMMAND, problem)) from None


def _first_missing(path: Path) -> Path | None:
    """The outermost folder of `path` that does not exist yet (None when `path` exists)."""
    missing = None
    for folder in (path, *path.parents):
        if folder.exists():
            break
        missing = folder
    return missing


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def imagenet(cfg: DataConfig) -> Datasets:
    from torchvision import transforms as T

    root = Path(cfg.data_dir) / "imagenet"
    normalise = [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    test_transform = T.Compose([T.Resize(256), T.CenterCrop(224), *normalise])
    augment = T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), *normalise])
    train_full = _open_image_folder(root / "train", augment if cfg.augment else test_transform)
    # The official validation set serves as the test set; the validation split is held out of train.
    test = _open_image_folder(root / "val", test_transform)
    if test.classes != train_full.classes:
        raise UserError(
            f"data.data_dir: {root}/val has different class folders than {root}/train "
            f"({len(test.classes)} vs {len(train_full.classes)} classes); both need the same ones"
        )
    spec = DataSpec(
        num_classes=len(train_full.classes), in_channels=3, spatial_dims=2, input_shape=(3, 224, 224)
    )
    return _split_files(train_full, test_transform, test, fixed_split(len(train_full), cfg.val_size), spec)


def _open_image_folder(path: Path, transform: Callable) -> torchvision.datasets.ImageFolder:
    import torchvision

    layout = "expected <data_dir>/imagenet/{train,val}/<class folder>/<image files>"
    if not path.is_dir():
        raise UserError(f"data.data_dir: ImageNet folder {path} does not exist; {layout}")
    try:
        return torchvision.datasets.ImageFolder(str(path), transform=transform)
    except FileNotFoundError as error:
        raise UserError(f"data.data_dir: no images found under {path} ({error}); {layout}") from None


def mnist1d(cfg: DataConfig) -> Datasets:
    num_samples = cfg.num_samples or MNIST1D_DEFAULT_SAMPLES
    arrays = load_mnist1d(Path(cfg.data_dir) / "mnist1d" / f"mnist1d-{num_samples}.npz", num_samples)

    def as_dataset(inputs: np.ndarray, targets: np.ndarray) -> InMemoryDataset:
        return InMemoryDataset(
            torch.from_numpy(inputs).to(torch.float32).unsqueeze(1), torch.from_numpy(targets).to(torch.int64)
        )

    train = as_dataset(arrays["x"], arrays["y"])
    test = as_dataset(arrays["x_test"], arrays["y_test"])
    length = train.inputs.shape[-1]
    spec = DataSpec(num_classes=10, in_channels=1, spatial_dims=1, input_shape=(1, length))
    return _split_in_memory(train, test, cfg.val_size, spec)


def load_mnist1d(path: Path, num_samples: int) -> dict[str, np.ndarray]:
    """MNIST-1D arrays x, y, x_test, y_test: read from the cache at `path`, or generated and cached there."""
    if path.is_dir():
        raise UserError(f"data.data_dir: the MNIST-1D cache {path} is a directory; remove it to regenerate")
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as cached:
                arrays = {key: cached[key] for key in ("x", "y", "x_test", "y_test")}
            if len(arrays["x"]) + len(arrays["x_test"]) == num_samples:
                return arrays
            problem = f"{len(arrays['x']) + len(arrays['x_test'])} samples instead of {num_samples}"
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
            problem = f"{type(error).__name__}: {error}"
        # The cache holds nothing but the generator's deterministic output: rebuilding it loses nothing.
        logger.warning("damaged MNIST-1D cache %s (%s); regenerating it", path, problem)
    arrays = generate_mnist1d(num_samples)
    _write_npz_atomically(path, arrays)
    logger.info("generated MNIST-1D with %d samples, cached at %s", num_samples, path)
    return arrays


def generate_mnist1d(num_samples: int, seed: int | None = None) -> dict[str, np.ndarray]:
    """MNIST-1D from the package's generator, with its default dataset seed unless `seed` is given (other
    draws from the same distribution), leaving the global RNGs untouched."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = num_samples
    if seed is not None:
        args.seed = seed
    # make_dataset reseeds the global `random` and numpy generators; the run's own seeding must survive.
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        data = make_dataset(args)
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
    return {
        "x": data["x"].astype(np.float32),
        "y": data["y"].astype(np.int64),
        "x_test": data["x_test"].astype(np.float32),
        "y_test": data["y_test"].astype(np.int64),
    }


def _write_npz_atomically(path: Path, arrays: dict[str, np.ndarray]) -> None:
    # rundir's temporary names are per process: several ranks may generate the same cache at once.
    try:
        rundir.atomic_write(path, lambda handle: np.savez(handle, **arrays))
    except rundir.StorageFullError as error:
        raise UserError(f"data.data_dir: cannot write the MNIST-1D cache {path} ({error})") from None
    except OSError as error:
        raise UserError(f"data.data_dir: cannot write the MNIST-1D cache {path} ({error.strerror})") from None


def synthetic(cfg: DataConfig) -> Datasets:
    num_train = cfg.num_samples or SYNTHETIC_DEFAULT_SAMPLES
    train, test = make_synthetic(num_train, num_train // 4)
    spec = DataSpec(
        num_classes=SYNTHETIC_CLASSES,
        in_channels=SYNTHETIC_SHAPE[0],
        spatial_dims=len(SYNTHETIC_SHAPE) - 1,
        input_shape=SYNTHETIC_SHAPE,
    )
    return _split_in_memory(train, test, cfg.val_size, spec)


def make_synthetic(num_train: int, num_test: int) -> tuple[InMemoryDataset, InMemoryDataset]:
    """Gaussian images around one colour per class; the label is the class of the nearest colour.

    The label is a fixed function of the input (nearest class colour to the image's mean colour), so
    a convolutional network with global pooling can learn it, and it is usually the class the image
    was drawn around, so every class occurs. The data depend only on the constant seed.
    """
    generator = torch.Generator().manual_seed(SYNTHETIC_SEED)
    colours = torch.randn(SYNTHETIC_CLASSES, SYNTHETIC_SHAPE[0], generator=generator)
    drawn_around = torch.randint(SYNTHETIC_CLASSES, (num_train + num_test,), generator=generator)
    noise = torch.randn(num_train + num_test, *SYNTHETIC_SHAPE, generator=generator)
    inputs = noise + colours[drawn_around][:, :, None, None]
    targets = synthetic_labels(inputs, colours)
    return (
        InMemoryDataset(inputs[:num_train], targets[:num_train]),
        InMemoryDataset(inputs[num_train:], targets[num_train:]),
    )


def synthetic_labels(inputs: Tensor, colours: Tensor) -> Tensor:
    return torch.cdist(inputs.mean(dim=(2, 3)), colours).argmin(dim=1)

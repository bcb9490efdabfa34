"""Rank-aware loaders with exact mid-epoch resume: `build_loaders(...)` returns one `TrainLoader` and
`EvalLoader`s for this rank.

- The training order of an epoch is a pure function of (seed, epoch), sharded across ranks with
  `DistributedSampler` semantics (padded so every rank has the same number of batches), and
  `iterate(epoch, start_batch=k)` yields exactly batches k, k+1, ... of that order (mid-epoch resume).
- Augmentation randomness is seeded per batch from (seed, epoch, rank, batch index), inside whichever
  process loads the batch. This deliberately goes beyond seeding the workers: the augmented batches are
  then the same for any `num_workers` (which is not part of a run's identity), a mid-epoch resume
  reproduces them exactly even with worker processes, and loading never consumes the global torch RNG
  (the main process's CPU generator is restored after each batch when `num_workers == 0`). Every
  DataLoader also gets its own `torch.Generator`, because creating an iterator otherwise draws its
  base seed from the global RNG and shifts everything after a resume.
- In-memory tensor datasets (MNIST-1D, synthetic) skip the DataLoader: a batch is the input and target
  tensors indexed with the batch's indices, with no per-sample Python work and no worker processes.
- With the device pipeline (`data.pipeline`, resolved by `choose_pipeline`), the data live on the training
  device: CIFAR as uint8 images that harness/data/resident.py crops, flips and normalises there in batched
  operations, with the crop/flip values torchvision would draw from the same per-batch seeds (so the batches
  are the torchvision pipeline's bit for bit); in-memory tensors are moved there as they are. An epoch's
  order and augmentation values go to the device once, and batches come out on it: no host round-trip per
  batch.
- Evaluation shards are `rank::world_size` without padding, disjoint and covering the set exactly, so
  summing correct counts over ranks gives the exact accuracy.
"""

from __future__ import annotations

import logging
import math
import signal
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from harness.data.datasets import Datasets, InMemoryDataset
from harness.data.resident import ResidentImages, crop_flip_draws
from harness.errors import UserError

logger = logging.getLogger(__name__)

# "auto" holds the data on a GPU when they take at most this share of its free memory, leaving the rest to the
# network, its activations and other runs sharing the GPU. Any threshold is safe for the results: both
# pipelines give the same batches bit for bit, so which one a machine picks changes no number.
DEVICE_SHARE_OF_FREE_MEMORY = 0.25

# ---------------------------------------------------------------------------------------------------------
# Loaders


class _SeededBatches(Dataset):
    """Loads a batch requested as (seed, indices) with the CPU torch RNG seeded for that batch.

    torchvision's random transforms draw from the default CPU generator, so seeding it per batch makes
    the augmentation a function of the batch alone, in whichever process loads it.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        return self.dataset[index]

    def __getitems__(self, request: tuple[int, list[int]]) -> list[Any]:
        seed, indices = request
        # fork_rng restores the CPU generator afterwards: with num_workers=0 this runs in the main process.
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            return [self.dataset[index] for index in indices]


def _derived_seed(*numbers: int) -> int:
    """A well-mixed 63-bit seed from several integers (nearby inputs give unrelated seeds)."""
    return int(np.random.SeedSequence(list(numbers)).generate_state(1, dtype=np.uint64)[0]) >> 1


class TrainLoader:
    """This rank's shuffled training batches of any epoch, resumable mid-epoch."""

    def __init__(
        self,
        dataset: Dataset,
        *,
        batch_size: int,
        rank: int,
        world_size: int,
        seed: int,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.rank = rank
        self.seed = seed
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        # The sampler shuffles with seed + epoch; mixing the run seed first keeps run seed s + 1 from
        # replaying the epoch orders of run seed s shifted by one epoch.
        self._sampler = DistributedSampler(
            dataset,
            num_replicas=world_size,
            rank=rank,
            shuffle=True,
            seed=_derived_seed(seed),
            drop_last=False,
        )

    @property
    def num_samples(self) -> int:
        """Samples per epoch on this rank, including the padding that makes all ranks equal."""
        return self._sampler.num_samples

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.batch_size)

    def epoch_indices(self, epoch: int) -> Tensor:
        """This rank's dataset indices for the epoch, in order: a pure function of (seed, epoch)."""
        self._sampler.set_epoch(epoch)
        return torch.tensor(list(self._sampler), dtype=torch.int64)

    def batch_seeds(self, epoch: int) -> list[int]:
        """The augmentation seed of each batch of the epoch on this rank: a pure function of (seed, epoch,
        rank), drawn for the whole epoch so batch k gets the same seed whatever batch a pass starts from."""
        return self._seed_generator(epoch)[1]

    def _seed_generator(self, epoch: int) -> tuple[torch.Generator, list[int]]:
        generator = torch.Generator().manual_seed(_derived_seed(self.seed, epoch, self.rank))
        return generator, torch.randint(2**62, (len(self),), generator=generator).tolist()

    def iterate(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """Batches start_batch, start_batch + 1, ... of the epoch, identical to an uninterrupted pass."""
        if not 0 <= start_batch <= len(self):
            raise ValueError(f"start_batch {start_batch} outside [0, {len(self)}]")
        order = self.epoch_indices(epoch)[start_batch * self.batch_size :]
        if isinstance(self.dataset, ResidentImages):
            return self._resident_batches(self.dataset, order, epoch, start_batch)
        if isinstance(self.dataset, InMemoryDataset):
            # The order goes to the data's device once per epoch; each batch indexes there.
            return _index_batches(
                self.dataset, _chunks(order.to(self.dataset.inputs.device), self.batch_size)
            )
        generator, seeds = self._seed_generator(epoch)
        batches = _chunks(order, self.batch_size)
        requests = [(seed, batch.tolist()) for seed, batch in zip(seeds[start_batch:], batches, strict=True)]
        loader = DataLoader(
            _SeededBatches(self.dataset),
            batch_sampler=requests,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            generator=generator,
            worker_init_fn=_ignore_stop_signals,
        )
        return iter(loader)

    def _resident_batches(
        self, images: ResidentImages, order: Tensor, epoch: int, start_batch: int
    ) -> Iterator[tuple[Tensor, Tensor]]:
        # The epoch's order and crop/flip values cross to the device once, here; batches are views of them.
        batches = _chunks(order.to(images.device), self.batch_size)
        if not images.augment:
            return (images.batch(indices) for indices in batches)
        sizes = [len(indices) for indices in batches]
        draws = crop_flip_draws(self.batch_seeds(epoch)[start_batch:], sizes).to(images.device)
        return (
            images.batch(indices, batch_draws)
            for indices, batch_draws in zip(batches, draws.split(sizes), strict=True)
        )


class EvalLoader:
    """This rank's disjoint, unpadded shard (indices rank::world_size) of an evaluation set, in order."""

    def __init__(
        self,
        dataset: Dataset,
        *,
        batch_size: int,
        rank: int,
        world_size: int,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.indices = torch.arange(rank, len(dataset), world_size)
        self.num_workers = num_workers
        self.pin_memory = pin_memory

    @property
    def num_samples(self) -> int:
        return len(self.indices)

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.batch_size)

    def iterate(self) -> Iterator[tuple[Tensor, Tensor]]:
        if isinstance(self.dataset, ResidentImages):
            batches = _chunks(self.indices.to(self.dataset.device), self.batch_size)
            return (self.dataset.batch(indices) for indices in batches)
        if isinstance(self.dataset, InMemoryDataset):
            return _index_batches(
                self.dataset, _chunks(self.indices.to(self.dataset.inputs.device), self.batch_size)
            )
        loader = DataLoader(
            Subset(self.dataset, self.indices.tolist()),
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            # Its own generator: otherwise creating the iterator draws from the global RNG.
            generator=torch.Generator().manual_seed(0),
            worker_init_fn=_ignore_stop_signals,
        )
        return iter(loader)


def _ignore_stop_signals(worker_id: int) -> None:
    """Workers leave SIGTERM/SIGINT to the main process, which finishes its step and checkpoints.

    A scheduler that signals the whole process group (preemption) would otherwise kill the workers
    first, and the main process would fail waiting for a batch instead of checkpointing; the workers
    still exit with the main process (the DataLoader shuts them down).
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _chunks(indices: Tensor, size: int) -> list[Tensor]:
    # Unlike Tensor.split, no empty batch for an empty index tensor.
    return list(indices.split(size)) if len(indices) else []


def _index_batches(dataset: InMemoryDataset, batches: Sequence[Tensor]) -> Iterator[tuple[Tensor, Tensor]]:
    for indices in batches:
        yield dataset.inputs[indices], dataset.targets[indices]


@dataclass
class Loaders:
    train: TrainLoader
    val: EvalLoader | None
    test: EvalLoader
    pipeline: Literal["device", "torchvision"]  # the one `choose_pipeline` resolved


def build_loaders(
    datasets: Datasets,
    *,
    global_batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    num_workers: int = 0,
    pin_memory: bool = False,
    device: torch.device | str | None = None,
) -> Loaders:
    """Loaders for this rank; each rank gets global_batch_size / world_size samples per batch.

    `device` is the training device (None: the CPU). With the device pipeline (`datasets.pipeline`, resolved
    by `choose_pipeline`) the data are held there and batches come out on it; otherwise batches are built
    on the host (`num_workers` and `pin_memory` apply to that pipeline only).
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of size {world_size}")
    if global_batch_size % world_size:
        raise UserError(
            f"optim.batch_size: the global batch size {global_batch_size} must be divisible by the "
            f"number of processes ({world_size})"
        )
    device = torch.device("cpu" if device is None else device)
    pipeline = choose_pipeline(datasets, device)
    train, val, test = datasets.train, datasets.val, datasets.test
    if pipeline == "device":
        if datasets.resident is not None:
            train, val, test = datasets.resident.load(device)
        else:
            train, val, test = (None if part is None else part.to(device) for part in (train, val, test))
    batch_size = global_batch_size // world_size
    shard = {"batch_size": batch_size, "rank": rank, "world_size": world_size}
    workers = {"num_workers": num_workers, "pin_memory": pin_memory}

    def evaluation(dataset: Dataset) -> EvalLoader:
        return EvalLoader(dataset, **shard, **workers)

    return Loaders(
        train=TrainLoader(train, **shard, seed=seed, **workers),
        val=evaluation(val) if val is not None else None,
        test=evaluation(test),
        pipeline=pipeline,
    )


def choose_pipeline(datasets: Datasets, device: torch.device) -> Literal["device", "torchvision"]:
    """`datasets.pipeline` resolved for `device`: "auto" is "device" when the data can be held there (CIFAR's
    resident images, or in-memory tensors) and fit in DEVICE_SHARE_OF_FREE_MEMORY of a GPU's free memory
    (always on the CPU). Raises UserError for "device" on data that cannot be held there."""
    requested = datasets.pipeline
    if requested == "torchvision":
        return "torchvision"
    needed = _device_bytes(datasets)
    if needed is None:
        if requested == "device":
            raise UserError(
                "data.pipeline: 'device' needs a dataset the loaders can hold on the device (cifar10, "
                "cifar100, or in-memory tensors); use 'auto' or 'torchvision'"
            )
        return "torchvision"
    if requested == "device" or device.type != "cuda":
        return "device"
    free, _ = torch.cuda.mem_get_info(device)
    if needed <= DEVICE_SHARE_OF_FREE_MEMORY * free:
        return "device"
    logger.info(
        "data.pipeline auto: the data (%.0f MB) would take more than %d%% of the GPU's free memory "
        "(%.0f MB); using the torchvision pipeline, which gives the same batches",
        needed / 1e6,
        round(100 * DEVICE_SHARE_OF_FREE_MEMORY),
        free / 1e6,
    )
    return "torchvision"


def _device_bytes(datasets: Datasets) -> int | None:
    """Bytes the data take once held on the device, or None when they cannot be held there."""
    if datasets.resident is not None:
        return datasets.resident.nbytes
    parts = [part for part in (datasets.train, datasets.val, datasets.test) if part is not None]
    if all(isinstance(part, InMemoryDataset) for part in parts):
        return sum(part.nbytes for part in parts)
    return None

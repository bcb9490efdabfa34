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
- Evaluation shards are `rank::world_size` without padding, disjoint and covering the set exactly, so
  summing correct counts over ranks gives the exact accuracy.
"""

from __future__ import annotations

import math
import signal
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from harness.errors import UserError

# torchvision is imported inside the CIFAR and ImageNet functions: `import torchvision` takes ~2.5 s (it
# loads every model family and torch._dynamo), which every MNIST-1D run and probe of a sweep would pay.
if TYPE_CHECKING:
    pass

from harness.data.datasets import Datasets, InMemoryDataset

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

    def iterate(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """Batches start_batch, start_batch + 1, ... of the epoch, identical to an uninterrupted pass."""
        if not 0 <= start_batch <= len(self):
            raise ValueError(f"start_batch {start_batch} outside [0, {len(self)}]")
        batches = _chunks(self.epoch_indices(epoch)[start_batch * self.batch_size :], self.batch_size)
        if isinstance(self.dataset, InMemoryDataset):
            return _index_batches(self.dataset, batches)
        # One seed per batch of the whole epoch, so batch k gets the same seed whatever start_batch is.
        generator = torch.Generator().manual_seed(_derived_seed(self.seed, epoch, self.rank))
        batch_seeds = torch.randint(2**62, (len(self),), generator=generator)[start_batch:]
        requests = [(int(seed), batch.tolist()) for seed, batch in zip(batch_seeds, batches, strict=True)]
        loader = DataLoader(
            _SeededBatches(self.dataset),
            batch_sampler=requests,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            generator=generator,
            worker_init_fn=_ignore_stop_signals,
        )
        return iter(loader)


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
        if isinstance(self.dataset, InMemoryDataset):
            return _index_batches(self.dataset, _chunks(self.indices, self.batch_size))
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


def build_loaders(
    datasets: Datasets,
    *,
    global_batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> Loaders:
    """Loaders for this rank; each rank gets global_batch_size / world_size samples per batch."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of size {world_size}")
    if global_batch_size % world_size:
        raise UserError(
            f"optim.batch_size: the global batch size {global_batch_size} must be divisible by the "
            f"number of processes ({world_size})"
        )
    batch_size = global_batch_size // world_size
    shard = {"batch_size": batch_size, "rank": rank, "world_size": world_size}
    workers = {"num_workers": num_workers, "pin_memory": pin_memory}

    def evaluation(dataset: Dataset) -> EvalLoader:
        return EvalLoader(dataset, **shard, **workers)

    return Loaders(
        train=TrainLoader(datasets.train, **shard, seed=seed, **workers),
        val=evaluation(datasets.val) if datasets.val is not None else None,
        test=evaluation(datasets.test),
    )

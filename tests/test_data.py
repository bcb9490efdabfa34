"""Datasets and loaders: fixed splits, augmentation, loader determinism and resume, rank shards, errors."""

from __future__ import annotations

import random
import socket
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from fixtures_data import allow_unofficial_cifar, write_cifar, write_imagenet

import harness.data.datasets as data_module
from harness.config import DataConfig
from harness.data.datasets import (
    CIFAR_STATS,
    DOWNLOAD_TIMEOUT_SECONDS,
    Datasets,
    InMemoryDataset,
    build_datasets,
    generate_mnist1d,
    synthetic_labels,
)
from harness.data.loaders import build_loaders
from harness.errors import UserError

TRAIN_PER_BATCH = 20  # 5 batches: 100 CIFAR training images, 20 test images


@pytest.fixture
def cifar_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    write_cifar(tmp_path, train_per_batch=TRAIN_PER_BATCH, test_size=20)
    allow_unofficial_cifar(monkeypatch)
    return tmp_path


def cifar(data_dir: Path, **fields: object) -> Datasets:
    return build_datasets(
        DataConfig(**{"dataset": "cifar10", "data_dir": data_dir, "val_size": 10, **fields})
    )


# The loader contracts hold for both CIFAR pipelines (tests/test_resident_pipeline.py: the same batches).
both_pipelines = pytest.mark.parametrize("pipeline", ["device", "torchvision"])


def normalised(images_hwc: np.ndarray, dataset: str = "cifar10") -> torch.Tensor:
    """What ToTensor + Normalize make of uint8 HWC images: (N, 3, H, W) floats."""
    mean, std = (torch.tensor(values).view(1, 3, 1, 1) for values in CIFAR_STATS[dataset])
    return (torch.from_numpy(images_hwc).permute(0, 3, 1, 2).float() / 255 - mean) / std


def collect(batches) -> tuple[torch.Tensor, torch.Tensor]:
    inputs, targets = zip(*batches, strict=True)
    return torch.cat(inputs), torch.cat(targets)


def assert_same_batches(first, second) -> None:
    first, second = list(first), list(second)
    assert len(first) == len(second)
    for (inputs_a, targets_a), (inputs_b, targets_b) in zip(first, second, strict=True):
        assert torch.equal(inputs_a, inputs_b) and torch.equal(targets_a, targets_b)


# ---------------------------------------------------------------------------------------------------------
# CIFAR: files, split, transforms


def test_cifar_split_sizes_and_spec(cifar_dir: Path) -> None:
    datasets = cifar(cifar_dir)
    assert (len(datasets.train), len(datasets.val), len(datasets.test)) == (90, 10, 20)
    assert datasets.spec == data_module.DataSpec(
        num_classes=10, in_channels=3, spatial_dims=2, input_shape=(3, 32, 32)
    )
    train_indices, val_indices = set(datasets.train.indices), set(datasets.val.indices)
    assert not train_indices & val_indices and train_indices | val_indices == set(range(100))
    image, label = datasets.test[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and isinstance(label, int)


def test_cifar_split_is_the_same_for_every_run(cifar_dir: Path) -> None:
    torch.manual_seed(1)
    first = cifar(cifar_dir)
    torch.manual_seed(2)
    second = cifar(cifar_dir, augment=False)
    assert first.val.indices == second.val.indices and first.train.indices == second.train.indices
    # Loaders with different run seeds see the same validation samples.
    inputs = [
        collect(build_loaders(first, global_batch_size=8, seed=seed).val.iterate())[0] for seed in (0, 5)
    ]
    assert torch.equal(inputs[0], inputs[1])


def test_cifar100_has_100_classes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_cifar(tmp_path, "cifar100", train_per_batch=TRAIN_PER_BATCH)
    allow_unofficial_cifar(monkeypatch)
    datasets = build_datasets(DataConfig(dataset="cifar100", data_dir=tmp_path, val_size=10))
    assert datasets.spec.num_classes == 100 and len(datasets.train) == 90
    mean, std = CIFAR_STATS["cifar100"]
    assert datasets.test.transform.transforms[-1].mean == mean
    raw = datasets.test.data[:1]
    assert torch.allclose(datasets.test[0][0], normalised(raw, "cifar100")[0], atol=1e-6)


def crops_and_flips(image: torch.Tensor, padding_value: torch.Tensor) -> list[torch.Tensor]:
    """Every output of 4-pixel zero padding + 32x32 crop + optional horizontal flip of a normalised image."""
    padded = padding_value.view(3, 1, 1).expand(3, 40, 40).clone()
    padded[:, 4:36, 4:36] = image
    crops = [padded[:, top : top + 32, left : left + 32] for top in range(9) for left in range(9)]
    return crops + [crop.flip(-1) for crop in crops]


@both_pipelines
def test_augmentation_applies_to_train_only(cifar_dir: Path, pipeline: str) -> None:
    datasets = cifar(cifar_dir, pipeline=pipeline)
    base = datasets.train.dataset
    reference = normalised(base.data)
    mean, std = (torch.tensor(values) for values in CIFAR_STATS["cifar10"])
    black = -mean / std  # zero padding, normalised
    loaders = build_loaders(datasets, global_batch_size=16, seed=0)
    order = [datasets.train.indices[i] for i in loaders.train.epoch_indices(3).tolist()]
    inputs, targets = collect(loaders.train.iterate(3))
    assert targets.tolist() == [base.targets[i] for i in order]
    changed = 0
    for image, index in zip(inputs, order, strict=True):
        candidates = crops_and_flips(reference[index], black)
        assert any(torch.allclose(image, candidate, atol=1e-6) for candidate in candidates)
        changed += not torch.allclose(image, reference[index], atol=1e-6)
    assert changed >= 80  # the identity is 1 of 162 equally likely outcomes

    val_inputs, _ = collect(loaders.val.iterate())
    assert torch.allclose(val_inputs, reference[datasets.val.indices], atol=1e-6)
    test_inputs, _ = collect(loaders.test.iterate())
    assert torch.allclose(test_inputs, normalised(datasets.test.data), atol=1e-6)


@both_pipelines
def test_no_augmentation_when_disabled(cifar_dir: Path, pipeline: str) -> None:
    datasets = cifar(cifar_dir, augment=False, pipeline=pipeline)
    loader = build_loaders(datasets, global_batch_size=16).train
    inputs, _ = collect(loader.iterate(0))
    order = [datasets.train.indices[i] for i in loader.epoch_indices(0).tolist()]
    assert torch.allclose(inputs, normalised(datasets.train.dataset.data)[order], atol=1e-6)


def test_missing_cifar_is_one_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError) as caught:
        build_datasets(DataConfig(dataset="cifar10", data_dir=tmp_path / "absent", download=False))
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("data.data_dir: cifar10 is absent: looked for ")
    assert str(tmp_path / "absent" / "cifar-10-batches-py") in message
    assert "cifar-10-python.tar.gz" in message and "network" in message


def test_failed_download_is_bounded_and_becomes_user_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen_timeouts = []

    def offline_download(self: object) -> None:
        seen_timeouts.append(socket.getdefaulttimeout())
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torchvision.datasets.CIFAR100, "download", offline_download)
    before = socket.getdefaulttimeout()
    with pytest.raises(
        UserError,
        match=r"cifar100 is absent: looked for .*cifar-100-python; .*the attempt failed: .*Name or service not known",
    ):
        build_datasets(DataConfig(dataset="cifar100", data_dir=tmp_path, download=True))
    assert seen_timeouts == [DOWNLOAD_TIMEOUT_SECONDS]
    assert socket.getdefaulttimeout() == before


def test_val_size_must_leave_training_data(cifar_dir: Path) -> None:
    with pytest.raises(UserError, match=r"^data\.val_size: 100 must be smaller than the training set \(100"):
        cifar(cifar_dir, val_size=100)
    assert cifar(cifar_dir, val_size=0).val is None


# ---------------------------------------------------------------------------------------------------------
# Loaders


@both_pipelines
def test_train_order_is_a_function_of_seed_and_epoch(cifar_dir: Path, pipeline: str) -> None:
    datasets = cifar(cifar_dir, pipeline=pipeline)

    def loader(seed: int):
        return build_loaders(datasets, global_batch_size=16, seed=seed).train

    torch.manual_seed(123)  # the global RNG must play no part
    first = list(loader(7).iterate(2))
    torch.manual_seed(456)
    assert_same_batches(first, loader(7).iterate(2))
    orders = {
        (seed, epoch): tuple(loader(seed).epoch_indices(epoch).tolist())
        for seed in (7, 8)
        for epoch in (2, 3)
    }
    assert len(set(orders.values())) == 4
    assert all(sorted(order) == list(range(90)) for order in orders.values())


@both_pipelines
def test_iterating_leaves_the_global_rng_untouched(cifar_dir: Path, pipeline: str) -> None:
    loaders = build_loaders(cifar(cifar_dir, pipeline=pipeline), global_batch_size=16, seed=0)
    state = torch.get_rng_state()
    list(loaders.train.iterate(0, start_batch=2))
    list(loaders.val.iterate())
    assert torch.equal(torch.get_rng_state(), state)


@both_pipelines
def test_start_batch_resumes_mid_epoch_exactly(cifar_dir: Path, pipeline: str) -> None:
    loader = build_loaders(cifar(cifar_dir, pipeline=pipeline), global_batch_size=16, seed=3).train
    assert len(loader) == 6  # 90 samples: five batches of 16 and one of 10
    uninterrupted = list(loader.iterate(1))
    assert [len(targets) for _, targets in uninterrupted] == [16, 16, 16, 16, 16, 10]
    for start in (1, 4, 6):
        assert_same_batches(uninterrupted[start:], loader.iterate(1, start_batch=start))
    with pytest.raises(ValueError, match="start_batch 7"):
        loader.iterate(1, start_batch=7)


def test_worker_processes_give_the_same_batches(cifar_dir: Path) -> None:
    datasets = cifar(cifar_dir, pipeline="torchvision")  # the pipeline with worker processes
    in_process = build_loaders(datasets, global_batch_size=16, seed=3, num_workers=0).train
    with_workers = build_loaders(datasets, global_batch_size=16, seed=3, num_workers=2).train
    assert_same_batches(in_process.iterate(0), with_workers.iterate(0))
    assert_same_batches(list(in_process.iterate(0))[3:], with_workers.iterate(0, start_batch=3))


@both_pipelines
def test_two_rank_training_shards(cifar_dir: Path, pipeline: str) -> None:
    # 89 samples: ranks get 45 each, one index repeated as padding
    datasets = cifar(cifar_dir, val_size=11, pipeline=pipeline)
    ranks = [
        build_loaders(datasets, global_batch_size=16, rank=rank, world_size=2, seed=1).train
        for rank in (0, 1)
    ]
    assert [len(loader) for loader in ranks] == [6, 6]  # ceil(45 / 8)
    assert [loader.num_samples for loader in ranks] == [45, 45]
    shards = [loader.epoch_indices(4).tolist() for loader in ranks]
    assert set(shards[0]) | set(shards[1]) == set(range(89))
    assert len(set(shards[0]) & set(shards[1])) == 1  # the padding duplicate, nothing else
    batches = [list(loader.iterate(4)) for loader in ranks]
    assert [len(targets) for _, targets in batches[0]] == [8, 8, 8, 8, 8, 5]
    # Ranks draw different augmentations: batches of the same position differ.
    assert not torch.equal(batches[0][0][0], batches[1][0][0])


@both_pipelines
def test_two_rank_eval_shards_are_disjoint_and_complete(cifar_dir: Path, pipeline: str) -> None:
    datasets = cifar(cifar_dir, val_size=11, pipeline=pipeline)
    single = collect(build_loaders(datasets, global_batch_size=4).val.iterate())
    shards = [build_loaders(datasets, global_batch_size=6, rank=rank, world_size=3).val for rank in range(3)]
    assert [shard.num_samples for shard in shards] == [4, 4, 3]
    assert [shard.indices.tolist() for shard in shards] == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8]]
    inputs, targets = zip(*(collect(shard.iterate()) for shard in shards), strict=True)
    # Rank r holds samples r, r + 3, ...: interleaving the shards restores the whole set.
    restored_inputs = torch.empty_like(single[0])
    restored_targets = torch.empty_like(single[1])
    for rank in range(3):
        restored_inputs[rank::3], restored_targets[rank::3] = inputs[rank], targets[rank]
    assert torch.equal(restored_inputs, single[0]) and torch.equal(restored_targets, single[1])


def test_batch_size_must_divide_among_ranks(cifar_dir: Path) -> None:
    with pytest.raises(
        UserError, match=r"^optim\.batch_size: the global batch size 10 must be divisible by .*\(4\)"
    ):
        build_loaders(cifar(cifar_dir), global_batch_size=10, world_size=4)


# ---------------------------------------------------------------------------------------------------------
# MNIST-1D and synthetic (in-memory, fast path)


def test_mnist1d_cache_round_trip_and_rng_preservation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = DataConfig(dataset="mnist1d", data_dir=tmp_path, num_samples=200, val_size=20)
    random.seed(11)
    np.random.seed(11)
    torch.manual_seed(11)
    expected_python, expected_numpy = random.random(), np.random.random()
    random.seed(11)
    np.random.seed(11)
    torch_state = torch.get_rng_state()

    generated = build_datasets(config)

    assert (random.random(), np.random.random()) == (expected_python, expected_numpy)
    assert torch.equal(torch.get_rng_state(), torch_state)
    cache = tmp_path / "mnist1d" / "mnist1d-200.npz"
    assert cache.is_file()
    assert sorted(path.name for path in cache.parent.iterdir()) == ["mnist1d-200.npz"]  # no temporary left

    def no_generation(num_samples: int) -> None:
        raise AssertionError("the cache should have been read")

    monkeypatch.setattr(data_module, "generate_mnist1d", no_generation)
    cached = build_datasets(config)
    for part in ("train", "val", "test"):
        first, second = getattr(generated, part), getattr(cached, part)
        assert torch.equal(first.inputs, second.inputs) and torch.equal(first.targets, second.targets)


def test_mnist1d_shapes_split_and_generator_defaults(tmp_path: Path) -> None:
    datasets = build_datasets(DataConfig(dataset="mnist1d", data_dir=tmp_path, num_samples=200, val_size=20))
    # The package's 80/20 split of 200 samples, then 20 held out of train.
    assert (len(datasets.train), len(datasets.val), len(datasets.test)) == (140, 20, 40)
    assert datasets.spec == data_module.DataSpec(
        num_classes=10, in_channels=1, spatial_dims=1, input_shape=(1, 40)
    )
    assert datasets.train.inputs.shape == (140, 1, 40) and datasets.train.inputs.dtype == torch.float32
    assert datasets.test.targets.dtype == torch.int64
    # Same arrays as the package's generator with its default seed (the data every run shares).
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = 200
    reference = make_dataset(args)
    assert torch.equal(datasets.test.inputs[:, 0], torch.from_numpy(reference["x_test"]).float())
    assert torch.equal(datasets.test.targets, torch.from_numpy(reference["y_test"]))
    generated = generate_mnist1d(200)
    assert generated["x"].dtype == np.float32 and generated["x"].shape == (160, 40)


def test_in_memory_loader_indexes_whole_batches(tmp_path: Path) -> None:
    datasets = build_datasets(
        DataConfig(dataset="synthetic", data_dir=tmp_path, num_samples=100, val_size=10)
    )
    assert isinstance(datasets.train, InMemoryDataset) and len(datasets.train) == 90
    loader = build_loaders(datasets, global_batch_size=32, seed=4).train
    assert len(loader) == 3
    order = loader.epoch_indices(2)
    inputs, targets = collect(loader.iterate(2))
    assert torch.equal(inputs, datasets.train.inputs[order]) and torch.equal(
        targets, datasets.train.targets[order]
    )
    assert_same_batches(list(loader.iterate(2))[1:], loader.iterate(2, start_batch=1))
    ranks = [
        build_loaders(datasets, global_batch_size=32, rank=rank, world_size=2, seed=4) for rank in (0, 1)
    ]
    assert [len(ranks[rank].train) for rank in (0, 1)] == [3, 3]  # 45 samples per rank in batches of 16
    assert sum(ranks[rank].test.num_samples for rank in (0, 1)) == len(datasets.test) == 25


def test_eval_shard_of_a_rank_without_samples_is_empty() -> None:
    tiny = InMemoryDataset(torch.arange(3.0).view(3, 1), torch.tensor([0, 1, 2]))
    datasets = Datasets(train=tiny, val=None, test=tiny, spec=data_module.DataSpec(3, 1, 1, (1,)))
    loaders = build_loaders(datasets, global_batch_size=4, rank=3, world_size=4)
    assert loaders.val is None
    assert loaders.test.num_samples == 0 and len(loaders.test) == 0 and list(loaders.test.iterate()) == []
    assert len(loaders.train) == 1 and [len(targets) for _, targets in loaders.train.iterate(0)] == [1]


def test_synthetic_data_is_fixed_and_learnable(tmp_path: Path) -> None:
    torch.manual_seed(0)
    first = build_datasets(DataConfig(dataset="synthetic", data_dir=tmp_path, val_size=32))
    torch.manual_seed(1)
    second = build_datasets(DataConfig(dataset="synthetic", data_dir=tmp_path, val_size=32))
    assert torch.equal(first.train.inputs, second.train.inputs) and torch.equal(
        first.test.targets, second.test.targets
    )
    assert (len(first.train), len(first.val), len(first.test)) == (224, 32, 64)
    assert first.spec == data_module.DataSpec(
        num_classes=10, in_channels=3, spatial_dims=2, input_shape=(3, 16, 16)
    )
    assert first.train.inputs.dtype == torch.float32 and first.train.inputs.shape == (224, 3, 16, 16)
    assert first.train.targets.bincount(minlength=10).min() >= 5  # every class present, labels not constant
    # Learnable: class-mean colours estimated on train classify the test set by nearest colour.
    means = first.train.inputs.mean(dim=(2, 3))
    centroids = torch.stack([means[first.train.targets == label].mean(0) for label in range(10)])
    accuracy = (synthetic_labels(first.test.inputs, centroids) == first.test.targets).float().mean()
    assert accuracy >= 0.9


# ---------------------------------------------------------------------------------------------------------
# ImageNet folder


def test_imagenet_folder(tmp_path: Path) -> None:
    write_imagenet(tmp_path, train_per_class=6, val_per_class=2)
    datasets = build_datasets(DataConfig(dataset="imagenet", data_dir=tmp_path, val_size=3))
    assert (len(datasets.train), len(datasets.val), len(datasets.test)) == (15, 3, 6)
    assert datasets.spec == data_module.DataSpec(
        num_classes=3, in_channels=3, spatial_dims=2, input_shape=(3, 224, 224)
    )
    assert (
        datasets.train[0][0].shape == datasets.val[0][0].shape == datasets.test[0][0].shape == (3, 224, 224)
    )
    # Validation and test images are deterministic (resize + center crop); training ones are random crops.
    assert torch.equal(datasets.val[0][0], datasets.val[0][0])
    torch.manual_seed(0)
    assert not torch.equal(datasets.train[0][0], datasets.train[0][0])


def test_missing_imagenet_folder(tmp_path: Path) -> None:
    write_imagenet(tmp_path)
    (tmp_path / "imagenet" / "val").rename(tmp_path / "imagenet" / "validation")
    with pytest.raises(
        UserError, match=r"imagenet/val does not exist; expected <data_dir>/imagenet/\{train,val\}/"
    ):
        build_datasets(DataConfig(dataset="imagenet", data_dir=tmp_path, val_size=3))

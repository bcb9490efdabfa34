"""The device-resident CIFAR pipeline (harness/data/resident.py) against torchvision's, on CIFAR-format files
written by the tests: the same batches bit for bit (train, validation, test; CIFAR-10 and CIFAR-100; with and
without augmentation; any epoch, start batch and rank), the augmentation's distribution, its values for fixed
crops and flips, a mid-epoch resume of `harness run` and the same run under either pipeline (same run id,
same checkpoint), where the data live, and the errors."""

from __future__ import annotations

import dataclasses
import math
import os
import pickle
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torchvision
from conftest import HarnessCli
from fixtures_data import allow_unofficial_cifar, write_cifar
from PIL import Image
from test_cli import assert_user_error
from test_resume import assert_identical_runs
from torchvision.transforms import functional as TF

from harness.config import DataConfig, config_hash, resolve
from harness.data import cifar_files, loaders
from harness.data.datasets import CIFAR_STATS, Datasets, build_datasets
from harness.data.loaders import DEVICE_SHARE_OF_FREE_MEMORY, build_loaders, choose_pipeline
from harness.data.resident import (
    PADDING,
    POSITIONS,
    ResidentImages,
    crop_flip_draws,
    normalisation_table,
)
from harness.errors import UserError

TRAIN_PER_BATCH = 20  # write_cifar: 5 files of 20 = 100 training images
TEST_SIZE = 30


@pytest.fixture
def cifar_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for dataset in ("cifar10", "cifar100"):
        write_cifar(tmp_path, dataset, train_per_batch=TRAIN_PER_BATCH, test_size=TEST_SIZE, seed=4)
    allow_unofficial_cifar(monkeypatch)
    return tmp_path


def datasets_for(root: Path, dataset: str = "cifar10", **fields: Any) -> Datasets:
    return build_datasets(DataConfig(**{"dataset": dataset, "data_dir": root, "val_size": 11, **fields}))


def with_pipeline(datasets: Datasets, pipeline: str) -> Datasets:
    return dataclasses.replace(datasets, pipeline=pipeline)


def assert_same_batches(first: Iterator, second: Iterator) -> int:
    """Equal inputs and targets (values, dtypes, shapes) batch by batch; returns the number of batches."""
    first, second = list(first), list(second)
    assert len(first) == len(second)
    for (inputs_a, targets_a), (inputs_b, targets_b) in zip(first, second, strict=True):
        assert inputs_a.dtype == inputs_b.dtype == torch.float32 and targets_a.dtype == targets_b.dtype
        assert torch.equal(inputs_a, inputs_b) and torch.equal(targets_a, targets_b)
    return len(first)


# ---------------------------------------------------------------------------------------------------------
# The same batches as torchvision's, bit for bit


@pytest.mark.parametrize("augment", [True, False], ids=["augment", "plain"])
@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_resident_batches_are_the_torchvision_batches_bit_for_bit(
    cifar_root: Path, dataset: str, augment: bool
) -> None:
    datasets = datasets_for(cifar_root, dataset, augment=augment)
    compared = 0
    for world_size in (1, 2):
        for rank in range(world_size):
            for seed in (0, 7):
                shard = {"global_batch_size": 16, "rank": rank, "world_size": world_size, "seed": seed}
                resident = build_loaders(with_pipeline(datasets, "device"), **shard)
                reference = build_loaders(with_pipeline(datasets, "torchvision"), **shard)
                assert (resident.pipeline, reference.pipeline) == ("device", "torchvision")
                assert isinstance(resident.train.dataset, ResidentImages)
                assert not isinstance(reference.train.dataset, ResidentImages)
                # 89 training samples: 6 batches of 16, or per rank 45 (one repeated as padding) in 6 of 8.
                assert len(resident.train) == len(reference.train) == 6
                for epoch in (0, 3):
                    for start in (0, 2):
                        compared += assert_same_batches(
                            resident.train.iterate(epoch, start), reference.train.iterate(epoch, start)
                        )
                for split in ("val", "test"):
                    compared += assert_same_batches(
                        getattr(resident, split).iterate(), getattr(reference, split).iterate()
                    )
    # Per (rank, seed): 2 epochs x (6 + 4) training batches, 1 validation and 2 test batches; 3 x 2 of them.
    assert compared == 3 * 2 * (2 * (6 + 4) + 1 + 2)


def test_draws_are_torchvisions_for_large_batches_too() -> None:
    """One call per batch gives what torchvision's RandomCrop + RandomHorizontalFlip draw sample by sample."""
    crop, flip = (
        torchvision.transforms.RandomCrop(32, padding=PADDING),
        torchvision.transforms.RandomHorizontalFlip(),
    )
    image = torch.zeros(3, 32 + 2 * PADDING, 32 + 2 * PADDING)
    seeds, sizes = [3, 2**62 - 1, 123456789], [1000, 1, 257]
    expected = []
    with torch.random.fork_rng(devices=[]):
        for seed, size in zip(seeds, sizes, strict=True):
            torch.manual_seed(seed)
            for _ in range(size):
                top, left, _, _ = crop.get_params(image, (32, 32))
                expected.append((top, left, int(torch.rand(1).item() < flip.p)))
    assert crop_flip_draws(seeds, sizes).tolist() == [list(row) for row in expected]


def test_resident_loading_leaves_the_global_rng_untouched(cifar_root: Path) -> None:
    loaders_ = build_loaders(with_pipeline(datasets_for(cifar_root), "device"), global_batch_size=16, seed=2)
    state = torch.get_rng_state()
    list(loaders_.train.iterate(1, start_batch=1))
    list(loaders_.val.iterate())
    assert torch.equal(torch.get_rng_state(), state)


# ---------------------------------------------------------------------------------------------------------
# The augmentation: its distribution, and its values for fixed crops and flips


def test_crop_offsets_are_uniform_over_the_81_positions_and_flips_fair() -> None:
    # The loaders' own seeds: 400 batches of 128 from 8 epochs of a run over 6,400 samples.
    loader = loaders.TrainLoader(range(6400), batch_size=128, rank=0, world_size=1, seed=11)  # type: ignore[arg-type]
    seeds = [seed for epoch in range(8) for seed in loader.batch_seeds(epoch)]
    draws = crop_flip_draws(seeds, [128] * len(seeds))
    samples = len(draws)
    assert samples == 51200
    assert (
        draws[:, :2].min() == 0
        and draws[:, :2].max() == POSITIONS - 1
        and set(draws[:, 2].tolist()) == {0, 1}
    )
    # Chi-square over the 162 (top, left, flip) cells, all equally likely: the bound is the 99.9% quantile
    # of chi-square with 161 degrees of freedom (222.19, scipy.stats.chi2.ppf(0.999, 161)); a biased draw
    # (9 positions taken from 8, a flip that is never or always taken) exceeds it by thousands.
    cells = (draws[:, 0] * POSITIONS + draws[:, 1]) * 2 + draws[:, 2]
    counts = torch.bincount(cells, minlength=2 * POSITIONS**2).double()
    expected = samples / (2 * POSITIONS**2)
    assert ((counts - expected) ** 2 / expected).sum() < 222.19
    # The offsets alone over their 81 positions (99.9% quantile of chi-square with 80 degrees: 124.84).
    offsets = torch.bincount(cells // 2, minlength=POSITIONS**2).double()
    assert ((offsets - samples / 81) ** 2 / (samples / 81)).sum() < 124.84
    # Flip frequency within 4 standard deviations (one is 0.0022) of 1/2.
    assert abs(draws[:, 2].double().mean().item() - 0.5) < 4 * math.sqrt(0.25 / samples)


def test_fixed_crops_and_flips_equal_torchvisions_functional_transforms(cifar_root: Path) -> None:
    base = datasets_for(cifar_root).train.dataset  # torchvision's CIFAR10, images as loaded from the files
    mean, std = CIFAR_STATS["cifar10"]
    position = 5
    image = torch.from_numpy(base.data[position : position + 1]).permute(0, 3, 1, 2)
    resident = ResidentImages(
        image, torch.tensor([base.targets[position]]), normalisation_table(mean, std), augment=True
    )
    picture = Image.fromarray(base.data[position])
    for top in range(POSITIONS):
        for left in range(POSITIONS):
            for flip in (0, 1):
                crop = TF.crop(TF.pad(picture, PADDING), top, left, 32, 32)
                expected = TF.normalize(TF.to_tensor(TF.hflip(crop) if flip else crop), mean, std)
                inputs, targets = resident.batch(torch.tensor([0]), torch.tensor([[top, left, flip]]))
                assert torch.equal(inputs[0], expected), (top, left, flip)
                assert targets.tolist() == [base.targets[position]]


def test_normalisation_table_is_to_tensor_and_normalize_for_every_value() -> None:
    for dataset, (mean, std) in CIFAR_STATS.items():
        every_value = np.tile(np.arange(256, dtype=np.uint8).reshape(16, 16, 1), (1, 1, 3))
        expected = TF.normalize(TF.to_tensor(Image.fromarray(every_value)), mean, std).view(3, 256)
        assert torch.equal(normalisation_table(mean, std), expected), dataset


# ---------------------------------------------------------------------------------------------------------
# Where the data live, and when "auto" holds them on the device


def test_batches_are_assembled_on_the_device_without_reading_it(cifar_root: Path) -> None:
    """On the meta device nothing can be read back: a per-batch host round-trip (.item(), .tolist(), a copy
    to the CPU) would raise, and so would host tensors mixed into the gather's arithmetic."""
    meta = torch.device("meta")
    for augment in (True, False):
        loaders_ = build_loaders(
            with_pipeline(datasets_for(cifar_root, augment=augment), "device"),
            global_batch_size=16,
            device=meta,
        )
        assert loaders_.pipeline == "device" and loaders_.train.dataset.device == meta
        for inputs, targets in [*loaders_.train.iterate(2, start_batch=1), *loaders_.test.iterate()]:
            assert inputs.device == targets.device == meta
            assert inputs.shape[1:] == (3, 32, 32) and inputs.dtype == torch.float32
    synthetic = build_datasets(DataConfig(dataset="synthetic", num_samples=100, val_size=10))
    in_memory = build_loaders(synthetic, global_batch_size=32, device=meta)
    assert in_memory.pipeline == "device"
    for inputs, targets in [*in_memory.train.iterate(0, start_batch=1), *in_memory.val.iterate()]:
        assert inputs.device == targets.device == meta
    on_host = build_loaders(with_pipeline(synthetic, "torchvision"), global_batch_size=32, device=meta)
    assert next(iter(on_host.train.iterate(0)))[0].device.type == "cpu"  # the loop moves these batches


def test_resident_size_is_what_the_device_holds(cifar_root: Path) -> None:
    for augment in (True, False):
        datasets = datasets_for(cifar_root, augment=augment)
        held = datasets.resident.load(torch.device("cpu"))
        assert datasets.resident.nbytes == sum(part.pixels.nbytes + part.targets.nbytes for part in held)
        assert held[0].pixels.shape == ((89, 3, 40, 40) if augment else (89, 3, 32, 32))


def test_auto_holds_cifar_on_a_gpu_only_when_it_fits(
    cifar_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    datasets = datasets_for(cifar_root)
    needed = datasets.resident.nbytes
    room = math.ceil(needed / DEVICE_SHARE_OF_FREE_MEMORY)
    cuda = torch.device("cuda")
    for free, chosen in ((room, "device"), (room - 8, "torchvision")):
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device, free=free: (free, 2 * free))
        assert choose_pipeline(datasets, cuda) == chosen
    # "device" is taken as asked, whatever the free memory; "torchvision" likewise.
    assert choose_pipeline(with_pipeline(datasets, "device"), cuda) == "device"
    assert choose_pipeline(with_pipeline(datasets, "torchvision"), torch.device("cpu")) == "torchvision"
    assert choose_pipeline(datasets, torch.device("cpu")) == "device"


def test_auto_keeps_file_datasets_without_a_resident_pipeline_on_the_host(cifar_root: Path) -> None:
    base = datasets_for(cifar_root)
    files_only = dataclasses.replace(base, resident=None)
    assert choose_pipeline(files_only, torch.device("cpu")) == "torchvision"
    with pytest.raises(UserError, match=r"^data\.pipeline: 'device' needs a dataset the loaders can hold"):
        choose_pipeline(with_pipeline(files_only, "device"), torch.device("cpu"))


# ---------------------------------------------------------------------------------------------------------
# The pipeline is not part of a run's identity, and `device` where there is none is a config error


def test_pipeline_is_not_part_of_the_run_id() -> None:
    hashes = {
        config_hash(resolve("granet", dataset="cifar10", overrides={"data": {"pipeline": pipeline}}))
        for pipeline in ("auto", "device", "torchvision")
    }
    assert len(hashes) == 1


@pytest.mark.parametrize(
    ("dataset", "message"),
    [
        ("imagenet", "'device' is not available for dataset 'imagenet'"),
        ("my_data:waveforms", "'device' is not available for dataset 'my_data:waveforms'"),
    ],
)
def test_device_pipeline_without_one_is_a_one_line_config_error(
    harness_cli: HarnessCli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dataset: str, message: str
) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "examples" / "plugins"))
    result = harness_cli.invoke(
        "run", "granet", "--dataset", dataset, "--data-dir", str(tmp_path / "data"),
        "--runs-dir", str(harness_cli.runs_dir), "--set", "data.pipeline=device",
    )  # fmt: skip
    assert_user_error(
        result,
        f"data.pipeline: {message}: only cifar10, cifar100, mnist1d, synthetic can be held on the device; "
        "use 'auto' or 'torchvision'",
    )
    assert not harness_cli.runs_dir.exists() and not (tmp_path / "data").exists()


# ---------------------------------------------------------------------------------------------------------
# `harness run` on CIFAR-format files: mid-epoch resume, and the same run under either pipeline

CIFAR_TRAIN, CIFAR_VAL, CIFAR_BATCH = 80, 20, 16
STEPS_PER_EPOCH = CIFAR_TRAIN // CIFAR_BATCH


@pytest.fixture
def cifar_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    data_dir = tmp_path / "cifar"
    write_cifar(data_dir, "cifar10", train_per_batch=20, test_size=20)
    allow_unofficial_cifar(monkeypatch)

    def argv(runs_dir: Path, pipeline: str) -> list[str]:
        return [
            "run", "granet", "--arch", "resnet20", "--dataset", "cifar10", "--data-dir", str(data_dir),
            "--runs-dir", str(runs_dir), "--epochs", "2", "--batch-size", str(CIFAR_BATCH),
            "--update-frequency", "3", "--wandb", "disabled", "--set", f"data.val_size={CIFAR_VAL}",
            "--set", "model.width=0.25", "--set", "data.num_workers=0", "--set", "data.download=false",
            "--set", f"data.pipeline={pipeline}", "--set", "tracking.log_every=1",
        ]  # fmt: skip

    return argv


@pytest.fixture
def passes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int, int]]:
    """(dataset type, epoch, start batch) of every pass over the training data the loop makes."""
    seen: list[tuple[str, int, int]] = []
    iterate = loaders.TrainLoader.iterate

    def recording(self: loaders.TrainLoader, epoch: int, start_batch: int = 0) -> Iterator[Any]:
        seen.append((type(self.dataset).__name__, epoch, start_batch))
        return iterate(self, epoch, start_batch)

    monkeypatch.setattr(loaders.TrainLoader, "iterate", recording)
    return seen


def test_resident_run_interrupted_mid_epoch_resumes_bit_identical(
    harness_cli: HarnessCli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cifar_run: Any, passes: list
) -> None:
    reference = harness_cli.invoke(*cifar_run(tmp_path / "reference", "device"))
    assert reference.exit_code == 0, reference.stderr
    iterate = loaders.TrainLoader.iterate

    def stopping(self: loaders.TrainLoader, epoch: int, start_batch: int = 0) -> Iterator[Any]:
        for index, batch in enumerate(iterate(self, epoch, start_batch), start=start_batch):
            if (epoch, index) == (1, 2):
                os.kill(os.getpid(), signal.SIGTERM)  # the loop finishes this step, then checkpoints
            yield batch

    argv = cifar_run(harness_cli.runs_dir, "device")
    monkeypatch.setattr(loaders.TrainLoader, "iterate", stopping)
    interrupted = harness_cli.invoke(*argv)
    assert interrupted.exit_code == 3, interrupted.stderr
    monkeypatch.setattr(loaders.TrainLoader, "iterate", iterate)
    run_dir = harness_cli.runs_dir / "default" / Path(reference.last_line).name
    state = harness_cli.files(run_dir).checkpoint()
    assert (state["epoch"], state["step"]) == (1, STEPS_PER_EPOCH + 3)  # inside epoch 1, after its batch 2

    resumed = harness_cli.invoke(*argv)
    assert resumed.exit_code == 0, resumed.stderr
    assert resumed.last_line == str(run_dir)
    # Reference, interrupted and resumed runs, all on the resident images; the resumed pass starts at batch 3.
    assert passes == [("ResidentImages", epoch, 0) for epoch in (0, 1)] * 2 + [("ResidentImages", 1, 3)]
    assert_identical_runs(harness_cli.files(run_dir), harness_cli.files(reference.last_line))


def test_the_same_run_under_either_pipeline_has_one_run_id_and_one_checkpoint(
    harness_cli: HarnessCli, tmp_path: Path, cifar_run: Any, passes: list
) -> None:
    results = {}
    for pipeline in ("device", "torchvision"):
        result = harness_cli.invoke(*cifar_run(tmp_path / pipeline, pipeline))
        assert result.exit_code == 0, result.stderr
        results[pipeline] = Path(result.last_line)
    assert {kind for kind, _, _ in passes} == {"ResidentImages", "Subset"}  # each pipeline really ran
    assert results["device"].name == results["torchvision"].name
    assert_identical_runs(harness_cli.files(results["torchvision"]), harness_cli.files(results["device"]))


# ---------------------------------------------------------------------------------------------------------
# The CIFAR-format writer


def test_written_cifar_files_are_what_torchvision_reads(tmp_path: Path) -> None:
    folder = cifar_files.write_cifar_files(tmp_path, "cifar10", train=103, test=7, seed=2)
    assert folder == tmp_path / "cifar-10-batches-py"
    with pytest.raises(RuntimeError, match="corrupted"):  # torchvision's MD5 check refuses them ...
        torchvision.datasets.CIFAR10(str(tmp_path), train=True)
    official = torchvision.datasets.cifar.check_integrity
    with cifar_files.accept_unofficial_cifar():  # ... except inside the block
        train = torchvision.datasets.CIFAR10(str(tmp_path), train=True)
        test = torchvision.datasets.CIFAR10(str(tmp_path), train=False)
    assert torchvision.datasets.cifar.check_integrity is official
    assert train.data.shape == (103, 32, 32, 3) and train.data.dtype == np.uint8 and len(test) == 7
    assert train.classes[0] == "airplane" and set(train.targets) <= set(range(10))
    # 103 images over the five files as evenly as possible: 21, 21, 21, 20, 20.
    sizes = []
    for index in range(1, 6):
        with open(folder / f"data_batch_{index}", "rb") as handle:
            sizes.append(len(pickle.load(handle, encoding="latin1")["labels"]))
    assert sizes == [21, 21, 21, 20, 20]
    # The seed fixes the content.
    again = cifar_files.write_cifar_files(tmp_path / "again", "cifar10", train=103, test=7, seed=2)
    assert all((again / path.name).read_bytes() == path.read_bytes() for path in folder.iterdir())

    hundred = cifar_files.write_cifar_files(tmp_path, "cifar100", train=50, test=5)
    with cifar_files.accept_unofficial_cifar():
        cifar100 = torchvision.datasets.CIFAR100(str(tmp_path), train=True)
    assert hundred.name == "cifar-100-python" and len(cifar100) == 50 and len(cifar100.classes) == 100
    with pytest.raises(ValueError, match="'cifar' is not a CIFAR dataset"):
        cifar_files.write_cifar_files(tmp_path, "cifar")

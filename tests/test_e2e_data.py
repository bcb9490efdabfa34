"""`harness run` on the file-backed datasets, in their real on-disk formats written by the test itself:
CIFAR-10 (torchvision's loader, the fixed validation split, augmentation) with ResNet-20 and VGG-19, and
an ImageNet-layout ImageFolder tree with ResNet-50 at 224 x 224."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import HarnessCli
from fixtures_data import allow_unofficial_cifar, write_cifar, write_imagenet

from harness.config import DataConfig
from harness.data import datasets as data_sets
from harness.data import loaders

# write_cifar: 5 batches of 20 = 100 training images, 20 test images; 20 are held out for validation.
CIFAR_TRAIN, CIFAR_VAL, CIFAR_TEST = 80, 20, 20
CIFAR_BATCH = 16


@pytest.fixture
def recorded_batches(
    monkeypatch: pytest.MonkeyPatch,
) -> list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Every training batch the loop consumes: (epoch, subset positions, inputs, targets)."""
    batches: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]] = []
    iterate = loaders.TrainLoader.iterate

    def recording(self: loaders.TrainLoader, epoch: int, start_batch: int = 0) -> Iterator[Any]:
        order = self.epoch_indices(epoch)[start_batch * self.batch_size :]
        for index, (inputs, targets) in enumerate(iterate(self, epoch, start_batch)):
            positions = order[index * self.batch_size : (index + 1) * self.batch_size]
            batches.append((epoch, positions, inputs.clone(), targets.clone()))
            yield inputs, targets

    monkeypatch.setattr(loaders.TrainLoader, "iterate", recording)
    return batches


def is_fraction_of(value: float, count: int) -> bool:
    return math.isclose(value * count, round(value * count), abs_tol=1e-9) and 0 <= value <= 1


# ResNet-20 on the torchvision pipeline with worker processes, VGG-19 on the default (here: the resident one).
@pytest.mark.parametrize(
    ("arch", "augment", "workers", "pipeline"),
    [("resnet20", True, 2, "torchvision"), ("vgg19", False, 0, "auto")],
    ids=["resnet20", "vgg19"],
)
def test_cifar10_runs_end_to_end(
    harness_cli: HarnessCli,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    recorded_batches: list,
    arch: str,
    augment: bool,
    workers: int,
    pipeline: str,
) -> None:
    data_dir = tmp_path / "cifar"
    write_cifar(data_dir, "cifar10", train_per_batch=20, test_size=CIFAR_TEST)
    allow_unofficial_cifar(monkeypatch)
    result = harness_cli.invoke(
        "run", "granet", "--arch", arch, "--dataset", "cifar10", "--data-dir", str(data_dir),
        "--runs-dir", str(harness_cli.runs_dir), "--epochs", "2", "--batch-size", str(CIFAR_BATCH),
        "--update-frequency", "2", "--wandb", "disabled", "--set", f"data.val_size={CIFAR_VAL}",
        "--set", "model.width=0.25", "--set", f"data.augment={str(augment).lower()}",
        "--set", f"data.num_workers={workers}", "--set", "data.download=false",
        "--set", f"data.pipeline={pipeline}",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    run_dir = Path(result.last_line)
    files = harness_cli.files(run_dir)
    steps_per_epoch = math.ceil(CIFAR_TRAIN / CIFAR_BATCH)

    assert files.status == "completed\n"
    summary = files.summary
    assert (summary["dataset"], summary["arch"], summary["steps"]) == ("cifar10", arch, 2 * steps_per_epoch)
    assert summary["density"] == round(0.1 * summary["masked_weights"]) / summary["masked_weights"]
    epochs = files.lines("epoch")
    assert [line["step"] for line in epochs] == [steps_per_epoch, 2 * steps_per_epoch]
    for line in epochs:
        assert is_fraction_of(line["val/acc"], CIFAR_VAL) and is_fraction_of(line["test/acc"], CIFAR_TEST)
        assert is_fraction_of(line["train/acc"], CIFAR_TRAIN)
    state = files.checkpoint()
    assert state["model"]["fc.weight" if arch == "resnet20" else "classifier.weight"].shape[0] == 10

    # The loop saw every training image once per epoch, as 32x32 RGB, and none of the validation split.
    raw = data_sets.build_datasets(
        DataConfig(dataset="cifar10", data_dir=data_dir, val_size=CIFAR_VAL, augment=False, download=False)
    )
    assert len(recorded_batches) == 2 * steps_per_epoch
    for epoch in (0, 1):
        positions = torch.cat([batch[1] for batch in recorded_batches if batch[0] == epoch])
        assert sorted(positions.tolist()) == list(range(CIFAR_TRAIN))
    identical = []
    for _, positions, inputs, targets in recorded_batches:
        assert inputs.shape == (len(positions), 3, 32, 32)
        plain = torch.stack([raw.train[int(position)][0] for position in positions])
        assert targets.tolist() == [raw.train[int(position)][1] for position in positions]
        identical.append(torch.equal(inputs, plain))
    # Augmentation (random crop with padding 4, horizontal flip) changes the training images; without it the
    # batches are exactly the normalised images.
    if augment:
        assert not any(identical)
    else:
        assert all(identical)
    held_out = set(data_sets.fixed_split(CIFAR_TRAIN + CIFAR_VAL, CIFAR_VAL)[1].tolist())
    assert set(raw.train.indices).isdisjoint(held_out)


def test_imagenet_folder_runs_end_to_end_with_resnet50(harness_cli: HarnessCli, tmp_path: Path) -> None:
    """3 classes: 6 training images (2 held out for validation), 3 test images (the official val folder)."""
    data_dir = tmp_path / "images"
    write_imagenet(data_dir, train_per_class=2, val_per_class=1, size=(48, 40))
    result = harness_cli.invoke(
        "run", "gmp", "--arch", "resnet50", "--dataset", "imagenet", "--data-dir", str(data_dir),
        "--runs-dir", str(harness_cli.runs_dir), "--epochs", "1", "--batch-size", "2", "--update-frequency", "1",
        "--wandb", "disabled", "--set", "data.val_size=2", "--set", "data.num_workers=0",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    files = harness_cli.files(Path(result.last_line))
    assert files.status == "completed\n"
    summary = files.summary
    assert (summary["dataset"], summary["arch"], summary["steps"], summary["epochs"]) == (
        "imagenet",
        "resnet50",
        2,
        1,
    )
    # Pruning ends at t_e = round(0.3 * 2) = 1 step: the final density after the only event.
    assert summary["density"] == round(0.1 * summary["masked_weights"]) / summary["masked_weights"]
    assert [line["step"] for line in files.lines("mask_update")] == [0, 1]
    (epoch,) = files.lines("epoch")
    assert is_fraction_of(epoch["val/acc"], 2) and is_fraction_of(epoch["test/acc"], 3)
    # torchvision's ImageNet ResNet-50: a 7x7 stem, 3 classes out.
    state = files.checkpoint()
    assert tuple(state["model"]["conv1.weight"].shape) == (64, 3, 7, 7)
    assert tuple(state["model"]["fc.weight"].shape) == (3, 2048)

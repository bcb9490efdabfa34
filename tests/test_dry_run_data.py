"""`--dry-run` says when the dataset is not there (creating nothing); `load_config_file` takes a str path."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness import config as configuration
from harness.data.presence import missing_data
from harness.errors import UserError


def test_dry_run_of_a_cifar_run_warns_in_one_line_that_the_data_is_missing(harness_cli, tmp_path: Path):
    data = tmp_path / "data"
    result = harness_cli.invoke("run", "dense", "--data-dir", str(data), "--dry-run")
    assert result.exit_code == 0, result.stderr
    assert result.stderr == (
        f"warning: data.data_dir: cifar10 is not in {data / 'cifar-10-batches-py'}; "
        "a run would download it (needs network)\n"
    )
    assert result.stdout.splitlines()[-1].startswith("runs/default/dense-resnet20-cifar10-s0-")
    assert not data.exists()

    offline = harness_cli.invoke(
        "plasticity", "--probe-epoch", "0", "--pruning-rate", "0.5", "--dataset", "cifar100",
        "--data-dir", str(data), "--set", "data.download=false", "--dry-run",
    )  # fmt: skip
    assert offline.exit_code == 0, offline.stderr
    assert offline.stderr == (
        f"warning: data.data_dir: cifar100 is not in {data / 'cifar-100-python'}; "
        "a run would fail (data.download=false)\n"
    )


def test_no_warning_when_the_data_is_there_or_generated(harness_cli, tmp_path: Path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    damaged = harness_cli.invoke("run", "dense", "--data-dir", str(tmp_path), "--dry-run")
    assert damaged.exit_code == 0
    assert damaged.stderr == (
        f"warning: data.data_dir: cifar10 folder {folder} is damaged (lacks batches.meta, data_batch_1, "
        "data_batch_2, data_batch_3, data_batch_4, data_batch_5, test_batch); a run would fail\n"
    )
    for name in (
        "batches.meta",
        "data_batch_1",
        "data_batch_2",
        "data_batch_3",
        "data_batch_4",
        "data_batch_5",
    ):
        (folder / name).write_bytes(b"")
    (folder / "test_batch").write_bytes(b"")  # names only: torchvision checks the contents when it opens them
    present = harness_cli.invoke("run", "dense", "--data-dir", str(tmp_path), "--dry-run")
    assert present.exit_code == 0 and present.stderr == ""
    generated = harness_cli.invoke(
        "run", "dense", "--dataset", "mnist1d", "--data-dir", str(tmp_path / "x"), "--dry-run"
    )
    assert generated.exit_code == 0 and generated.stderr == ""


@pytest.mark.parametrize("layout", [(), ("train",), ("train", "val")])
def test_imagenet_folders(tmp_path: Path, layout):
    for name in layout:
        (tmp_path / "imagenet" / name).mkdir(parents=True)
    data = configuration.DataConfig(dataset="imagenet", data_dir=tmp_path)
    expected = {
        (): f"data.data_dir: ImageNet folder {tmp_path / 'imagenet' / 'train'} does not exist; a run would fail",
        (
            "train",
        ): f"data.data_dir: ImageNet folder {tmp_path / 'imagenet' / 'val'} does not exist; a run would fail",
        ("train", "val"): None,
    }
    assert missing_data(data) == expected[layout]


def test_load_config_file_takes_a_str_or_a_path(tmp_path: Path):
    config = configuration.resolve(
        "granet", dataset="mnist1d", arch="resnet20", overrides={"run": {"seed": 4}}
    )
    path = tmp_path / "config.yaml"
    path.write_text(configuration.dump_yaml(config))
    assert configuration.load_config_file(str(path)) == config == configuration.load_config_file(path)
    with pytest.raises(UserError, match=f"^{tmp_path / 'absent.yaml'}: cannot read config"):
        configuration.load_config_file(str(tmp_path / "absent.yaml"))

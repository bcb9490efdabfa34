"""Config resolution: recipe layering, --set parsing, validation messages, run identity."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from harness import config as configuration
from harness.config import Config, load_recipe, parse_assignments, resolve, run_id, validate
from harness.engine.loop import epoch_step, lr_factor
from harness.errors import UserError
from harness.sparse import MaskSet, build_method


def test_every_table_1_row_has_a_recipe_with_the_papers_numbers():
    for dataset, arch in [
        ("cifar10", "resnet20"),
        ("cifar10", "vgg19"),
        ("cifar10", "resnet50"),
        ("cifar100", "resnet50"),
    ]:
        config = resolve("granet", dataset=dataset, arch=arch)
        optim = config.optim
        assert (optim.epochs, optim.batch_size, optim.lr, optim.momentum, optim.nesterov) == (
            160,
            128,
            0.1,
            0.9,
            True,
        )
        assert (
            optim.weight_decay == 5e-4 and optim.lr_decay_at == (0.5, 0.75) and optim.lr_decay_factor == 0.1
        )
        assert [round(point * optim.epochs) for point in optim.lr_decay_at] == [80, 120]
        assert config.sparsity.update_frequency == 1000 and config.sparsity.prune_end * optim.epochs == 80
        assert config.data.val_size == 5000 and config.data.dataset == dataset and config.model.arch == arch
    imagenet = resolve("granet", dataset="imagenet", arch="resnet50")
    optim = imagenet.optim
    assert (optim.epochs, optim.lr, optim.nesterov, optim.weight_decay, optim.label_smoothing) == (
        100,
        0.1,
        False,
        1e-4,
        0.1,
    )
    assert optim.decay_norm_and_bias is False and round(optim.warmup * optim.epochs) == 5
    assert [round(point * optim.epochs) for point in optim.lr_decay_at] == [30, 60, 90]
    assert (
        imagenet.sparsity.update_frequency == 4000 and round(imagenet.sparsity.prune_end * optim.epochs) == 30
    )


def test_arch_specific_recipe_extends_the_dataset_recipe_and_others_fall_back_to_it():
    shared = load_recipe("cifar10", "resnet56")  # no cifar10-resnet56.yaml: the dataset recipe
    assert "model" not in shared and shared["optim"]["epochs"] == 160
    assert load_recipe("cifar10", "resnet20") == shared | {"model": {"arch": "resnet20"}}
    assert load_recipe("cifar100", "vgg19")["data"]["dataset"] == "cifar100"


def test_layers_win_in_order_defaults_recipe_overrides():
    config = resolve(
        "granet", dataset="mnist1d", overrides={"optim": {"lr": 0.05}, "sparsity": {"sparsity": 0.95}}
    )
    assert config.optim.lr == 0.05 and config.sparsity.sparsity == 0.95
    assert config.optim.batch_size == load_recipe("mnist1d", "resnet20")["optim"]["batch_size"]
    assert config.tracking.wandb == "offline"  # a default no layer touched


def test_set_assignments_parse_yaml_values():
    assert parse_assignments(["optim.lr=0.05", "run.keep_checkpoints=[10, 20]", "data.augment=false"]) == {
        "optim": {"lr": 0.05},
        "run": {"keep_checkpoints": [10, 20]},
        "data": {"augment": False},
    }
    for bad in ["optim.lr", "lr=0.1", "a.b.c=1", ".lr=1"]:
        with pytest.raises(UserError, match="section.key=value"):
            parse_assignments([bad])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"sparsity": {"sparsity": 1.5}}, r"^sparsity\.sparsity: Input should be less than 1 \(got 1\.5\)$"),
        (
            {"sparsity": {"sparsity": 0.5, "init_sparsity": 0.7}},
            r"^sparsity: init_sparsity \(0\.7\) must not exceed",
        ),
        ({"optim": {"lr_decay_at": [0.75, 0.5]}}, r"^optim\.lr_decay_at: must be increasing fractions"),
        ({"optim": {"momentum": 1.0}}, r"^optim\.momentum: Input should be less than 1"),
        ({"optim": {"bogus": 1}}, r"^optim\.bogus: unknown field$"),
        ({"tracking": {"group": "../escape"}}, r"^tracking\.group: String should match pattern"),
    ],
)
def test_invalid_values_are_one_line_errors_naming_the_field(overrides, message):
    with pytest.raises(UserError, match=message) as raised:
        resolve("granet", dataset="mnist1d", overrides=overrides)
    assert "\n" not in str(raised.value)


def test_unknown_method_arch_and_dataset_list_the_valid_names():
    with pytest.raises(UserError) as raised:
        resolve("snap", dataset="mnist1d")
    assert str(raised.value) == (
        "sparsity.method: unknown method 'snap' (did you mean 'snip'?); valid: dense, static, gmp, "
        "gmp-layerwise, granet, rigl, set, snip, grasp, synflow, mest, acdc, or a plug-in as MODULE:NAME"
    )
    with pytest.raises(
        UserError,
        match=r"model\.arch: unknown architecture 'resnet18' \(did you mean '\w+'\?\); valid: resnet20, resnet32",
    ):
        resolve("dense", dataset="mnist1d", arch="resnet18")
    with pytest.raises(
        UserError,
        match=r"data\.dataset: unknown dataset 'mnist' \(did you mean 'mnist1d'\?\); valid: cifar10, cifar100",
    ):
        resolve("dense", dataset="mnist")


def test_run_id_is_a_content_address():
    base = resolve("granet", dataset="mnist1d")
    same = resolve(
        "granet", dataset="mnist1d", overrides={"data": {"data_dir": "/elsewhere", "num_workers": 7}}
    )
    assert run_id(base) == run_id(same)  # where data lives and how fast it loads are not identity
    assert run_id(base) == run_id(
        resolve("granet", dataset="mnist1d", overrides={"tracking": {"runs_dir": "/x"}})
    )
    assert run_id(base).startswith("granet-resnet20-mnist1d-s0-")
    different = [
        resolve("granet", dataset="mnist1d", overrides={"run": {"seed": 1}}),
        resolve("granet", dataset="mnist1d", overrides={"optim": {"lr": 0.05}}),
        resolve("gmp", dataset="mnist1d"),
    ]
    ids = {run_id(base), *(run_id(config) for config in different), run_id(base, world_size=2)}
    assert len(ids) == 5


def test_fields_a_method_does_not_read_are_reset_so_runs_are_shared():
    dense = resolve(
        "dense", dataset="mnist1d", overrides={"sparsity": {"sparsity": 0.95, "init_sparsity": 0.5}}
    )
    assert dense.sparsity.sparsity == 0.0 and dense.sparsity.init_sparsity == 0.0
    assert run_id(dense) == run_id(resolve("dense", dataset="mnist1d"))
    rigl = resolve(
        "rigl", dataset="mnist1d", overrides={"sparsity": {"sparsity": 0.95, "init_sparsity": 0.5}}
    )
    assert (rigl.sparsity.sparsity, rigl.sparsity.init_sparsity) == (0.95, 0.0)
    granet = resolve(
        "granet", dataset="mnist1d", overrides={"sparsity": {"sparsity": 0.95, "init_sparsity": 0.5}}
    )
    assert (granet.sparsity.sparsity, granet.sparsity.init_sparsity) == (0.95, 0.5)
    # Ignored values are still validated first.
    with pytest.raises(UserError, match=r"sparsity\.sparsity"):
        resolve("dense", dataset="mnist1d", overrides={"sparsity": {"sparsity": 1.5}})


def test_a_written_config_reads_back_identically(tmp_path: Path):
    config = resolve(
        "granet", dataset="cifar10", arch="vgg19", overrides={"run": {"keep_checkpoints": [0, 10]}}
    )
    path = tmp_path / "config.yaml"
    path.write_text(configuration.dump_yaml(config))
    assert configuration.load_config_file(path) == config
    assert yaml.safe_load(path.read_text())["run"]["keep_checkpoints"] == [0, 10]
    assert Config() == validate(Config().to_dict())


def test_fractions_become_steps_on_epoch_boundaries():
    config = resolve("granet", dataset="cifar10", arch="resnet20", overrides={"optim": {"epochs": 30}})
    steps_per_epoch = 352
    masks = MaskSet([("w", torch.zeros(10))])
    run = {"total_steps": 30 * steps_per_epoch, "steps_per_epoch": steps_per_epoch, "seed": 3}
    method = build_method("granet", masks, None, config.sparsity.settings, **run)
    assert (method.schedule.start, method.schedule.end) == (0, 15 * 352)
    assert method.schedule.every == 1000 and method.total_steps == 30 * 352 and method.seed == 3
    milestones = [epoch_step(point, 30, steps_per_epoch) for point in config.optim.lr_decay_at]
    assert milestones == [15 * 352, round(22.5 * 352)]
    assert lr_factor(milestones[0] - 1, warmup_steps=0, milestones=milestones, decay=0.1) == 1.0
    assert lr_factor(milestones[0], warmup_steps=0, milestones=milestones, decay=0.1) == pytest.approx(0.1)
    assert lr_factor(milestones[1], warmup_steps=0, milestones=milestones, decay=0.1) == pytest.approx(0.01)
    assert lr_factor(0, warmup_steps=4, milestones=milestones, decay=0.1) == 0.25
    assert lr_factor(3, warmup_steps=4, milestones=milestones, decay=0.1) == 1.0

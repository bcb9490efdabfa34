"""`harness plasticity` end to end on MNIST-1D: probes, their controls, filter probes, and what regeneration
changes (only the regrowth itself).

Base runs train 3 epochs of 9 steps and keep a checkpoint at every epoch (--probe-every 1); probes prune at
epoch 1 and continue for 1 epoch. The base runs and the control are trained once per module and copied
into each test's own runs directory.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from conftest import HarnessCli, RunFiles

from harness.config import load_config_file
from harness.data import loaders
from harness.studies import plan as plasticity
from harness.studies import probe as study_probe

STEPS_PER_EPOCH = 9
PROBE_EPOCH = 1
PROBE_STEP = PROBE_EPOCH * STEPS_PER_EPOCH
PROBE_KEYS = {
    "probe_epoch", "pruning_rate", "criterion", "regeneration", "continue_epochs", "pretrained_sparsity",
    "acc_pre", "acc_post", "acc_continue", "acc_control", "plasticity", "base_run", "control_run",
}  # fmt: skip
TIMING_KEYS = {"time/epoch_s"}


def study_argv(harness_cli: HarnessCli, runs_dir: Path, pretrained_sparsity: float, *probe: str) -> list[str]:
    return [
        "plasticity", "--probe-epoch", str(PROBE_EPOCH), "--continue-epochs", "1", "--probe-every", "1",
        "--pretrained-sparsity", str(pretrained_sparsity), *harness_cli.mnist1d(epochs=3, runs_dir=runs_dir),
        *probe,
    ]  # fmt: skip


def probe(harness_cli: HarnessCli, runs_dir: Path, pretrained_sparsity: float, *options: str) -> RunFiles:
    result = harness_cli.invoke(*study_argv(harness_cli, runs_dir, pretrained_sparsity, *options))
    assert result.exit_code == 0, result.stderr
    return harness_cli.files(result.last_line)


@pytest.fixture(scope="module")
def trained_bases(tmp_path_factory: pytest.TempPathFactory, mnist1d_dir: Path) -> Iterator[Path]:
    """A runs directory holding the dense base and the 50%-sparse base with their epoch-1 controls."""
    root = tmp_path_factory.mktemp("plasticity-bases")
    harness_cli = HarnessCli(root / "runs", mnist1d_dir, root)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        for sparsity in (0.0, 0.5):
            argv = study_argv(
                harness_cli, root / "runs", sparsity, "--pruning-rate", "0.5", "--stage", "control"
            )
            result = harness_cli.invoke(*argv)
            assert result.exit_code == 0, result.stderr
        yield root / "runs"


@pytest.fixture
def runs_dir(trained_bases: Path, tmp_path: Path) -> Path:
    """This test's own copy of the trained bases and controls."""
    return Path(shutil.copytree(trained_bases, tmp_path / "study"))


def base_of(runs_dir: Path, files: RunFiles) -> RunFiles:
    return RunFiles(runs_dir / files.summary["base_run"])


def base_masks(runs_dir: Path, files: RunFiles) -> dict[str, np.ndarray]:
    state = base_of(runs_dir, files).checkpoint(f"epoch_{PROBE_EPOCH:04d}.pt")
    return {name: mask.numpy() for name, mask in state["sparsifier"]["masks"].items()}


def masks_after_pruning(files: RunFiles) -> dict[str, np.ndarray]:
    """The probe's first snapshot: the masks right after pruning (and regrowth), at the probe step."""
    snapshots = files.snapshots()
    assert min(snapshots) == PROBE_STEP
    return snapshots[PROBE_STEP]


def is_conv(mask: np.ndarray) -> bool:
    return mask.ndim >= 3


def filters_alive(mask: np.ndarray) -> np.ndarray:
    return mask.reshape(mask.shape[0], -1).any(axis=1)


def without(record: dict[str, Any], keys: set[str]) -> dict[str, Any]:
    return {key: value for key, value in record.items() if key not in keys}


# ---------------------------------------------------------------------------------------------------------
# A probe and its chain


def test_probe_summary_control_and_base(harness_cli: HarnessCli, runs_dir: Path) -> None:
    files = probe(harness_cli, runs_dir, 0.0, "--pruning-rate", "0.5", "--regeneration")
    summary = files.summary
    assert PROBE_KEYS <= set(summary)
    assert (summary["probe_epoch"], summary["pruning_rate"], summary["criterion"]) == (1, 0.5, "global")
    assert (summary["regeneration"], summary["continue_epochs"], summary["pretrained_sparsity"]) == (
        True,
        1,
        0.0,
    )
    for key in ("acc_pre", "acc_post", "acc_continue", "acc_control"):
        assert 0 <= summary[key] <= 1 and summary[key] * 80 == pytest.approx(round(summary[key] * 80)), key
    assert summary["plasticity"] == summary["acc_continue"] - summary["acc_pre"]
    assert summary["acc_continue"] == summary["test_acc"] == files.lines("epoch")[-1]["test/acc"]
    assert files.summary["steps"] == (PROBE_EPOCH + 1) * STEPS_PER_EPOCH
    assert [line["epoch"] for line in files.lines("epoch")] == [PROBE_EPOCH + 1]
    (probe_line,) = files.lines("probe")
    assert probe_line["step"] == PROBE_STEP and probe_line["acc_pre"] == summary["acc_pre"]
    # Regeneration restores the count: the dense base's every weight is active again after the probe step.
    assert files.summary["density"] == 1.0

    # The base: a dense run that kept every epoch; acc_pre is its epoch-1 test accuracy, re-measured.
    base = RunFiles(runs_dir / summary["base_run"])
    assert summary["base_run"].startswith("plasticity/dense-resnet20-mnist1d-s0-")
    assert base.summary["job_type"] == "base" and base.status == "completed\n"
    assert sorted(path.name for path in (base.path / "checkpoints").glob("epoch_*.pt")) == [
        f"epoch_{epoch:04d}.pt" for epoch in range(4)
    ]
    assert summary["acc_pre"] == base.lines("epoch")[PROBE_EPOCH - 1]["test/acc"]

    # The control continues the same checkpoint unpruned: exactly the base's own epoch 2.
    control = RunFiles(runs_dir / summary["control_run"])
    assert summary["control_run"].startswith("plasticity/control-resnet20-mnist1d-s0-e1-")
    assert control.summary["job_type"] == "control" and control.summary["pruning_rate"] == 0.0
    assert summary["acc_control"] == control.summary["acc_continue"]
    assert without(control.lines("epoch")[0], TIMING_KEYS) == without(base.lines("epoch")[1], TIMING_KEYS)
    continued, kept = control.checkpoint(), base.checkpoint("epoch_0002.pt")
    assert all(torch.equal(continued["model"][name], kept["model"][name]) for name in kept["model"])


def test_dry_run_names_the_directories_the_study_writes(harness_cli: HarnessCli, runs_dir: Path) -> None:
    argv = study_argv(harness_cli, runs_dir, 0.0, "--pruning-rate", "0.5", "--criterion", "layerwise")
    before = sorted(runs_dir.rglob("*"))
    dry = harness_cli.invoke(*argv, "--dry-run")
    assert dry.exit_code == 0, dry.stderr
    assert sorted(runs_dir.rglob("*")) == before
    *config_lines, base_dir, control_dir, probe_dir = dry.stdout.splitlines()

    files = probe(harness_cli, runs_dir, 0.0, "--pruning-rate", "0.5", "--criterion", "layerwise")
    assert probe_dir == str(files.path)
    assert base_dir == str(runs_dir / files.summary["base_run"])
    assert control_dir == str(runs_dir / files.summary["control_run"])
    printed = yaml.safe_load("\n".join(config_lines))
    assert printed == load_config_file(files.path / "config.yaml").to_dict()
    assert printed["plasticity"]["criterion"] == "layerwise" and printed["tracking"]["job_type"] == "probe"


def test_probe_at_an_epoch_the_base_does_not_keep_is_a_one_line_error(
    harness_cli: HarnessCli, runs_dir: Path
) -> None:
    argv = study_argv(harness_cli, runs_dir, 0.0, "--pruning-rate", "0.5")
    argv[argv.index("--probe-every") + 1] = "2"
    before = sorted(runs_dir.rglob("*"))
    result = harness_cli.invoke(*argv)
    assert result.exit_code == 2
    assert result.stderr == (
        "error: probe_epoch: 1 is not a checkpoint of the base run, which keeps epochs 0, 2 "
        "(every 2; change it with probe_every)\n"
    )
    assert sorted(runs_dir.rglob("*")) == before


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--probe-every", "0", "probe_every: must be a positive number of epochs (got 0)"),
        ("--probe-every", "-3", "probe_every: must be a positive number of epochs (got -3)"),
        ("--pretrained-sparsity", "1.0", "pretrained_sparsity: must be in [0, 1) (got 1.0)"),
        ("--pretrained-sparsity", "-0.2", "pretrained_sparsity: must be in [0, 1) (got -0.2)"),
        (
            "--pruning-rate",
            "1.5",
            "plasticity.pruning_rate: Input should be less than 1 (got 1.5)",
        ),
        (
            "--criterion",
            "weights",
            "plasticity.criterion: Input should be 'global', 'layerwise' or 'filter' (got 'weights')",
        ),  # fmt: skip
        ("--stage", "all", "--stage: 'all' is not one of base, control, probe"),
    ],
)
def test_bad_study_parameters_are_one_line_errors(
    harness_cli: HarnessCli, option: str, value: str, message: str
) -> None:
    argv = study_argv(harness_cli, harness_cli.runs_dir, 0.0, "--pruning-rate", "0.5")
    argv[argv.index("--probe-every") + 1] = "1"  # keeps epoch 1; the option under test may override it
    result = harness_cli.invoke(*argv, option, value)
    assert result.exit_code == 2
    assert result.stderr == f"error: {message}\n"
    assert not harness_cli.runs_dir.exists()


def test_probe_whose_base_lost_the_checkpoint_is_a_one_line_error(
    harness_cli: HarnessCli, runs_dir: Path
) -> None:
    (base_dir,) = runs_dir.glob("plasticity/dense-*")
    missing = base_dir / "checkpoints" / "epoch_0001.pt"
    missing.unlink()
    before = sorted(runs_dir.rglob("*"))
    result = harness_cli.invoke(*study_argv(harness_cli, runs_dir, 0.0, "--pruning-rate", "0.3"))
    assert result.exit_code == 2
    assert result.stderr == f"error: {missing}: the base run has no checkpoint for probe epoch 1\n"
    assert sorted(runs_dir.rglob("*")) == before


# ---------------------------------------------------------------------------------------------------------
# Filter probes


def test_filter_probes_remove_whole_filters_and_regeneration_keeps_every_layer_count(
    harness_cli: HarnessCli, runs_dir: Path
) -> None:
    options = ("--pruning-rate", "0.5", "--criterion", "filter")
    pruned = probe(harness_cli, runs_dir, 0.5, *options)
    regrown = probe(harness_cli, runs_dir, 0.5, *options, "--regeneration")
    base = base_masks(runs_dir, pruned)
    after_pruning, after_regrowth = masks_after_pruning(pruned), masks_after_pruning(regrown)
    final_weights = pruned.checkpoint()["model"]

    for name, before in base.items():
        after = after_pruning[name]
        if not is_conv(before):
            # Linear layers have no filters and are left alone.
            assert np.array_equal(after, before), name
            continue
        alive_before, alive_after = filters_alive(before), filters_alive(after)
        removed = alive_before & ~alive_after
        assert removed.sum() == round(0.5 * alive_before.sum()), name
        # Surviving filters keep their connections exactly; removed ones lose all of them.
        assert np.array_equal(after[alive_after], before[alive_after]), name
        assert not after[removed].any(), name
        # After the continuation, every removed filter's weights are still all zero.
        assert torch.count_nonzero(final_weights[name][torch.from_numpy(removed)]) == 0, name

        # With regeneration: the same prune, then as many weights regrown inside filters that were empty.
        regrown_mask = after_regrowth[name]
        assert regrown_mask.sum() == before.sum(), name
        assert np.array_equal(regrown_mask & after, after), name
        added = regrown_mask & ~after
        touched = added.reshape(added.shape[0], -1).any(axis=1)
        assert not alive_after[touched].any(), name
        assert touched.sum() <= removed.sum(), name
    # The 50%-sparse base's density, restored by regeneration.
    assert regrown.summary["density"] == 0.5 and regrown.summary["pretrained_sparsity"] == 0.5


# ---------------------------------------------------------------------------------------------------------
# Regeneration changes only the regrowth


@pytest.fixture
def recorded_batches(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int, torch.Tensor, torch.Tensor]]:
    """Every training batch drawn, tagged "regrowth" (the one-batch gradient for regrowth) or "train"."""
    batches: list[tuple[str, int, torch.Tensor, torch.Tensor]] = []
    in_regrowth = [False]
    iterate, regrowth_gradient = loaders.TrainLoader.iterate, study_probe.regrowth_gradient

    def recording(self: loaders.TrainLoader, epoch: int, start_batch: int = 0) -> Iterator[Any]:
        for inputs, targets in iterate(self, epoch, start_batch):
            batches.append(
                ("regrowth" if in_regrowth[0] else "train", epoch, inputs.clone(), targets.clone())
            )
            yield inputs, targets

    def flagged(session: Any) -> None:
        in_regrowth[0] = True
        try:
            regrowth_gradient(session)
        finally:
            in_regrowth[0] = False

    monkeypatch.setattr(loaders.TrainLoader, "iterate", recording)
    monkeypatch.setattr(study_probe, "regrowth_gradient", flagged)
    return batches


def test_regeneration_on_and_off_differ_only_in_the_regrowth(
    harness_cli: HarnessCli, runs_dir: Path, recorded_batches: list
) -> None:
    options = ("--pruning-rate", "0.5", "--criterion", "layerwise")
    without_regrowth = probe(harness_cli, runs_dir, 0.0, *options)
    first_batches = list(recorded_batches)
    recorded_batches.clear()
    with_regrowth = probe(harness_cli, runs_dir, 0.0, *options, "--regeneration")

    # The same data in the same order, and the same continuation; only the regrowth draws one more batch,
    # the continuation's own first batch.
    regrowth = [batch for batch in recorded_batches if batch[0] == "regrowth"]
    training = [batch for batch in recorded_batches if batch[0] == "train"]
    assert len(regrowth) == 1 and len(training) == len(first_batches) == STEPS_PER_EPOCH
    assert all(batch[0] == "train" and batch[1] == PROBE_EPOCH for batch in first_batches)
    for (_, epoch_a, inputs_a, targets_a), (_, epoch_b, inputs_b, targets_b) in zip(
        first_batches, training, strict=True
    ):
        assert epoch_a == epoch_b and torch.equal(inputs_a, inputs_b) and torch.equal(targets_a, targets_b)
    assert torch.equal(regrowth[0][2], training[0][2]) and torch.equal(regrowth[0][3], training[0][3])
    for key in ("steps", "epochs", "probe_epoch", "continue_epochs", "acc_pre"):
        assert with_regrowth.summary[key] == without_regrowth.summary[key], key
    assert [line["step"] for line in with_regrowth.lines("epoch")] == [
        line["step"] for line in without_regrowth.lines("epoch")
    ]

    # The masks: the same prune; regeneration adds exactly what each layer lost, at positions it did not hold.
    base = base_masks(runs_dir, with_regrowth)
    pruned, regrown = masks_after_pruning(without_regrowth), masks_after_pruning(with_regrowth)
    (event,) = [line for line in with_regrowth.lines("mask_update") if line["step"] == PROBE_STEP]
    (prune_event,) = [line for line in without_regrowth.lines("mask_update") if line["step"] == PROBE_STEP]
    for name, before in base.items():
        lost = int(before.sum() - pruned[name].sum())
        assert lost == round(0.5 * before.sum()) == prune_event[f"layers/{name}/pruned"], name
        assert np.array_equal(regrown[name] & pruned[name], pruned[name]), name
        added = regrown[name] & ~pruned[name]
        assert added.sum() == lost == event[f"layers/{name}/grown"] == event[f"layers/{name}/pruned"], name
        assert prune_event[f"layers/{name}/grown"] == 0


def test_regeneration_that_regrows_nothing_changes_nothing(harness_cli: HarnessCli, runs_dir: Path) -> None:
    """A pruning rate that removes round(p * N) = 0 weights: with and without regeneration, bit-identical."""
    options = ("--pruning-rate", "1e-5")  # p * N = 0.059 of the dense base's 5,900 weights
    plain = probe(harness_cli, runs_dir, 0.0, *options)
    regenerated = probe(harness_cli, runs_dir, 0.0, *options, "--regeneration")
    assert plain.path != regenerated.path

    (probe_line,) = regenerated.lines("probe")
    assert all(line["layers/fc.weight/pruned"] == 0 for line in regenerated.lines("mask_update"))
    first, second = plain.checkpoint(), regenerated.checkpoint()
    for key in ("model", "optimizer", "sparsifier", "totals"):
        assert_same(first[key], second[key], key)
    assert [without(line, TIMING_KEYS | {"regeneration"}) for line in plain.metrics] == [
        without(line, TIMING_KEYS | {"regeneration"}) for line in regenerated.metrics
    ]
    differing = {"run_id", "regeneration", "wall_time_s"}
    assert without(plain.summary, differing) == without(regenerated.summary, differing)
    assert probe_line["regeneration"] is True and plain.summary["regeneration"] is False


def assert_same(first: Any, second: Any, where: str) -> None:
    """Nested dicts/lists of tensors and plain values, equal bit for bit."""
    if isinstance(first, torch.Tensor):
        assert torch.equal(first, second), where
    elif isinstance(first, dict):
        assert set(first) == set(second), where
        for key in first:
            assert_same(first[key], second[key], f"{where}.{key}")
    elif isinstance(first, list | tuple):
        assert len(first) == len(second), where
        for index, (a, b) in enumerate(zip(first, second, strict=True)):
            assert_same(a, b, f"{where}[{index}]")
    else:
        assert first == second, where


# ---------------------------------------------------------------------------------------------------------
# Probes from one checkpoint are independent


def test_two_probes_from_one_checkpoint_in_either_order_give_identical_results(
    harness_cli: HarnessCli, runs_dir: Path, tmp_path: Path, trained_bases: Path
) -> None:
    """In one process (the SPEC's optimizer-state aliasing pitfall): A then B, and B then A."""
    other = Path(shutil.copytree(runs_dir, tmp_path / "other-order"))
    first_options = ("--pruning-rate", "0.5")
    second_options = ("--pruning-rate", "0.8", "--criterion", "layerwise", "--regeneration")
    a_first = probe(harness_cli, runs_dir, 0.0, *first_options)
    b_second = probe(harness_cli, runs_dir, 0.0, *second_options)
    b_first = probe(harness_cli, other, 0.0, *second_options)
    a_second = probe(harness_cli, other, 0.0, *first_options)

    for one, two in ((a_first, a_second), (b_second, b_first)):
        assert one.path.name == two.path.name
        assert_same(one.checkpoint()["model"], two.checkpoint()["model"], "model")
        assert_same(one.checkpoint()["optimizer"], two.checkpoint()["optimizer"], "optimizer")
        assert [without(line, TIMING_KEYS) for line in one.metrics] == [
            without(line, TIMING_KEYS) for line in two.metrics
        ]
        assert without(one.summary, {"wall_time_s"}) == without(two.summary, {"wall_time_s"})
    # The base run's checkpoints are untouched by the probes.
    for store in (runs_dir, other):
        (base_dir,) = store.glob("plasticity/dense-*")
        for path in sorted((trained_bases / "plasticity" / base_dir.name / "checkpoints").iterdir()):
            assert (base_dir / "checkpoints" / path.name).read_bytes() == path.read_bytes(), path.name


# ---------------------------------------------------------------------------------------------------------
# Measuring with recomputed BatchNorm statistics (the CPU studies' low-noise protocol)


def test_recalibrated_measurement_changes_the_numbers_read_not_the_training(
    harness_cli: HarnessCli, runs_dir: Path
) -> None:
    """--recalibrate-bn is another run (its own id, and its own control), trains bit-identically to the
    probe without it, and reads acc_pre / acc_continue from the recomputed statistics."""
    options = ("--pruning-rate", "0.5")
    plain = probe(harness_cli, runs_dir, 0.0, *options)
    recalibrated = probe(harness_cli, runs_dir, 0.0, *options, "--recalibrate-bn")
    assert recalibrated.path.name != plain.path.name
    assert recalibrated.summary["recalibrate_bn"] is True and plain.summary["recalibrate_bn"] is False
    control = RunFiles(runs_dir / recalibrated.summary["control_run"])
    assert control.path != RunFiles(runs_dir / plain.summary["control_run"]).path
    assert yaml.safe_load((control.path / "config.yaml").read_text())["plasticity"]["recalibrate_bn"] is True
    assert recalibrated.summary["acc_control"] == control.summary["acc_continue"]

    first, second = plain.checkpoint(), recalibrated.checkpoint()
    for part in ("model", "optimizer"):
        flat_a, flat_b = (
            torch.utils._pytree.tree_flatten(first[part])[0],
            torch.utils._pytree.tree_flatten(second[part])[0],
        )
        assert len(flat_a) == len(flat_b)
        for a, b in zip(flat_a, flat_b, strict=True):
            assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b, part
    # What the probe reads: test_acc is the plain final evaluation in both; acc_continue is recomputed.
    assert recalibrated.summary["test_acc"] == plain.summary["test_acc"]
    assert plain.summary["acc_continue"] == plain.summary["test_acc"]
    assert recalibrated.summary["plasticity"] == pytest.approx(
        recalibrated.summary["acc_continue"] - recalibrated.summary["acc_pre"]
    )
    assert (recalibrated.summary["acc_pre"], recalibrated.summary["acc_continue"]) != (
        plain.summary["acc_pre"],
        plain.summary["acc_continue"],
    )


def test_the_setting_leaves_earlier_probe_ids_alone() -> None:
    """Off is the default and is left out of the run id: the ids below were computed before the setting
    existed, so stores written then keep their probes."""
    from harness.config import resolve, run_id

    study = plasticity.Study(probe_epoch=2, pruning_rate=0.5, continue_epochs=8)
    configs = plasticity.plan(resolve("dense", dataset="mnist1d"), study)
    assert [run_id(config) for config in configs] == [
        "dense-resnet20-mnist1d-s0-e7437d3cf4",
        "control-resnet20-mnist1d-s0-e2-8e1f37362b",
        "probe-resnet20-mnist1d-s0-e2-p0.5-global-7efe191a6f",
    ]
    recalibrated = plasticity.Study(probe_epoch=2, pruning_rate=0.5, continue_epochs=8, recalibrate_bn=True)
    base, control, probe_config = plasticity.plan(resolve("dense", dataset="mnist1d"), recalibrated)
    assert run_id(base) == run_id(configs[0])  # the base run does not measure: it is shared
    assert run_id(control) != run_id(configs[1]) and run_id(probe_config) != run_id(configs[2])


# ---------------------------------------------------------------------------------------------------------
# acc_continue averaged over the continuation's last epochs (--average-last)

AVERAGED = ("--pruning-rate", "0.5", "--continue-epochs", "2")


def test_average_last_is_the_mean_of_the_last_epochs_and_trains_as_without(
    harness_cli: HarnessCli, runs_dir: Path
) -> None:
    plain = probe(harness_cli, runs_dir, 0.0, *AVERAGED)
    averaged = probe(harness_cli, runs_dir, 0.0, *AVERAGED, "--average-last", "2")
    assert averaged.path.name != plain.path.name
    assert "average_last" not in plain.summary and "acc_continue_epochs" not in plain.summary
    summary = averaged.summary
    epochs = [line["test/acc"] for line in averaged.lines("epoch")]
    assert len(epochs) == 2 and summary["average_last"] == 2
    # Without recomputed statistics each averaged accuracy is that epoch's own test accuracy.
    assert summary["acc_continue_epochs"] == epochs
    assert summary["acc_continue"] == sum(epochs) / 2
    assert summary["plasticity"] == summary["acc_continue"] - summary["acc_pre"]
    control = RunFiles(runs_dir / summary["control_run"])
    assert control.summary["average_last"] == 2
    assert control.summary["acc_continue"] == sum(line["test/acc"] for line in control.lines("epoch")) / 2
    assert summary["acc_control"] == control.summary["acc_continue"]
    # The same training: final weights, and the final epoch's accuracy, are the plain probe's.
    assert summary["test_acc"] == plain.summary["test_acc"] == epochs[-1]
    first, second = plain.checkpoint()["model"], averaged.checkpoint()["model"]
    assert all(torch.equal(first[name], second[name]) for name in first)


def test_averaged_recomputed_accuracies_are_what_a_probe_ending_there_reads(
    harness_cli: HarnessCli, runs_dir: Path
) -> None:
    """With --recalibrate-bn every averaged epoch is measured as acc_continue is: the last one equals the
    unaveraged probe's acc_continue, the first the acc_continue of a probe that stopped an epoch earlier."""
    averaged = probe(harness_cli, runs_dir, 0.0, *AVERAGED, "--average-last", "2", "--recalibrate-bn")
    final = probe(harness_cli, runs_dir, 0.0, *AVERAGED, "--recalibrate-bn")
    shorter = probe(harness_cli, runs_dir, 0.0, "--pruning-rate", "0.5", "--recalibrate-bn")  # 1 epoch
    measured = averaged.summary["acc_continue_epochs"]
    assert measured == [shorter.summary["acc_continue"], final.summary["acc_continue"]]
    assert averaged.summary["acc_continue"] == sum(measured) / 2


def test_a_probe_interrupted_between_averaged_epochs_resumes_to_the_same_summary(
    harness_cli: HarnessCli, runs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The averaged accuracies travel in the checkpoint: SIGTERM right after the first one is measured
    stops the run in the next epoch, and the resumed run ends where an uninterrupted one does."""
    import os
    import signal

    options = (*AVERAGED, "--average-last", "2")
    reference = probe(harness_cli, runs_dir, 0.0, *options)
    shutil.rmtree(reference.path)
    after_evaluation = study_probe.ProbeExtension.after_evaluation

    def stop_after_the_first(extension: study_probe.ProbeExtension, session) -> None:
        after_evaluation(extension, session)
        if extension.measured().acc_continue_epochs and session.config.plasticity.pruning_rate > 0:
            os.kill(os.getpid(), signal.SIGTERM)

    with monkeypatch.context() as patch:
        patch.setattr(study_probe.ProbeExtension, "after_evaluation", stop_after_the_first)
        stopped = harness_cli.invoke(*study_argv(harness_cli, runs_dir, 0.0, *options))
    assert stopped.exit_code == 3, stopped.stderr
    state = torch.load(reference.path / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    assert PROBE_STEP < state["step"] < PROBE_STEP + 2 * STEPS_PER_EPOCH
    assert len(state["extra"]["probe"]["acc_continue_epochs"]) == 1
    resumed = probe(harness_cli, runs_dir, 0.0, *options)
    assert resumed.path == reference.path
    expected, got = dict(reference.summary), dict(resumed.summary)
    expected.pop("wall_time_s"), got.pop("wall_time_s")
    assert got == expected


def test_average_last_longer_than_the_continuation_is_a_user_error(
    harness_cli: HarnessCli, runs_dir: Path
) -> None:
    result = harness_cli.invoke(
        *study_argv(harness_cli, runs_dir, 0.0, "--pruning-rate", "0.5", "--average-last", "2")
    )
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: average_last: 2 epochs is more than the continuation from epoch 1 has (1)"
    )


def test_average_last_leaves_earlier_probe_ids_alone() -> None:
    from harness.config import resolve, run_id

    study = plasticity.Study(probe_epoch=2, pruning_rate=0.5, continue_epochs=8)
    once = plasticity.Study(probe_epoch=2, pruning_rate=0.5, continue_epochs=8, average_last=1)
    thrice = plasticity.Study(probe_epoch=2, pruning_rate=0.5, continue_epochs=8, average_last=3)
    recipe = resolve("dense", dataset="mnist1d")
    default, explicit, averaged = (plasticity.plan(recipe, s) for s in (study, once, thrice))
    assert [run_id(c) for c in default] == [run_id(c) for c in explicit]
    assert run_id(default[2]) == "probe-resnet20-mnist1d-s0-e2-p0.5-global-7efe191a6f"  # as before the field
    assert run_id(averaged[0]) == run_id(default[0])
    assert run_id(averaged[1]) != run_id(default[1]) and run_id(averaged[2]) != run_id(default[2])


def test_a_probe_refuses_to_resume_from_a_checkpoint_without_its_record() -> None:
    from harness.config import resolve

    study = plasticity.Study(probe_epoch=2, pruning_rate=0.5, continue_epochs=8)
    settings = plasticity.plan(resolve("dense", dataset="mnist1d"), study)[2].plasticity
    assert settings is not None
    extension = study_probe.ProbeExtension(Path("epoch_0002.pt"), settings, None)
    with pytest.raises(ValueError, match=r"^the checkpoint has no 'probe' entry: it is not a probe's$"):
        extension.resume({"last_epoch": {"test/acc": 0.5}})
    record = {
        "probe_epoch": 2, "pruning_rate": 0.5, "criterion": "global", "regeneration": False,
        "continue_epochs": 8, "pretrained_sparsity": 0.0, "acc_pre": 0.5, "acc_post": 0.25, "base_run": "b/x",
        "recalibrate_bn": False,
    }  # fmt: skip
    extension.resume({"last_epoch": {}, "probe": record})
    assert extension.checkpoint_state() == {"probe": record}  # what it resumed from, unchanged

"""`harness run` end to end on MNIST-1D: every method writes a complete run directory with exact contents.

The runs are CPU-sized: 400 MNIST-1D samples (270 train, 50 validation, 80 test), batch 32, so an epoch is
9 optimizer steps; 2 epochs are T = 18 steps. With the recipe's fractions, the LR decays x0.1 at steps
round(0.5 * T) = 9 and round(0.75 * T) = 14, and pruning ends at t_e = round(0.5 * T) = 9.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import HarnessCli

from harness import config as configuration
from harness.engine import loop as train
from harness.sparse import METHODS

STEPS_PER_EPOCH = 9
TRAIN_SAMPLES, VAL_SAMPLES, TEST_SAMPLES = 270, 50, 80
BASE_LR = 0.1
UPDATE_FREQUENCY = 4

SUMMARY_KEYS = {
    "run_id", "group", "method", "arch", "dataset", "seed", "epochs", "steps", "world_size", "sparsity",
    "init_sparsity", "density", "test_acc", "test_loss", "val_acc", "best_val_epoch", "best_val_acc",
    "test_acc_at_best_val", "train_loss", "inference_flops", "inference_flops_dense", "inference_flops_rel",
    "train_flops", "train_flops_dense", "train_flops_rel", "wall_time_s", "device", "torch_version",
}  # fmt: skip
EPOCH_KEYS = {"kind", "step", "epoch", "train/loss", "train/acc", "val/acc", "test/acc", "test/loss", "lr",
              "density", "time/epoch_s"}  # fmt: skip
REGROWING = {"granet", "rigl", "set", "mest"}


def lr_of_step(step: int, total_steps: int) -> float:
    """The LR optimizer step `step` (1-based) uses: x0.1 at round(0.5 T) and round(0.75 T) steps taken."""
    milestones = (round(0.5 * total_steps), round(0.75 * total_steps))
    return BASE_LR * 0.1 ** sum(step - 1 >= milestone for milestone in milestones)


def regen_rate(step: int, total_steps: int) -> float:
    """SPEC section 5: r(t) = r_min + (r_0 - r_min) (1 + cos(pi t / T)) / 2, with the MNIST-1D recipe's
    r_0 = 0.1 (harness/recipes/mnist1d.yaml) and r_min = 0.005."""
    return 0.005 + (0.1 - 0.005) * (1 + math.cos(math.pi * step / total_steps)) / 2


def expected_mask_events(method: str, total_steps: int, update_frequency: int) -> list[int]:
    """Steps of mask_update lines: step 0 (initial masks), then the method's own events."""
    prune_end = round(0.5 * total_steps)
    pruning = [t for t in range(1, prune_end + 1) if t % update_frequency == 0 or t == prune_end]
    after = [t for t in range(prune_end + 1, total_steps + 1) if t % update_frequency == 0]
    every = [t for t in range(1, total_steps + 1) if t % update_frequency == 0]
    events = {
        "dense": [],
        "static": [],
        "gmp": pruning,
        "gmp-layerwise": pruning,
        "granet": pruning + after,
        "rigl": every,
        "set": every,
        "mest": every,
        "snip": [],
        "grasp": [],
        "synflow": [],
        "acdc": acdc_phase_changes(total_steps),
    }[method]
    return [0, *events]


def acdc_phase_changes(total_steps: int) -> list[int]:
    """docs/methods.md: dense until 10% of the run, phases of 5%, compressed for the last 15%."""
    warmup, phase = round(0.1 * total_steps), max(1, round(0.05 * total_steps))
    final = total_steps - round(0.15 * total_steps)

    def compressed(t: int) -> bool:
        return t >= final or (t >= warmup and (t - warmup) // phase % 2 == 0)

    return [t for t in range(1, total_steps + 1) if compressed(t) != compressed(t - 1)]


def active_weights(masks: dict[str, np.ndarray]) -> int:
    return sum(int(mask.sum()) for mask in masks.values())


def total_weights(masks: dict[str, np.ndarray]) -> int:
    return sum(mask.size for mask in masks.values())


def run_dirs(group_dir: Path) -> list[Path]:
    """The run directories of a group (without the lock files beside them)."""
    return sorted(path for path in group_dir.iterdir() if path.is_dir())


def run_method(harness_cli: HarnessCli, method: str, *extra: str, epochs: int = 2) -> Path:
    result = harness_cli.invoke(
        "run", method, *harness_cli.mnist1d(epochs=epochs), "--update-frequency", str(UPDATE_FREQUENCY),
        "--set", "tracking.log_every=2", *extra,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    return Path(result.last_line)


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_writes_a_complete_run_directory(harness_cli: HarnessCli, method: str) -> None:
    run_dir = run_method(harness_cli, method)
    files = harness_cli.files(run_dir)
    total_steps = 2 * STEPS_PER_EPOCH

    # The printed directory is the content address of the resolved config.
    config = configuration.load_config_file(run_dir / "config.yaml")
    assert run_dir == harness_cli.runs_dir / "default" / configuration.run_id(config)
    assert run_dir.name.startswith(f"{method}-resnet20-mnist1d-s0-")
    assert (config.sparsity.method, config.optim.epochs, config.optim.batch_size) == (method, 2, 32)
    assert (config.data.num_samples, config.data.val_size, config.model.width) == (400, 50, 0.25)
    assert config.tracking.job_type == "train"
    assert files.status == "completed\n"

    check_epoch_lines(files.lines("epoch"), total_steps)
    check_train_lines(files.lines("train"), total_steps)
    snapshots = files.snapshots()
    check_mask_lines(files.lines("mask_update"), snapshots, method, total_steps)
    check_summary(files.summary, files.lines("epoch"), snapshots, method, run_dir, total_steps)
    check_checkpoint(files.checkpoint(), snapshots[max(snapshots)], total_steps)
    assert (run_dir / "checkpoints" / "prev.pt").is_file()  # the epoch-1 checkpoint, kept as the previous one
    assert files.checkpoint("prev.pt")["step"] == STEPS_PER_EPOCH


def check_epoch_lines(lines: list[dict[str, Any]], total_steps: int) -> None:
    assert [line["step"] for line in lines] == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]
    assert [line["epoch"] for line in lines] == [1, 2]
    for line in lines:
        assert set(line) == EPOCH_KEYS
        assert math.isfinite(line["train/loss"]) and line["train/loss"] > 0
        assert math.isfinite(line["test/loss"]) and line["test/loss"] > 0
        # Accuracies are exact fractions of the split sizes.
        for key, count in (
            ("train/acc", TRAIN_SAMPLES),
            ("val/acc", VAL_SAMPLES),
            ("test/acc", TEST_SAMPLES),
        ):
            assert 0 <= line[key] <= 1
            assert line[key] * count == pytest.approx(round(line[key] * count), abs=1e-9), key
        # The LR the epoch's last step used.
        assert line["lr"] == pytest.approx(lr_of_step(line["step"], total_steps), rel=1e-12)
        assert 0 < line["density"] <= 1


def check_train_lines(lines: list[dict[str, Any]], total_steps: int) -> None:
    assert [line["step"] for line in lines] == list(range(2, total_steps + 1, 2))  # tracking.log_every=2
    for line in lines:
        assert set(line) == {"kind", "step", "epoch", "train/loss", "lr"}
        assert line["epoch"] == pytest.approx(line["step"] / STEPS_PER_EPOCH)
        assert line["lr"] == pytest.approx(lr_of_step(line["step"], total_steps), rel=1e-12)
        assert math.isfinite(line["train/loss"])


def check_mask_lines(
    lines: list[dict[str, Any]], snapshots: dict[int, dict[str, np.ndarray]], method: str, total_steps: int
) -> None:
    steps = [line["step"] for line in lines]
    assert steps == expected_mask_events(method, total_steps, UPDATE_FREQUENCY)
    assert list(snapshots) == steps  # one snapshot per event, the initial masks at step 0 included
    for line in lines:
        masks = snapshots[line["step"]]
        assert line["epoch"] == pytest.approx(line["step"] / STEPS_PER_EPOCH)
        assert line["density"] == active_weights(masks) / total_weights(masks)
        assert 0 < line["target_density"] <= 1
        for name, mask in masks.items():
            assert line[f"layers/{name}/density"] == mask.sum() / mask.size
            for count in ("pruned", "dropped", "grown"):
                assert line[f"layers/{name}/{count}"] >= 0
        assert isinstance(line["mask/checksum"], int)
        regrows = method in REGROWING and line["step"] > 0
        assert ("regen/rate" in line) == regrows
        if regrows:
            assert line["regen/rate"] == pytest.approx(regen_rate(line["step"], total_steps), rel=1e-12)
            # Every layer drops ceil(r * n_l) of its n_l active weights and regrows as many.
            for name, mask in masks.items():
                dropped = math.ceil(line["regen/rate"] * int(mask.sum()))
                assert line[f"layers/{name}/dropped"] == line[f"layers/{name}/grown"] == dropped, name
    final = lines[-1]
    total = total_weights(snapshots[0])
    if method == "dense":
        assert final["density"] == 1.0
    elif method == "gmp-layerwise":
        # Layer-wise: every layer keeps exactly round(d * n_l) of its weights.
        for name, mask in snapshots[final["step"]].items():
            assert mask.sum() == round(0.1 * mask.size), name
    else:
        # Every other sparse method ends at exactly round(d * N) active weights, d = 1 - s_f = 0.1.
        assert active_weights(snapshots[final["step"]]) == round(0.1 * total)


def check_summary(
    summary: dict[str, Any],
    epochs: list[dict[str, Any]],
    snapshots: dict[int, dict[str, np.ndarray]],
    method: str,
    run_dir: Path,
    total_steps: int,
) -> None:
    assert SUMMARY_KEYS <= set(summary)
    last_masks = snapshots[max(snapshots)]
    assert summary["run_id"] == run_dir.name
    assert (summary["group"], summary["method"], summary["arch"], summary["dataset"]) == (
        "default", method, "resnet20", "mnist1d",
    )  # fmt: skip
    assert (summary["seed"], summary["epochs"], summary["steps"], summary["world_size"]) == (
        0,
        2,
        total_steps,
        1,
    )
    assert summary["sparsity"] == pytest.approx(0.0 if method == "dense" else 0.9, abs=1e-12)
    starts_sparse = method in ("static", "rigl", "set", "mest", "snip", "grasp", "synflow")
    assert summary["init_sparsity"] == pytest.approx(0.9 if starts_sparse else 0.0, abs=1e-12)
    assert summary["density"] == active_weights(last_masks) / total_weights(last_masks)
    assert summary["density"] == epochs[-1]["density"]
    assert summary["masked_weights"] == total_weights(last_masks)
    assert summary["active_weights"] == active_weights(last_masks)
    for key, metric in (("test_acc", "test/acc"), ("test_loss", "test/loss"), ("val_acc", "val/acc"),
                        ("train_loss", "train/loss")):  # fmt: skip
        assert summary[key] == epochs[-1][metric], key
    # Selection is on the validation split: the first epoch with the best validation accuracy among those
    # at the final density (AC/DC's first epoch is a dense phase).
    final = [line for line in epochs if line["density"] == epochs[-1]["density"]]
    best = max(final, key=lambda line: line["val/acc"])
    assert summary["best_val_epoch"] == best["epoch"]
    assert summary["best_val_acc"] == best["val/acc"]
    assert summary["test_acc_at_best_val"] == best["test/acc"]
    assert 0 < summary["inference_flops"] <= summary["inference_flops_dense"]
    assert summary["inference_flops_rel"] == pytest.approx(
        summary["inference_flops"] / summary["inference_flops_dense"], rel=1e-12
    )
    assert summary["train_flops_rel"] == pytest.approx(
        summary["train_flops"] / summary["train_flops_dense"], rel=1e-12
    )
    if method == "dense":
        assert summary["inference_flops_rel"] == 1.0 and summary["train_flops_rel"] == 1.0
    else:
        assert summary["inference_flops_rel"] < 1.0 and 0 < summary["train_flops_rel"] < 1.0
    assert summary["wall_time_s"] > 0
    assert summary["device"] == "cpu"
    assert summary["torch_version"] == torch.__version__


def check_checkpoint(state: dict[str, Any], last_masks: dict[str, np.ndarray], total_steps: int) -> None:
    assert {"model", "optimizer", "scheduler", "sparsifier", "rng", "epoch", "step"} <= set(state)
    assert (state["epoch"], state["step"]) == (2, total_steps)
    saved_masks = state["sparsifier"]["masks"]
    assert set(saved_masks) == set(last_masks)
    for name, mask in last_masks.items():
        assert np.array_equal(saved_masks[name].numpy(), mask), name
        # SPEC invariant 1: masked weights are exactly zero.
        weight = state["model"][name]
        assert torch.count_nonzero(weight[~torch.from_numpy(mask)]) == 0, name


@pytest.mark.parametrize(("sparsity", "init_sparsity"), [(0.8, 0.0), (0.95, 0.5)])
def test_granet_ends_at_exactly_the_requested_density(
    harness_cli: HarnessCli, sparsity: float, init_sparsity: float
) -> None:
    run_dir = run_method(
        harness_cli, "granet", "--sparsity", str(sparsity), "--init-sparsity", str(init_sparsity)
    )
    files = harness_cli.files(run_dir)
    state = files.checkpoint()
    masks = {name: mask.numpy() for name, mask in state["sparsifier"]["masks"].items()}
    total = total_weights(masks)
    expected = round((1 - sparsity) * total)
    assert active_weights(masks) == expected
    assert files.summary["density"] == expected / total
    snapshots = files.snapshots()
    assert active_weights(snapshots[max(snapshots)]) == expected
    assert all(np.array_equal(snapshots[max(snapshots)][name], mask) for name, mask in masks.items())
    # The start: dense, or exactly round((1 - s_i) * N) by ERK.
    assert active_weights(snapshots[0]) == (
        total if init_sparsity == 0 else round((1 - init_sparsity) * total)
    )
    # From t_e on, regeneration keeps the count: every later event is at the final density.
    prune_end = round(0.5 * 2 * STEPS_PER_EPOCH)
    assert [active_weights(masks) for step, masks in snapshots.items() if step >= prune_end] == [expected] * 3


def test_epochs_rescale_the_lr_decays_and_the_end_of_pruning(harness_cli: HarnessCli) -> None:
    epochs = 4
    total_steps = epochs * STEPS_PER_EPOCH  # 36: LR decays at steps 18 and 27, pruning ends at 18
    run_dir = run_method(harness_cli, "gmp", "--set", "tracking.log_every=1", epochs=epochs)
    files = harness_cli.files(run_dir)

    train_lines = files.lines("train")
    assert [line["step"] for line in train_lines] == list(range(1, total_steps + 1))
    rates = [line["lr"] for line in train_lines]
    assert rates == [pytest.approx(rate, rel=1e-12) for rate in [0.1] * 18 + [0.01] * 9 + [0.001] * 9]
    assert [line["lr"] for line in files.lines("epoch")] == [
        pytest.approx(rate, rel=1e-12) for rate in (0.1, 0.1, 0.01, 0.001)
    ]
    mask_lines = files.lines("mask_update")
    assert [line["step"] for line in mask_lines] == [0, 4, 8, 12, 16, 18]
    assert mask_lines[-1]["target_density"] == pytest.approx(0.1, abs=1e-12)
    assert mask_lines[-2]["target_density"] > 0.1  # the final density is reached at t_e, not before


def test_non_finite_loss_stops_before_the_optimizer_step(
    harness_cli: HarnessCli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The third training forward pass returns NaN: the run fails at step 3 with two optimizer steps taken."""
    build_model, build_optimizer = train.build_model, train.build_optimizer
    optimizer_steps: list[int] = []

    def poisoned_model(*args: Any, **kwargs: Any) -> torch.nn.Module:
        model = build_model(*args, **kwargs)
        forwards = {"training": 0}

        def poison(module: torch.nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor | None:
            if not module.training:
                return None
            forwards["training"] += 1
            return output * float("nan") if forwards["training"] == 3 else None

        model.register_forward_hook(poison)
        return model

    def counted_optimizer(*args: Any, **kwargs: Any) -> torch.optim.Optimizer:
        optimizer = build_optimizer(*args, **kwargs)
        optimizer.register_step_post_hook(lambda *_: optimizer_steps.append(1))
        return optimizer

    monkeypatch.setattr(train, "build_model", poisoned_model)
    monkeypatch.setattr(train, "build_optimizer", counted_optimizer)
    result = harness_cli.invoke("run", "granet", *harness_cli.mnist1d(), "--set", "tracking.log_every=1")

    assert result.exit_code == 1
    assert result.stderr == "error: non-finite loss at step 3; stopping before the optimizer step\n"
    assert len(optimizer_steps) == 2
    (run_dir,) = run_dirs(harness_cli.runs_dir / "default")
    files = harness_cli.files(run_dir)
    assert files.status == "failed\n"
    assert not (run_dir / "summary.json").exists()
    assert [line["step"] for line in files.lines("train")] == [1, 2]


def test_exploding_learning_rate_fails_the_process_with_exit_code_1(harness_cli: HarnessCli) -> None:
    result = harness_cli.run("run", "gmp", *harness_cli.mnist1d(), "--lr", "1e30")
    assert result.exit_code == 1
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: non-finite ") and last.endswith(" stopping before the optimizer step")
    step = int(last.split(" at step ")[1].split(";")[0])
    (run_dir,) = run_dirs(harness_cli.runs_dir / "default")
    files = harness_cli.files(run_dir)
    assert files.status == "failed\n"
    assert result.stdout == ""  # no run directory is reported for a failed run
    # Nothing was logged for the failing step or after it.
    assert max(line["step"] for line in files.metrics) < step

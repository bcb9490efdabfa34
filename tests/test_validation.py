"""The inputs that used to slip through (issues 12 and 16), each through the CLI: exit code 2, one line
naming the field or path and what is allowed, nothing created; a stop during start-up ends in exit code 3;
the periodic mask check's schedule; the W&B finish that cannot hold up a finished run."""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import runstore_factory as factory
import torch
from conftest import HarnessCli, catches_sigterm
from test_cli import assert_user_error

from harness import config as configuration
from harness.config import MAX_SEED
from harness.engine import signals
from harness.launch import torchrun as launch
from harness.models.build import build_model
from harness.registry.models import NARROWEST_CHANNELS
from harness.store.tracking import finish_mirror_within


def without_option(argv: list[str], name: str) -> list[str]:
    """`argv` with the option `name` and its value left out."""
    index = argv.index(name)
    return argv[:index] + argv[index + 2 :]


# ---------------------------------------------------------------------------------------------------------
# Config values


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--lr", "inf"], "optim.lr: Input should be a finite number (got inf)"),
        (["--lr", "1e309"], "optim.lr: Input should be a finite number (got inf)"),
        (["--lr", "nan"], "optim.lr: Input should be a finite number (got nan)"),
        (["--set", "optim.weight_decay=.inf"], "optim.weight_decay: Input should be a finite number (got inf)"),
        (["--set", "optim.weight_decay=inf"], "optim.weight_decay: Input should be a finite number (got 'inf')"),
        (["--set", "optim.momentum=.nan"], "optim.momentum: Input should be a finite number (got nan)"),
        (
            ["--set", "optim.lr_decay_at=[0.5, .inf]"],
            "optim.lr_decay_at.1: Input should be a finite number (got inf)",
        ),
        (["--set", "model.width=.inf"], "model.width: Input should be a finite number (got inf)"),
        (
            ["--set", "model.width=1e-9"],
            "model.width: 1e-09 leaves resnet20's narrowest layer (16 channels at width 1) with less than "
            "one channel; use a width >= 0.0625",
        ),
        (["--set", "optim.epochs=true"], "optim.epochs: expected a number, not a boolean (got True)"),
        (["--set", "optim.lr=true"], "optim.lr: expected a number, not a boolean (got True)"),
        (
            ["--set", "run.keep_checkpoints=[1, false]"],
            "run.keep_checkpoints: expected a number, not a boolean (got [1, False])",
        ),
        (["--seed", "20000000000000"], f"run.seed: Input should be less than or equal to {MAX_SEED} (got 20000000000000)"),
        (
            ["--seed", str(2**64)],
            f"run.seed: Input should be less than or equal to {MAX_SEED} (got {2**64})",
        ),
        (["--set", "run.mask_check_every=-1"], "run.mask_check_every: Input should be greater than or equal to 0 (got -1)"),
    ],
)  # fmt: skip
def test_values_that_slipped_through_are_user_errors(
    harness_cli: HarnessCli, argv: list[str], message: str
) -> None:
    # A named flag wins over --set: leave --epochs out where --set gives the epochs.
    epochs = None if any(arg.startswith("optim.epochs=") for arg in argv) else 2
    result = harness_cli.invoke("run", "granet", *harness_cli.mnist1d(epochs=epochs), *argv)
    assert_user_error(result, message)
    assert not harness_cli.runs_dir.exists()


def test_the_largest_seed_is_accepted_and_seeds_torch(harness_cli: HarnessCli) -> None:
    config = configuration.resolve("dense", dataset="mnist1d", overrides={"run": {"seed": MAX_SEED}})
    # The trainer's per-rank derivation at the largest seed, for a large world, still fits torch's range.
    torch.manual_seed(config.run.seed * 1_000_003 + 7919 * 1025)
    result = harness_cli.invoke("run", "granet", *harness_cli.mnist1d(), "--seed", str(MAX_SEED), "--dry-run")
    assert result.exit_code == 0, result.stderr


def test_the_narrowest_layer_table_matches_the_models() -> None:
    for arch, channels in NARROWEST_CHANNELS.items():
        model = build_model(arch, num_classes=10, input_shape=(1, 40), width=1 / channels)
        widths = [module.out_channels for module in model.modules() if isinstance(module, torch.nn.Conv1d)]
        assert min(widths) == 1, arch  # exactly the smallest width the config accepts keeps one channel


def test_the_periodic_mask_check_is_not_part_of_the_run_id() -> None:
    plain = configuration.resolve("granet", dataset="mnist1d")
    checked = configuration.resolve("granet", dataset="mnist1d", overrides={"run": {"mask_check_every": 1}})
    assert configuration.run_id(plain) == configuration.run_id(checked)


# ---------------------------------------------------------------------------------------------------------
# Paths and data


def test_an_empty_runs_dir_is_a_user_error(harness_cli: HarnessCli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(harness_cli.cwd)
    argv = without_option(harness_cli.mnist1d(epochs=1), "--runs-dir")
    result = harness_cli.invoke("run", "dense", *argv, "--runs-dir", "")
    assert_user_error(
        result, "tracking.runs_dir: expected a non-empty path (got ''); use '.' for the working directory"
    )
    assert list(harness_cli.cwd.iterdir()) == []


@pytest.mark.parametrize("value", ["null", "''"])
def test_a_missing_data_dir_is_a_user_error(
    harness_cli: HarnessCli, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.chdir(harness_cli.cwd)
    argv = without_option(harness_cli.mnist1d(epochs=1), "--data-dir")
    result = harness_cli.invoke("run", "dense", *argv, "--set", f"data.data_dir={value}")
    given = "None" if value == "null" else "''"
    assert_user_error(
        result, f"data.data_dir: expected a non-empty path (got {given}); use '.' for the working directory"
    )
    assert list(harness_cli.cwd.iterdir()) == []
    assert not harness_cli.runs_dir.exists()


def test_a_data_dir_that_is_a_file_is_a_user_error(harness_cli: HarnessCli, tmp_path: Path) -> None:
    a_file = tmp_path / "data.txt"
    a_file.write_text("not a folder")
    argv = without_option(harness_cli.mnist1d(epochs=1), "--data-dir")
    result = harness_cli.invoke("run", "dense", *argv, "--data-dir", str(a_file))
    assert_user_error(
        result, f"data.data_dir: {a_file} is not a directory; give the folder that holds the datasets"
    )
    assert not harness_cli.runs_dir.exists()


def test_a_batch_larger_than_the_training_set_is_a_user_error(harness_cli: HarnessCli) -> None:
    # 400 samples: 320 train, 50 of them held out for validation.
    result = harness_cli.invoke("run", "dense", *harness_cli.mnist1d(batch_size=271))
    assert_user_error(
        result,
        "optim.batch_size: 271 is larger than the training set (270 samples after the validation split); "
        "use at most 270",
    )
    assert not harness_cli.runs_dir.exists()
    assert harness_cli.invoke("run", "dense", *harness_cli.mnist1d(batch_size=270, epochs=1)).exit_code == 0


@pytest.mark.parametrize(
    "damage",
    [b"PK\x03\x04 truncated zip", b"\x93NUMPY not an npz"],
    ids=["truncated-zip", "npy-header"],
)
def test_a_damaged_mnist1d_cache_is_regenerated_with_a_warning(
    harness_cli: HarnessCli, tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: bytes
) -> None:
    data_dir = tmp_path / "data"
    cache = data_dir / "mnist1d" / "mnist1d-400.npz"
    cache.parent.mkdir(parents=True)
    cache.write_bytes(damage)
    argv = without_option(harness_cli.mnist1d(epochs=1), "--data-dir")
    with caplog.at_level(logging.WARNING, logger="harness.data.datasets"):
        result = harness_cli.invoke("run", "dense", *argv, "--data-dir", str(data_dir))
    assert result.exit_code == 0, result.stderr
    (warning,) = [record.getMessage() for record in caplog.records if record.name == "harness.data.datasets"]
    assert warning.startswith(f"damaged MNIST-1D cache {cache} (")
    assert warning.endswith("); regenerating it")
    good = harness_cli.data_dir / "mnist1d" / "mnist1d-400.npz"
    with np.load(cache) as rebuilt, np.load(good) as reference:
        assert sorted(rebuilt.files) == sorted(reference.files)
        for key in reference.files:
            assert np.array_equal(rebuilt[key], reference[key])
    assert list(cache.parent.iterdir()) == [cache]  # no temporary file left


def test_a_mnist1d_cache_of_another_size_is_regenerated(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from harness.data.datasets import load_mnist1d

    cache = tmp_path / "mnist1d-400.npz"
    np.savez(cache, x=np.zeros((3, 40)), y=np.zeros(3), x_test=np.zeros((1, 40)), y_test=np.zeros(1))
    with caplog.at_level(logging.WARNING, logger="harness.data.datasets"):
        arrays = load_mnist1d(cache, 400)
    assert (len(arrays["x"]), len(arrays["x_test"])) == (320, 80)
    assert [record.getMessage() for record in caplog.records] == [
        f"damaged MNIST-1D cache {cache} (4 samples instead of 400); regenerating it"
    ]


# ---------------------------------------------------------------------------------------------------------
# Command lines, sweep files, figures


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "granet", "--lrr", "0.1"], "harness run: no such option --lrr (did you mean --lr?)"),
        (["run", "granet", "--epoch", "3"], "harness run: no such option --epoch (did you mean --epochs?)"),
        (["run", "granet", "--zzz"], "harness run: no such option --zzz"),
        (
            ["run", "granet", "--epochs", "three"],
            "harness run: invalid value for '--epochs': Input should be a valid integer, unable to parse string "
            "as an integer",
        ),
        (
            ["plasticity", "--pruning-rate", "0.5"],
            "harness plasticity: missing option '--probe-epoch' / '--probe_epoch'.",
        ),
        (["rnu"], "harness: no such command 'rnu'. Did you mean 'run'?"),
    ],
)
def test_command_line_mistakes_are_one_line(harness_cli: HarnessCli, argv: list[str], message: str) -> None:
    assert_user_error(harness_cli.invoke(*argv), message)


def test_a_typo_in_a_real_process_is_one_line(harness_cli: HarnessCli) -> None:
    result = harness_cli.run("run", "granet", "--lrr", "0.1")
    assert result.exit_code == 2
    assert result.stderr == "error: harness run: no such option --lrr (did you mean --lr?)\n"
    assert result.stdout == ""


def test_a_binary_sweep_file_is_a_user_error(harness_cli: HarnessCli, tmp_path: Path) -> None:
    path = tmp_path / "sweep.yaml"
    path.write_bytes(b"program: harness\n\xff\xfe\x00\x01binary")
    result = harness_cli.invoke("sweep", "run", str(path), "--runs-dir", str(harness_cli.runs_dir))
    assert_user_error(result, f"{path}: not a text file (byte 17 is not UTF-8); a sweep file is YAML text")
    assert not harness_cli.runs_dir.exists()


def test_a_bad_value_at_one_grid_point_rejects_the_sweep_naming_file_and_point(
    harness_cli: HarnessCli, tmp_path: Path
) -> None:
    path = tmp_path / "lr.yaml"
    parameters = {
        "dataset": {"value": "mnist1d"},
        "data-dir": {"value": str(harness_cli.data_dir)},
        "wandb": {"value": "disabled"},
        "lr": {"values": [0.1, "inf"]},
    }
    path.write_text(
        json.dumps({"program": "harness", "method": "grid", "parameters": parameters,
                    "command": ["${program}", "run", "dense", "${args}"]})
    )  # fmt: skip
    result = harness_cli.invoke("sweep", "run", str(path), "--runs-dir", str(harness_cli.runs_dir))
    assert_user_error(
        result,
        f"{path}: grid point dataset=mnist1d data-dir={harness_cli.data_dir} wandb=disabled lr=inf: "
        "optim.lr: Input should be a finite number (got inf)",
    )
    assert not harness_cli.runs_dir.exists()


def test_a_sweep_parameter_that_is_no_option_names_the_grid_point(
    harness_cli: HarnessCli, tmp_path: Path
) -> None:
    path = tmp_path / "typo.yaml"
    parameters = {"dataset": {"value": "mnist1d"}, "lrr": {"values": [0.1]}}
    path.write_text(
        json.dumps({"program": "harness", "method": "grid", "parameters": parameters,
                    "command": ["${program}", "run", "dense", "${args}"]})
    )  # fmt: skip
    result = harness_cli.invoke("sweep", "run", str(path), "--runs-dir", str(harness_cli.runs_dir))
    assert_user_error(
        result,
        f"{path}: parameters.lrr: not an option of harness run (did you mean lr?); a parameter is an option's "
        "name without its dashes, as `harness run --help` lists them",
    )
    assert not harness_cli.runs_dir.exists()


def test_figures_with_an_unknown_dynamics_run_write_nothing(harness_cli: HarnessCli, tmp_path: Path) -> None:
    runs_dir = tmp_path / "store"
    factory.write_compare_run(runs_dir, "resnet20", "granet", 0.9, 0, factory.small_spec())
    out = tmp_path / "figures"
    result = harness_cli.invoke("figures", str(runs_dir), "--out", str(out), "--dynamics-run", "no/such")
    assert_user_error(result, "dynamics run 'no/such': no such run among the loaded runs")
    assert not out.exists()


# ---------------------------------------------------------------------------------------------------------
# A stop during start-up


def test_a_stop_requested_before_the_loop_stops_at_step_0_and_resumes_to_the_same_run(
    harness_cli: HarnessCli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    argv = harness_cli.mnist1d(epochs=1)
    monkeypatch.setattr(signals, "_received", [signal.SIGTERM])
    stopped = harness_cli.invoke("run", "granet", *argv)
    assert stopped.exit_code == 3, stopped.stderr
    run_dir = Path(harness_cli.invoke("run", "granet", *argv, "--dry-run").last_line)
    files = harness_cli.files(run_dir)
    assert files.status != "completed\n"
    assert files.checkpoint()["step"] == 0
    assert [record["kind"] for record in files.metrics] == ["mask_update"]  # the initial masks only

    monkeypatch.setattr(signals, "_received", [])
    resumed = harness_cli.invoke("run", "granet", *argv)
    assert resumed.exit_code == 0, resumed.stderr
    reference_runs = tmp_path / "reference"
    reference = harness_cli.invoke("run", "granet", *harness_cli.mnist1d(epochs=1, runs_dir=reference_runs))
    assert reference.exit_code == 0, reference.stderr
    uninterrupted = harness_cli.files(reference.last_line)
    assert files.status == uninterrupted.status == "completed\n"
    ignore = {"wall_time_s"}
    assert {k: v for k, v in files.summary.items() if k not in ignore} == {
        k: v for k, v in uninterrupted.summary.items() if k not in ignore
    }
    for name, tensor in uninterrupted.checkpoint()["model"].items():
        assert torch.equal(files.checkpoint()["model"][name], tensor), name


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads signal masks from /proc")
def test_sigterm_during_start_up_exits_3_before_the_first_step(harness_cli: HarnessCli) -> None:
    """The signal is sent as soon as the process can take it (long before torch is imported and the session
    is built); on a version without the early handler it arrives only once training began, or kills it."""
    argv = harness_cli.mnist1d(epochs=1)
    process = harness_cli.spawn("run", "dense", *argv)
    try:
        while process.poll() is None and not catches_sigterm(process.pid):
            time.sleep(0.005)
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=300)
    finally:
        process.kill()
    assert process.returncode == 3, stderr
    assert "Traceback" not in stderr
    run_dir = Path(harness_cli.invoke("run", "dense", *argv, "--dry-run").last_line)
    assert harness_cli.files(run_dir).checkpoint()["step"] == 0
    assert "stopped before training, at step 0" in stderr


# ---------------------------------------------------------------------------------------------------------
# The periodic mask check and the W&B finish


def test_masks_are_checked_every_n_steps_besides_updates_and_checkpoints(
    harness_cli: HarnessCli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One process compares nothing, but with the checksum log every check is written, so its schedule shows."""
    log_dir = tmp_path / "checksums"
    monkeypatch.setenv("HARNESS_CHECKSUM_LOG", str(log_dir))
    # 9 steps an epoch, no mask update after the initial masks (dT = 1000 steps).
    result = harness_cli.invoke(
        "run",
        "static",
        *harness_cli.mnist1d(epochs=2),
        "--sparsity",
        "0.5",
        "--set",
        "run.mask_check_every=4",
    )
    assert result.exit_code == 0, result.stderr
    steps = [json.loads(line)["step"] for line in (log_dir / "rank0.jsonl").read_text().splitlines()]
    assert steps == [0, 4, 8, 9, 12, 16, 18]  # start, every 4th step, the two epoch-end checkpoints


class SlowMirror:
    def __init__(self) -> None:
        self.release = threading.Event()
        self.finished: list[str] = []

    def finish(self, status: str, summary: object) -> None:
        self.release.wait()
        self.finished.append(status)


def test_a_hung_wandb_finish_gives_up_after_its_timeout(caplog: pytest.LogCaptureFixture) -> None:
    mirror = SlowMirror()
    with caplog.at_level(logging.WARNING, logger="harness.store.tracking"):
        finish_mirror_within(mirror, "completed", {"test_acc": 0.5}, timeout_s=0.05)
    assert mirror.finished == []
    assert [record.getMessage() for record in caplog.records] == [
        "W&B finish did not return within 0.05 s; the run is completed in the local run store, and its offline "
        "W&B files can be uploaded later with `wandb sync`"
    ]
    mirror.release.set()


def test_a_prompt_wandb_finish_is_waited_for(caplog: pytest.LogCaptureFixture) -> None:
    mirror = SlowMirror()
    mirror.release.set()
    with caplog.at_level(logging.WARNING, logger="harness.store.tracking"):
        finish_mirror_within(mirror, "failed", None, timeout_s=60)
    assert mirror.finished == ["failed"]
    assert caplog.records == []


def test_a_launcher_stopped_during_start_up_starts_no_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:

    monkeypatch.setattr(signals, "_received", [signal.SIGTERM])
    started: list[list[str]] = []
    monkeypatch.setattr(launch.subprocess, "Popen", lambda argv, **kwargs: started.append(argv))
    assert launch.relaunch((["torchrun", "-m", "harness.cli"], {})) == 3
    assert started == []


def test_a_stop_that_arrived_while_torchrun_started_is_passed_on(monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess
    import sys

    job = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    monkeypatch.setattr(signals, "_received", [signal.SIGTERM])
    try:
        assert launch.wait_passing_on_stop(job) == 3
    finally:
        job.kill()
        job.wait()
    assert job.returncode == -signal.SIGTERM

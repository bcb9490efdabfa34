"""Killed runs resume to the bit: SIGKILL after a checkpoint, and SIGTERM (checkpoint mid-epoch, exit code 3).

Each test trains the same command twice into two runs directories: once uninterrupted (in this process),
once as a real process that is killed and then re-run with the same command. On the CPU both must end
with identical weights, optimizer state, masks, metrics lines (timing fields aside) and summaries.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import HarnessCli, RunFiles

from harness.store.rundir import read_metrics

# 1,000 MNIST-1D samples: 750 training sequences, 12 steps of 64 per epoch; 3 epochs are 36 steps.
STEPS_PER_EPOCH = 12
EPOCHS = 3
TIMING_KEYS = {"time/epoch_s"}
WAIT_LIMIT_S = 240  # a guard against a hung child, not a timing assertion


def command(harness_cli: HarnessCli, method: str, runs_dir: Path) -> list[str]:
    return [
        "run", method, *harness_cli.mnist1d(samples=1000, batch_size=64, epochs=EPOCHS, runs_dir=runs_dir),
        "--update-frequency", "5", "--set", "tracking.log_every=2",
    ]  # fmt: skip


def uninterrupted(harness_cli: HarnessCli, method: str, runs_dir: Path) -> Path:
    result = harness_cli.invoke(*command(harness_cli, method, runs_dir))
    assert result.exit_code == 0, result.stderr
    return Path(result.last_line)


def wait_until(condition: Callable[[], bool], process: subprocess.Popen) -> None:
    deadline = time.monotonic() + WAIT_LIMIT_S
    while not condition():
        if process.poll() is not None:
            _, stderr = process.communicate()
            pytest.fail(
                f"the run ended (exit code {process.returncode}) before it could be interrupted:\n{stderr}"
            )
        if time.monotonic() > deadline:
            process.kill()
            process.communicate()
            pytest.fail("the run made no progress")
        time.sleep(0.005)


def steps_logged(run_dir: Path) -> list[int]:
    return [record["step"] for record in read_metrics(run_dir / "metrics.jsonl")]


def without_timing(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{key: value for key, value in record.items() if key not in TIMING_KEYS} for record in records]


def assert_same_tensors(first: Any, second: Any, where: str) -> None:
    """Nested dicts/lists of tensors and plain values, equal bit for bit."""
    if isinstance(first, torch.Tensor):
        assert isinstance(second, torch.Tensor) and first.dtype == second.dtype, where
        assert torch.equal(first, second), where
    elif isinstance(first, dict):
        assert set(first) == set(second), where
        for key in first:
            assert_same_tensors(first[key], second[key], f"{where}.{key}")
    elif isinstance(first, list | tuple):
        assert len(first) == len(second), where
        for index, (a, b) in enumerate(zip(first, second, strict=True)):
            assert_same_tensors(a, b, f"{where}[{index}]")
    else:
        assert first == second, where


def assert_identical_runs(resumed: RunFiles, reference: RunFiles) -> None:
    assert resumed.status == reference.status == "completed\n"
    final, expected = resumed.checkpoint(), reference.checkpoint()
    for key in ("model", "optimizer", "scheduler", "sparsifier", "epoch", "step", "totals", "best"):
        assert_same_tensors(final[key], expected[key], key)
    assert without_timing(resumed.metrics) == without_timing(reference.metrics)
    resumed_masks, reference_masks = resumed.snapshots(), reference.snapshots()
    assert list(resumed_masks) == list(reference_masks)
    for step, masks in reference_masks.items():
        assert all(np.array_equal(resumed_masks[step][name], mask) for name, mask in masks.items()), step
    summary, expected_summary = resumed.summary, reference.summary
    assert summary.pop("wall_time_s") > 0
    expected_summary.pop("wall_time_s")
    assert summary == expected_summary


@pytest.mark.slow
def test_sigkill_after_a_checkpoint_then_the_same_command_ends_bit_identical(
    harness_cli: HarnessCli, tmp_path: Path
) -> None:
    reference = uninterrupted(harness_cli, "granet", tmp_path / "reference")
    argv = command(harness_cli, "granet", harness_cli.runs_dir)
    run_dir = harness_cli.runs_dir / "default" / reference.name

    process = harness_cli.spawn(*argv)
    last = run_dir / "checkpoints" / "last.pt"
    # Killed inside epoch 2 (usually: a loaded machine may let it reach the epoch-2 checkpoint), after the
    # epoch-1 checkpoint and some logged steps that the resume has to forget.
    wait_until(
        lambda: last.exists() and max(steps_logged(run_dir), default=0) >= STEPS_PER_EPOCH + 4, process
    )
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert process.returncode == -signal.SIGKILL
    assert (run_dir / "status").read_text() == "running\n"
    state = torch.load(last, weights_only=True)
    checkpointed = state["step"]
    assert checkpointed % STEPS_PER_EPOCH == 0 and checkpointed < EPOCHS * STEPS_PER_EPOCH
    # The killed process's wall time up to its checkpoint survives the kill ...
    assert state["elapsed"] > 0

    rerun = harness_cli.run(*argv)
    assert rerun.exit_code == 0, rerun.stderr
    assert rerun.last_line == str(run_dir)
    assert f"resuming {reference.name} from epoch {checkpointed // STEPS_PER_EPOCH}" in rerun.stderr
    assert_identical_runs(harness_cli.files(run_dir), harness_cli.files(reference))
    # ... and is part of the run's wall time.
    assert harness_cli.files(run_dir).summary["wall_time_s"] > state["elapsed"]


@pytest.mark.slow
def test_sigterm_checkpoints_mid_epoch_exits_3_and_the_rerun_ends_bit_identical(
    harness_cli: HarnessCli, tmp_path: Path
) -> None:
    # SET: random regrowth, so the method's own generator must be restored exactly too.
    reference = uninterrupted(harness_cli, "set", tmp_path / "reference")
    argv = command(harness_cli, "set", harness_cli.runs_dir)
    run_dir = harness_cli.runs_dir / "default" / reference.name

    process = harness_cli.spawn(*argv)
    wait_until(lambda: max(steps_logged(run_dir), default=0) >= STEPS_PER_EPOCH + 3, process)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=WAIT_LIMIT_S)
    assert process.returncode == 3, stderr
    assert stdout == ""
    assert "Traceback" not in stderr
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    # The checkpoint is the step the signal interrupted: inside an epoch that has not been closed.
    assert state["epoch"] * STEPS_PER_EPOCH < state["step"] < EPOCHS * STEPS_PER_EPOCH
    assert f"interrupted at step {state['step']}; checkpoint written" in stderr
    assert (run_dir / "status").read_text() == "running\n"
    assert max(steps_logged(run_dir)) <= state["step"]

    rerun = harness_cli.run(*argv)
    assert rerun.exit_code == 0, rerun.stderr
    assert rerun.last_line == str(run_dir)
    assert_identical_runs(harness_cli.files(run_dir), harness_cli.files(reference))

"""The engine's hooks for its clients (`harness.engine.extension.RunExtension`), exercised by a recording
extension on a tiny synthetic run: the points are met in order, the extension's checkpoint state travels
through an interrupted run's checkpoint into its resume, and its names may not shadow the engine's own.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
from conftest import RunFiles

from harness.config import Config, resolve
from harness.engine.distributed import dist_info_from_env
from harness.engine.extension import RunExtension
from harness.engine.lifecycle import run_training
from harness.engine.loop import Interrupted
from harness.engine.session import Session
from harness.store.tracking import Tracker

EPOCHS = 3


class Recording(RunExtension):
    """Counts the epochs it saw in its checkpoint state; optionally asks the run to stop after one epoch."""

    def __init__(self, stop_after_epoch: int | None = None) -> None:
        self.calls: list[str] = []
        self.epochs: list[int] = []
        self.stop_after_epoch = stop_after_epoch

    def start(self, session: Session, tracker: Tracker) -> None:
        self.calls.append(f"start at step {session.step}")
        super().start(session, tracker)

    def checkpoint_state(self) -> dict[str, Any]:
        return {"epochs_seen": list(self.epochs)}

    def resume(self, extra: dict[str, Any]) -> None:
        self.calls.append(f"resume with {sorted(extra)}")
        self.epochs = list(extra["epochs_seen"])

    def after_evaluation(self, session: Session) -> None:
        assert session.last_epoch is not None and session.last_epoch["epoch"] == session.epoch
        self.calls.append(f"after epoch {session.epoch}")
        self.epochs.append(session.epoch)
        if session.epoch == self.stop_after_epoch:
            os.kill(os.getpid(), signal.SIGTERM)  # the loop stops at its next step, checkpointing first

    def add_to_summary(self, session: Session, summary: dict[str, Any]) -> None:
        self.calls.append("summary")
        summary["epochs_seen"] = list(self.epochs)


def tiny_config(runs_dir: Path) -> Config:
    overrides = {
        "optim": {"epochs": EPOCHS},
        "tracking": {"runs_dir": str(runs_dir), "wandb": "disabled"},
        "run": {"device": "cpu", "threads": 1},
    }
    return resolve("set", dataset="synthetic", overrides=overrides)


def test_a_fresh_run_meets_the_hooks_in_order_and_checkpoints_the_extension_state(tmp_path: Path) -> None:
    extension = Recording()
    result = run_training(tiny_config(tmp_path), dist_info_from_env("cpu"), extension=extension)
    assert extension.calls == [
        "start at step 0",
        "after epoch 1",
        "after epoch 2",
        "after epoch 3",
        "summary",
    ]
    files = RunFiles(result.run_dir)
    assert files.summary["epochs_seen"] == [1, 2, 3]
    extra = files.checkpoint()["extra"]
    assert list(extra) == ["last_epoch", "epochs_seen"]  # the engine's entries first, the extension's after
    assert extra["epochs_seen"] == [1, 2, 3]
    # The default start logged the method's initial masks as the step-0 event.
    assert [line["step"] for line in files.lines("mask_update")][0] == 0


def test_an_interrupted_run_resumes_with_its_extension_state_to_the_same_summary(tmp_path: Path) -> None:
    reference = run_training(
        tiny_config(tmp_path / "reference"), dist_info_from_env("cpu"), extension=Recording()
    )
    config = tiny_config(tmp_path / "interrupted")
    first = Recording(stop_after_epoch=1)
    with pytest.raises(Interrupted):
        run_training(config, dist_info_from_env("cpu"), extension=first)
    assert first.calls == ["start at step 0", "after epoch 1"]
    second = Recording()
    resumed = run_training(config, dist_info_from_env("cpu"), extension=second)
    assert second.calls == [
        "resume with ['epochs_seen', 'last_epoch']",
        "after epoch 2",
        "after epoch 3",
        "summary",
    ]
    expected, got = RunFiles(reference.run_dir).summary, RunFiles(resumed.run_dir).summary
    expected.pop("wall_time_s"), got.pop("wall_time_s")
    assert got == expected and got["epochs_seen"] == [1, 2, 3]


class Shadowing(RunExtension):
    def checkpoint_state(self) -> dict[str, Any]:
        return {"last_epoch": "mine"}


def test_extension_state_may_not_take_the_engine_s_checkpoint_entries(tmp_path: Path) -> None:
    with pytest.raises(
        ValueError, match="^checkpoint_state: the engine's own checkpoint entries already use last_epoch$"
    ):
        run_training(tiny_config(tmp_path), dist_info_from_env("cpu"), extension=Shadowing())

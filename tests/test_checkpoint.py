"""Atomic checkpoints: previous file kept, crashes at any instant leave a loadable file, RNG round trip."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.errors import UserError
from harness.store import checkpoint, rundir
from harness.store.checkpoint import (
    capture_rng_state,
    keep_copy,
    latest_checkpoint,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)


def _state(step: int) -> dict:
    return {"model": {"weight": torch.full((3, 2), float(step))}, "step": step, "epoch": step // 10}


@pytest.fixture
def checkpoints(tmp_path: Path) -> Path:
    return tmp_path / "run" / "checkpoints"


def test_save_keeps_the_previous_checkpoint_as_prev(checkpoints: Path) -> None:
    last = checkpoints / "last.pt"
    for step in (10, 20, 30):
        save_checkpoint(last, _state(step))

    assert load_checkpoint(last)["step"] == 30
    assert load_checkpoint(checkpoints / "prev.pt")["step"] == 20
    # Nothing but the two checkpoints: no temporary files left behind.
    assert sorted(path.name for path in checkpoints.iterdir()) == ["last.pt", "prev.pt"]
    assert torch.equal(load_checkpoint(last)["model"]["weight"], torch.full((3, 2), 30.0))


def test_other_names_keep_their_previous_beside_them(tmp_path: Path) -> None:
    target = tmp_path / "probe.pt"
    save_checkpoint(target, _state(1))
    save_checkpoint(target, _state(2))
    assert load_checkpoint(tmp_path / "probe.prev.pt")["step"] == 1


def test_failed_save_leaves_last_untouched(checkpoints: Path) -> None:
    last = checkpoints / "last.pt"
    save_checkpoint(last, _state(10))
    with pytest.raises(Exception):  # noqa: B017 - whatever pickle raises for a lambda
        save_checkpoint(last, {"bad": lambda: None})
    assert load_checkpoint(last)["step"] == 10
    assert not (checkpoints / "prev.pt").exists()
    assert sorted(path.name for path in checkpoints.iterdir()) == ["last.pt"]


def test_keep_copy_survives_later_saves(checkpoints: Path) -> None:
    last = checkpoints / "last.pt"
    save_checkpoint(last, _state(10))
    kept = keep_copy(last, 1)
    save_checkpoint(last, _state(20))
    save_checkpoint(last, _state(30))

    assert kept == checkpoints / "epoch_0001.pt"
    assert load_checkpoint(kept)["step"] == 10
    assert load_checkpoint(last)["step"] == 30
    assert load_checkpoint(checkpoints / "prev.pt")["step"] == 20


def test_missing_checkpoint_is_a_user_error_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "last.pt"
    with pytest.raises(UserError, match=f"^{path}: checkpoint not found$"):
        load_checkpoint(path)


@pytest.mark.parametrize("keep_fraction", [0.0, 0.5, 0.999])
def test_truncated_checkpoint_is_a_user_error_naming_the_path(
    checkpoints: Path, keep_fraction: float
) -> None:
    last = checkpoints / "last.pt"
    save_checkpoint(last, _state(10))
    data = last.read_bytes()
    last.write_bytes(data[: int(len(data) * keep_fraction)])
    with pytest.raises(UserError, match=f"^{last}: checkpoint is truncated or corrupt"):
        load_checkpoint(last)


def test_flipped_byte_is_detected_although_torch_load_would_accept_it(checkpoints: Path) -> None:
    last = checkpoints / "last.pt"
    save_checkpoint(last, {"weights": torch.arange(50_000)})
    data = bytearray(last.read_bytes())
    data[len(data) // 2] ^= 0xFF
    last.write_bytes(bytes(data))
    torch.load(last, weights_only=True)  # the reason for the CRC check: no error here
    with pytest.raises(UserError, match="corrupt"):
        load_checkpoint(last)


def test_non_tensor_objects_are_refused_with_the_path(tmp_path: Path) -> None:
    path = tmp_path / "objects.pt"
    torch.save({"when": __import__("datetime").date(2021, 12, 6)}, path)
    with pytest.raises(UserError, match=f"^{path}: checkpoint cannot be loaded with weights_only=True"):
        load_checkpoint(path)


def test_latest_checkpoint_prefers_last_and_falls_back_to_prev(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    assert latest_checkpoint(run_dir) is None

    last = rundir.checkpoint_dir(run_dir) / "last.pt"
    save_checkpoint(last, _state(10))
    assert latest_checkpoint(run_dir) == last

    save_checkpoint(last, _state(20))
    last.write_bytes(last.read_bytes()[:100])  # a torn write
    assert latest_checkpoint(run_dir) == rundir.checkpoint_dir(run_dir) / "prev.pt"
    assert load_checkpoint(latest_checkpoint(run_dir))["step"] == 10


def test_crash_between_the_two_renames_leaves_prev_loadable(tmp_path: Path, monkeypatch) -> None:
    run_dir = tmp_path / "run"
    last = rundir.checkpoint_dir(run_dir) / "last.pt"
    save_checkpoint(last, _state(10))

    real_replace = os.replace

    def crash_on_second_rename(source, destination):
        real_replace(source, destination)
        if Path(destination).name == "prev.pt":
            raise KeyboardInterrupt  # the process dies right after last.pt moved to prev.pt

    monkeypatch.setattr(checkpoint.os, "replace", crash_on_second_rename)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(last, _state(20))
    monkeypatch.undo()

    assert not last.exists()
    found = latest_checkpoint(run_dir)
    assert found is not None and found.name == "prev.pt"
    assert load_checkpoint(found)["step"] == 10


def _draws() -> tuple[list[float], list[float], list[float]]:
    return (
        torch.rand(5).tolist() + torch.randn(3).tolist(),
        np.random.rand(5).tolist() + [float(np.random.standard_normal())],
        [random.random() for _ in range(5)] + [random.gauss(0.0, 1.0)],
    )


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path: Path) -> None:
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    _draws()
    # Leave a cached Gaussian in numpy and python so those parts of the state are exercised too.
    np.random.standard_normal()
    random.gauss(0.0, 1.0)

    path = tmp_path / "rng.pt"
    save_checkpoint(path, {"rng": capture_rng_state()})
    uninterrupted = _draws()

    torch.manual_seed(999)
    np.random.seed(999)
    random.seed(999)
    restore_rng_state(load_checkpoint(path)["rng"])
    resumed = _draws()

    assert resumed == uninterrupted

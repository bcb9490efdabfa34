"""A run's W&B offline mirror is self-contained: moved elsewhere, it still carries every payload sync uploads."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from harness.cli.commands import app
from harness.config import Config, TrackingConfig
from harness.store import wandb_offline
from harness.store.tracking import open_tracker

wandb = pytest.importorskip("wandb")

RUN_ID = "granet-resnet20-mnist1d-s0-feedc0ffee"
STEPS = (0, 30, 60)


@pytest.fixture
def wandb_home(tmp_path: Path, monkeypatch) -> Iterator[Path]:
    """Every W&B directory but the run's own inside tmp_path/home: what leaks there would not travel."""
    home = tmp_path / "home"
    for variable in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        (home / variable.lower()).mkdir(parents=True)
        monkeypatch.setenv(variable, str(home / variable.lower()))
    for variable in ("WANDB_DIR", "WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_RUN_ID"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("NETRC", str(home / "netrc"))
    yield home
    wandb.teardown()


def _offline_run(run_dir: Path) -> Path:
    config = Config(tracking=TrackingConfig(wandb="offline", group="g", job_type="train"))
    tracker = open_tracker(
        run_dir, config.to_dict(), tracking=config.tracking, run_id=RUN_ID, tags=["granet", "resnet20"],
        is_main=True, resume_step=None,
    )  # fmt: skip
    for step in STEPS:
        generator = torch.Generator().manual_seed(step)
        tracker.log_masks(step, {"conv.weight": torch.rand(5, 7, generator=generator) < 0.5})
        tracker.log({"kind": "epoch", "step": step + 1, "epoch": step / 30 + 1, "test/acc": 0.5})
    tracker.finish("completed", {"run_id": RUN_ID, "test_acc": 0.625, "density": 0.5})
    wandb.teardown()  # flushes the .wandb log (wandb-core writes it when its service stream closes)
    return run_dir


def test_a_moved_offline_run_carries_its_mask_files_and_relocates(tmp_path: Path, wandb_home: Path) -> None:
    original = _offline_run(tmp_path / "node" / "runs" / "g" / RUN_ID)
    masks = {path.name: path.read_bytes() for path in (original / "masks").iterdir()}
    assert len(masks) == len(STEPS)

    moved = tmp_path / "laptop" / "runs" / "g" / RUN_ID
    moved.parent.mkdir(parents=True)
    shutil.move(original, moved)
    shutil.rmtree(tmp_path / "node")  # the compute node's copy is gone
    shutil.rmtree(wandb_home)  # and so is every W&B folder outside the run directory

    (folder,) = wandb_offline.offline_folders(moved)
    run = wandb_offline.read_offline_run(folder)
    assert (run.run_id, run.group, run.job_type, run.tags) == (RUN_ID, "g", "train", ["granet", "resnet20"])
    assert run.config["tracking"]["wandb"] == "offline" and run.summary["test_acc"] == 0.625
    assert run.history_rows == len(STEPS)
    assert run.artifacts == {f"masks-{RUN_ID}": [f"step_{step}" for step in STEPS]}
    artifact_payloads = [payload for payload in run.payloads if payload.artifact]
    assert sorted(payload.name for payload in artifact_payloads) == sorted(masks)
    # Before relocation the manifests still name the old place; the files are in the moved run directory.
    assert not any(payload.exists for payload in artifact_payloads)
    assert all(
        (moved / payload.run_file).read_bytes() == masks[payload.name] for payload in artifact_payloads
    )

    assert wandb_offline.relocate(moved) == len(STEPS)
    assert wandb_offline.relocate(moved) == 0  # idempotent
    run = wandb_offline.read_offline_run(folder)
    uploads = [payload for payload in run.payloads if payload.artifact]
    assert all(payload.local_path.is_relative_to(moved.resolve()) for payload in run.payloads)
    assert {payload.name: payload.local_path.read_bytes() for payload in uploads} == masks
    # Everything else sync reads is unchanged by the rewrite.
    assert run.summary["test_acc"] == 0.625 and run.history_rows == len(STEPS)


def test_rewriting_a_log_without_changes_is_byte_identical_to_wandbs_own(tmp_path: Path, wandb_home: Path):
    run_dir = _offline_run(tmp_path / "run")
    (folder,) = wandb_offline.offline_folders(run_dir)
    (log,) = folder.glob("*.wandb")
    original = log.read_bytes()
    header, records = wandb_offline.read_log(log)
    assert len(records) > 10
    wandb_offline.write_log(log, header, records)
    assert log.read_bytes() == original


def test_records_spanning_blocks_round_trip(tmp_path: Path) -> None:
    header = b":W&B" + bytes([0xE1, 0xBE, 0])
    records = [b"a" * 40000, b"", b"b" * 32761, b"c" * 5, b"d" * 70000]
    path = tmp_path / "run.wandb"
    wandb_offline.write_log(path, header, records)
    assert wandb_offline.read_log(path) == (header, records)


def test_a_damaged_log_is_read_up_to_the_damage_with_a_warning(tmp_path: Path, caplog) -> None:
    header = b":W&B" + bytes([0xE1, 0xBE, 0])
    path = tmp_path / "run.wandb"
    wandb_offline.write_log(path, header, [b"first", b"second"])
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    assert wandb_offline.read_log(path)[1] == [b"first"]
    assert [record.getMessage() for record in caplog.records] == [
        f"{path}: damaged record at byte {7 + 7 + 5}; reading stops there"
    ]


def test_harness_wandb_shows_and_relocates_an_offline_run(tmp_path: Path, wandb_home: Path) -> None:
    original = _offline_run(tmp_path / "a" / RUN_ID)
    moved = tmp_path / "b" / RUN_ID
    shutil.move(original, moved)
    runner = CliRunner()
    shown = runner.invoke(app, ["wandb", str(moved)])
    assert shown.exit_code == 0, shown.output
    assert f"run {RUN_ID}  project granet-harness  group g  job_type train" in shown.output
    assert f"artifact masks-{RUN_ID}: 3 versions (step_0, step_30, step_60)" in shown.output
    assert "missing: 3" in shown.output and "--relocate" in shown.output
    fixed = runner.invoke(app, ["wandb", str(moved), "--relocate"])
    assert fixed.exit_code == 0, fixed.output
    assert fixed.output.startswith(f"relocated 3 artifact entries to {moved.resolve()}\n")
    assert "missing: 0" in fixed.output

    empty = runner.invoke(app, ["wandb", str(tmp_path / "a")])
    assert empty.exit_code == 2
    assert (
        empty.output.strip()
        == f"error: {tmp_path / 'a'}: no W&B offline run here (expected wandb/offline-run-*)"
    )


def test_relocate_refuses_a_real_log_with_a_flipped_byte_and_keeps_it(
    tmp_path: Path, wandb_home: Path
) -> None:
    # Issue 25: one flipped byte at 80% of the log used to make --relocate drop the rows, summary and
    # artifact after it for good.
    original = _offline_run(tmp_path / "a" / RUN_ID)
    moved = tmp_path / "b" / RUN_ID
    shutil.move(original, moved)
    (folder,) = wandb_offline.offline_folders(moved)
    (log,) = folder.glob("*.wandb")
    data = bytearray(log.read_bytes())
    data[int(len(data) * 0.8)] ^= 0xFF
    log.write_bytes(bytes(data))
    scan = wandb_offline.scan_log(log)
    assert scan.damaged_at is not None

    result = CliRunner().invoke(app, ["wandb", str(moved), "--relocate"])

    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.startswith(
        f"error: {log}: damaged record at byte {scan.damaged_at} of {len(data)}; "
    )
    assert result.stderr.endswith("nothing changed: --drop-damaged rewrites it without them\n")
    assert result.stderr.count("\n") == 1
    assert log.read_bytes() == bytes(data)
    assert sorted(path.name for path in folder.glob("*.wandb*")) == [log.name]

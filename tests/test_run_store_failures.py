"""`harness run` on a damaged or tampered run directory (issues 12 and 16).

A completed CPU-sized run is trained once per module; each test copies it into a fresh runs directory
(the run id does not depend on where runs live), damages the copy, and runs the same command again:

- a damaged status, summary or config of a completed run: one warning, then the run resumes from its final
  checkpoint and ends with the same files;
- another run's checkpoint as `last.pt`, or a malicious pickle: refused (exit 2, one line), nothing
  executed, the run directory left as it was;
- both checkpoints corrupt: one warning saying the run restarts from scratch, then the same result;
- temporary files of killed writers: removed, the run's own only;
- a planted symlink: refused with one line naming it.

The disk-full test (slow) mounts a small tmpfs and fills it while the run is stopped between epochs.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import HarnessCli

from harness.store import rundir
from harness.store.rundir import read_metrics

TIMING_KEYS = {"time/epoch_s"}


def train_argv(cli: HarnessCli, runs_dir: Path, seed: int = 0, epochs: int = 2) -> list[str]:
    return ["run", "granet", *cli.mnist1d(runs_dir=runs_dir, epochs=epochs), "--seed", str(seed)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, mnist1d_dir: Path) -> dict[int, Path]:
    """Completed runs of the same command with seeds 0 and 1 (seed -> run directory)."""
    root = tmp_path_factory.mktemp("trained")
    cli = HarnessCli(root / "runs", mnist1d_dir, root)
    done = {}
    for seed in (0, 1):
        result = cli.invoke(*train_argv(cli, cli.runs_dir, seed))
        assert result.exit_code == 0, result.stderr
        done[seed] = Path(result.last_line)
    return done


def copy_run(run_dir: Path, runs_dir: Path) -> Path:
    target = runs_dir / run_dir.parent.name / run_dir.name
    shutil.copytree(run_dir, target)
    return target


def interrupted(run_dir: Path) -> None:
    """As a run killed without warning leaves it: status `running`, no summary."""
    (run_dir / "status").write_text("running\n")
    (run_dir / "summary.json").unlink()


def contents(directory: Path) -> dict[str, bytes | str]:
    """Every entry below `directory`: file bytes, or where a symlink points."""
    found: dict[str, bytes | str] = {}
    for path in sorted(directory.rglob("*")):
        name = str(path.relative_to(directory))
        if path.is_symlink():
            found[name] = f"-> {os.readlink(path)}"
        elif path.is_file():
            found[name] = path.read_bytes()
    return found


def without_timing(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{key: value for key, value in record.items() if key not in TIMING_KEYS} for record in records]


def summary_without_time(run_dir: Path) -> dict[str, Any]:
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary.pop("wall_time_s") > 0
    return summary


def assert_same_results(run_dir: Path, reference: Path) -> None:
    assert (run_dir / "status").read_text() == "completed\n"
    assert summary_without_time(run_dir) == summary_without_time(reference)
    assert without_timing(read_metrics(run_dir / "metrics.jsonl")) == without_timing(
        read_metrics(reference / "metrics.jsonl")
    )
    # The same resolved config, byte for byte, apart from where the runs live.
    ours_config, reference_config = (
        (path / "config.yaml").read_text().replace(str(path.parent.parent), "RUNS")
        for path in (run_dir, reference)
    )
    assert ours_config == reference_config
    ours, theirs = (
        torch.load(path / "checkpoints" / "last.pt", weights_only=True) for path in (run_dir, reference)
    )
    for name, tensor in theirs["model"].items():
        assert torch.equal(ours["model"][name], tensor), name
    assert [path.name for path in rundir.mask_snapshots(run_dir)] == [
        path.name for path in rundir.mask_snapshots(reference)
    ]


def warnings(caplog: pytest.LogCaptureFixture, *needles: str) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.levelno >= logging.WARNING and all(needle in record.getMessage() for needle in needles)
    ]


DAMAGE = {
    "summary-garbage": ("summary.json", b"{\x00garbage"),
    "summary-a-list": ("summary.json", b"[1, 2]\n"),
    "status-binary": ("status", b"\xff\xfe\x00\x01"),
    "config-a-list": ("config.yaml", b"- 1\n- 2\n"),
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_run_on_a_completed_run_with_a_damaged_file_warns_once_and_refinishes_it(
    kind: str, harness_cli: HarnessCli, trained: dict[int, Path], caplog: pytest.LogCaptureFixture
) -> None:
    run_dir = copy_run(trained[0], harness_cli.runs_dir)
    name, content = DAMAGE[kind]
    (run_dir / name).write_bytes(content)
    caplog.set_level(logging.INFO)

    result = harness_cli.invoke(*train_argv(harness_cli, harness_cli.runs_dir))
    assert result.exit_code == 0, result.stderr
    assert result.last_line == str(run_dir)
    assert len(warnings(caplog, run_dir.name, str(run_dir / name))) == 1
    assert len(warnings(caplog)) == 1
    assert_same_results(run_dir, trained[0])


def test_another_runs_checkpoint_is_refused_naming_both_runs_and_nothing_changes(
    harness_cli: HarnessCli, trained: dict[int, Path]
) -> None:
    run_dir = copy_run(trained[0], harness_cli.runs_dir)
    interrupted(run_dir)
    # The seed-1 run's last.pt copied into the seed-0 run directory.
    shutil.copyfile(trained[1] / "checkpoints" / "last.pt", run_dir / "checkpoints" / "last.pt")
    before = contents(run_dir)

    result = harness_cli.invoke(*train_argv(harness_cli, harness_cli.runs_dir))
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert trained[1].name in lines[0] and trained[0].name in lines[0] and "last.pt" in lines[0]
    assert contents(run_dir) == before


class Exploit:
    """A pickle that would run a command when unpickled without weights_only."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def test_a_malicious_pickle_as_last_pt_is_refused_and_nothing_executes(
    harness_cli: HarnessCli, trained: dict[int, Path], tmp_path: Path
) -> None:
    run_dir = copy_run(trained[0], harness_cli.runs_dir)
    interrupted(run_dir)
    marker = tmp_path / "exploited"
    torch.save({"model": Exploit(marker)}, run_dir / "checkpoints" / "last.pt")
    before = contents(run_dir)

    result = harness_cli.invoke(*train_argv(harness_cli, harness_cli.runs_dir))
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "last.pt: checkpoint cannot be loaded with weights_only=True" in lines[0]
    assert not marker.exists()
    assert contents(run_dir) == before


def test_both_checkpoints_corrupt_restart_from_scratch_with_one_warning(
    harness_cli: HarnessCli, trained: dict[int, Path], caplog: pytest.LogCaptureFixture
) -> None:
    run_dir = copy_run(trained[0], harness_cli.runs_dir)
    interrupted(run_dir)
    for name in ("last.pt", "prev.pt"):
        path = run_dir / "checkpoints" / name
        path.write_bytes(path.read_bytes()[:1000])
    caplog.set_level(logging.INFO)

    result = harness_cli.invoke(*train_argv(harness_cli, harness_cli.runs_dir))
    assert result.exit_code == 0, result.stderr
    assert warnings(caplog) == [
        f"{run_dir / 'checkpoints'}: last.pt and prev.pt are incomplete or corrupt (zip integrity check "
        "failed); the run restarts from scratch (step 0), it does not resume"
    ]
    assert not any("resuming" in record.getMessage() for record in caplog.records)
    assert_same_results(run_dir, trained[0])


def test_resume_removes_its_own_stale_temporary_files_only(
    harness_cli: HarnessCli, trained: dict[int, Path]
) -> None:
    run_dir = copy_run(trained[0], harness_cli.runs_dir)
    other = copy_run(trained[1], harness_cli.runs_dir)
    interrupted(run_dir)
    # What kills inside atomic writes leave: a whole checkpoint among them.
    stale = [
        run_dir / "checkpoints" / ".last.pt.4242.tmp",
        run_dir / "checkpoints" / ".epoch_0001.pt.4243.tmp",
        run_dir / ".status.4244.tmp",
        run_dir / "masks" / ".step_000000018.npz.4245.tmp",
    ]
    shutil.copyfile(run_dir / "checkpoints" / "last.pt", stale[0])
    for path in stale[1:]:
        path.write_bytes(b"partial")
    others = other / "checkpoints" / ".last.pt.4246.tmp"
    others.write_bytes(b"partial")

    result = harness_cli.invoke(*train_argv(harness_cli, harness_cli.runs_dir))
    assert result.exit_code == 0, result.stderr
    assert [path for path in stale if path.exists()] == []
    assert others.exists()
    assert sorted(path.name for path in run_dir.rglob("*.tmp")) == []
    assert_same_results(run_dir, trained[0])


@pytest.mark.parametrize("planted", ["masks", "metrics.jsonl", "checkpoints/last.pt"])
def test_a_planted_symlink_in_the_run_directory_is_refused(
    planted: str, harness_cli: HarnessCli, trained: dict[int, Path], tmp_path: Path
) -> None:
    run_dir = copy_run(trained[0], harness_cli.runs_dir)
    interrupted(run_dir)
    outside = tmp_path / "outside"
    outside.mkdir()
    link = run_dir / planted
    if link.is_dir():
        shutil.move(link, outside / link.name)
        link.symlink_to(outside / link.name, target_is_directory=True)
    else:
        shutil.move(link, outside / link.name)
        link.symlink_to(outside / link.name)
    before, outside_before = contents(run_dir), contents(outside)

    result = harness_cli.invoke(*train_argv(harness_cli, harness_cli.runs_dir))
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {link}: is a symlink")
    assert contents(run_dir) == before and contents(outside) == outside_before


# ---------------------------------------------------------------------------------------------------------
# Disk full


TMPFS_SIZE = "16m"
WAIT_LIMIT_S = 240  # a guard against a hung child, not a timing assertion


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Any:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(directory: Path) -> Path:
    """Write zeros into `directory` until its file system has no space left."""
    filler = directory / "filler"
    chunk = b"\0" * 65536
    with open(filler, "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(chunk)
        except OSError:
            pass
    with open(filler, "ab", buffering=0) as handle:  # the last partial block
        try:
            while True:
                handle.write(b"\0")
        except OSError:
            pass
    return filler


@pytest.mark.slow
def test_a_full_disk_stops_the_run_with_one_line_and_the_same_command_resumes_after_space_is_freed(
    harness_cli: HarnessCli, small_filesystem: Path, tmp_path: Path
) -> None:
    epochs = 4
    reference = harness_cli.invoke(*train_argv(harness_cli, tmp_path / "reference", epochs=epochs))
    assert reference.exit_code == 0, reference.stderr
    reference_dir = Path(reference.last_line)
    argv = train_argv(harness_cli, small_filesystem / "runs", epochs=epochs)
    run_dir = small_filesystem / "runs" / reference_dir.parent.name / reference_dir.name
    last = run_dir / "checkpoints" / "last.pt"

    process = harness_cli.spawn(*argv)
    deadline = time.monotonic() + WAIT_LIMIT_S
    while not last.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.002)
    # Held between the epoch-1 checkpoint and its next write while the disk fills up.
    process.send_signal(signal.SIGSTOP)
    time.sleep(0.2)  # let a rename in flight finish (the process is stopped: nothing else happens)
    checkpoint_before = last.read_bytes()
    filler = fill(small_filesystem)
    process.send_signal(signal.SIGCONT)
    stdout, stderr = process.communicate(timeout=WAIT_LIMIT_S)

    assert process.returncode == 1, stderr
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if "no space" in line]
    assert len(errors) == 1 and errors[0].startswith(f"error: {run_dir}/"), stderr
    assert "no space left on device" in errors[0]
    assert last.read_bytes() == checkpoint_before
    assert torch.load(last, weights_only=True)["step"] > 0
    # Written last, in place when the disk has no block for a new file.
    assert (run_dir / "status").read_text() == "failed\n", errors

    filler.unlink()
    resumed = harness_cli.run(*argv)
    assert resumed.exit_code == 0, resumed.stderr
    assert "resuming" in resumed.stderr
    assert_same_results(run_dir, reference_dir)
    assert sorted(run_dir.rglob("*.tmp")) == []

"""Issue 25: the W&B tool never loses data and never tracebacks on a damaged or foreign `.wandb` log.

Every log here is written by the test itself (framed as W&B frames it), so each case is exact: the exit
code, the one stderr line naming the file, and the log's bytes after a refused rewrite.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.cli.commands import app
from harness.store import wandb_offline

pb2 = pytest.importorskip("wandb.proto.wandb_internal_pb2")

HEADER = b":W&B" + bytes([0xE1, 0xBE, 0])


def _runner() -> CliRunner:
    try:
        return CliRunner(mix_stderr=False)
    except TypeError:  # click >= 8.2 keeps stderr apart already
        return CliRunner()


def _records(old_place: Path) -> list[bytes]:
    """A run record, 40 history rows, a mask artifact stored at `old_place`, and a final summary."""
    run = pb2.Record()
    run.run.run_id = "r1"
    run.run.project = "p"
    records = [run.SerializeToString()]
    for step in range(40):
        history = pb2.Record()
        item = history.history.item.add()
        item.key, item.value_json = "loss", json.dumps(1.0 / (step + 1))
        records.append(history.SerializeToString())
    artifact = pb2.Record()
    artifact.artifact.name = "masks-r1"
    artifact.artifact.metadata = json.dumps({wandb_offline.RUN_FILE_KEY: "masks/step_0.npz"})
    entry = artifact.artifact.manifest.contents.add()
    entry.path, entry.local_path = "step_0.npz", str(old_place)
    records.append(artifact.SerializeToString())
    summary = pb2.Record()
    item = summary.summary.update.add()
    item.key, item.value_json = "test_acc", "0.625"
    records.append(summary.SerializeToString())
    return records


def _moved_run(tmp_path: Path, records: list[bytes] | None = None) -> tuple[Path, Path]:
    """A run directory whose mask artifact still names the place it was moved from; (run dir, log)."""
    run_dir = tmp_path / "runs" / "r1"
    (run_dir / "masks").mkdir(parents=True)
    (run_dir / "masks" / "step_0.npz").write_bytes(b"mask bytes")
    folder = run_dir / "wandb" / "offline-run-20260101_000000-r1"
    folder.mkdir(parents=True)
    log = folder / "run-r1.wandb"
    wandb_offline.write_log(
        log, HEADER, _records(tmp_path / "gone" / "step_0.npz") if records is None else records
    )
    return run_dir, log


def _flip(log: Path, fraction: float) -> int:
    data = bytearray(log.read_bytes())
    where = int(len(data) * fraction)
    data[where] ^= 0xFF
    log.write_bytes(bytes(data))
    return where


def test_relocate_refuses_a_damaged_log_and_keeps_its_bytes(tmp_path: Path) -> None:
    run_dir, log = _moved_run(tmp_path)
    _flip(log, 0.8)
    before = log.read_bytes()
    scan = wandb_offline.scan_log(log)
    assert scan.damaged_at is not None and 0 < len(scan.records) < 43

    result = _runner().invoke(app, ["wandb", str(run_dir), "--relocate"])

    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == (
        f"error: {log}: damaged record at byte {scan.damaged_at} of {len(before)}; rewriting the log would "
        f"drop everything from there on ({len(before) - scan.damaged_at} bytes; {len(scan.records)} records, "
        f"{sum(map(len, scan.records))} bytes, read whole before it); nothing changed: --drop-damaged "
        "rewrites it without them\n"
    )
    assert log.read_bytes() == before
    assert sorted(path.name for path in log.parent.iterdir()) == [log.name]  # no temporary left


def test_relocate_with_drop_damaged_keeps_what_reads_whole(tmp_path: Path) -> None:
    records = _records(tmp_path / "gone" / "step_0.npz")
    run_dir, log = _moved_run(tmp_path, [records[0], records[41], *records[1:41], records[42]])
    _flip(log, 0.8)
    kept = wandb_offline.scan_log(log).records
    result = _runner().invoke(app, ["wandb", str(run_dir), "--relocate", "--drop-damaged"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith(f"relocated 1 artifact entries to {run_dir.resolve()}\n")
    after = wandb_offline.scan_log(log)
    assert after.damaged_at is None and len(after.records) == len(kept) and after.records[0] == kept[0]


def test_an_undamaged_moved_log_is_relocated_with_every_record(tmp_path: Path) -> None:
    run_dir, log = _moved_run(tmp_path)
    records = wandb_offline.scan_log(log).records
    assert wandb_offline.relocate(run_dir) == 1
    after = wandb_offline.scan_log(log)
    assert after.damaged_at is None and len(after.records) == len(records) == 43
    changed = [i for i, (a, b) in enumerate(zip(records, after.records, strict=True)) if a != b]
    assert changed == [41]  # only the artifact record
    run = wandb_offline.read_offline_run(log.parent)
    assert run.history_rows == 40 and run.summary == {"test_acc": 0.625}
    assert [payload.local_path for payload in run.payloads] == [(run_dir / "masks" / "step_0.npz").resolve()]


def test_drop_damaged_needs_relocate(tmp_path: Path) -> None:
    run_dir, log = _moved_run(tmp_path)
    result = _runner().invoke(app, ["wandb", str(run_dir), "--drop-damaged"])
    assert result.exit_code == 2
    assert result.stderr == "error: --drop-damaged: only with --relocate (it says what a rewrite may drop)\n"


def test_a_wandb_path_that_is_a_directory_is_one_line(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    (run_dir / "wandb" / "offline-run-x" / "run-x.wandb").mkdir(parents=True)
    for arguments in (["wandb", str(run_dir)], ["wandb", str(run_dir), "--relocate"]):
        result = _runner().invoke(app, arguments)
        assert result.exit_code == 2
        assert result.stderr == (
            f"error: {run_dir / 'wandb' / 'offline-run-x' / 'run-x.wandb'}: is a directory, not a W&B "
            "transaction log (.wandb)\n"
        )
        assert "Traceback" not in result.output


def test_a_crc_valid_record_that_is_not_a_wandb_record_is_one_line(tmp_path: Path) -> None:
    good = _records(tmp_path / "gone" / "step_0.npz")
    run_dir, log = _moved_run(tmp_path, [good[0], b"\xff\xff\xff", *good[1:]])
    before = log.read_bytes()
    for arguments in (["wandb", str(run_dir)], ["wandb", str(run_dir), "--relocate"]):
        result = _runner().invoke(app, arguments)
        assert result.exit_code == 2
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(
            f"error: {log}: record 1 (CRC valid) is not a W&B record ("
        ), result.stderr
        assert "Traceback" not in result.output
    assert log.read_bytes() == before


# ---------------------------------------------------------------------------------------------------------
# `harness runs --where` with a value no run can have


@pytest.fixture(scope="module")
def small_store(tmp_path_factory):
    import runstore_factory as factory

    spec = factory.StoreSpec(
        archs=("resnet20",), seeds=(0, 1), methods=("gmp",), sparsities=(0.95,), snapshot_seeds=()
    )
    return factory.build_store(tmp_path_factory.mktemp("runs"), spec, plasticity=False)


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("seed=abc", "error: --where: seed='abc' cannot match: seed holds finite numbers (ask for a missing value with none)\n"),
        ("sparsity=nan", "error: --where: sparsity='nan' cannot match: sparsity holds finite numbers (ask for a missing value with none)\n"),
        ("optim.epochs=inf", "error: --where: optim.epochs='inf' cannot match: optim.epochs holds finite numbers (ask for a missing value with none)\n"),
    ],
)  # fmt: skip
def test_a_where_value_a_numeric_column_cannot_hold_is_one_line(small_store, where, message) -> None:
    result = _runner().invoke(app, ["runs", str(small_store.root), "--where", where])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == message


def test_a_where_value_that_can_match_still_filters(small_store) -> None:
    result = _runner().invoke(app, ["runs", str(small_store.root), "--where", "seed=1", "--json"])
    assert result.exit_code == 0, result.stderr
    listed = json.loads(result.stdout)["runs"]
    assert listed and {row["seed"] for row in listed} == {1}
    nothing = _runner().invoke(app, ["runs", str(small_store.root), "--where", "method=set"])
    assert nothing.exit_code == 0 and nothing.stdout.startswith("0 runs")

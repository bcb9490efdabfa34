"""Readers of the run store survive damage: one warning naming the run and the file, the run listed as
`damaged` (or left out of analysis), everything else shown; never a traceback (issues 12 and 16).

Each kind of damage is applied to one run of a small generated store and read through the CLI
(`harness runs`, `harness figures`), `analysis.load_runs` and the sweep's completion check.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import runstore_factory as factory
from typer.testing import CliRunner

from analysis import load_curves, load_runs
from analysis.aggregate import comparison_table
from analysis.dynamics import mask_dynamics
from harness.cli import commands as cli
from harness.store import rundir

SPEC = factory.StoreSpec(
    archs=("resnet20",),
    seeds=(0, 1),
    methods=("granet",),
    sparsities=(0.9,),
    incomplete_runs=False,
    snapshot_seeds=(0,),
)


def _rewrite(name: str, content: bytes) -> Callable[[Path], Path]:
    def damage(run_dir: Path) -> Path:
        (run_dir / name).write_bytes(content)
        return run_dir / name

    return damage


def _truncate(name: str) -> Callable[[Path], Path]:
    def damage(run_dir: Path) -> Path:
        path = run_dir / name
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return path

    return damage


def _summary_without(*keys: str) -> Callable[[Path], Path]:
    def damage(run_dir: Path) -> Path:
        path = run_dir / "summary.json"
        summary = json.loads(path.read_text())
        for key in keys:
            del summary[key]
        path.write_text(json.dumps(summary))
        return path

    return damage


def _summary_is_a_directory(run_dir: Path) -> Path:
    path = run_dir / "summary.json"
    path.unlink()
    path.mkdir()
    return path


def _metrics_middle_line(content: bytes) -> Callable[[Path], Path]:
    def damage(run_dir: Path) -> Path:
        path = run_dir / "metrics.jsonl"
        lines = path.read_bytes().splitlines(keepends=True)
        lines[len(lines) // 2] = content + b"\n"
        path.write_bytes(b"".join(lines))
        return path

    return damage


def _last_snapshot(change: Callable[[bytes], bytes]) -> Callable[[Path], Path]:
    def damage(run_dir: Path) -> Path:
        path = rundir.mask_snapshots(run_dir)[-1]
        path.write_bytes(change(path.read_bytes()))
        return path

    return damage


# Damage that makes the run unreadable as a row: listed `damaged` by `harness runs`, left out of figures.
ROW_DAMAGE: dict[str, Callable[[Path], Path]] = {
    "config-invalid-yaml": _rewrite("config.yaml", b"model: {arch: resnet20\nsparsity: [0.9\n"),
    "config-a-list": _rewrite("config.yaml", b"- model\n- sparsity\n"),
    "config-python-tag": _rewrite("config.yaml", b"model: !!python/object/apply:os.system ['touch PWNED']\n"),
    "config-not-utf8": _rewrite("config.yaml", b"model:\n  arch: \xff\xfe\x00resnet\n"),
    "config-section-scalar": _rewrite("config.yaml", b"model: 3\ntracking: {job_type: train}\n"),
    "summary-garbage": _rewrite("summary.json", b"\x13garbage{{ not json"),
    "summary-truncated": _truncate("summary.json"),
    "summary-a-list": _rewrite("summary.json", b"[0.9, 0.8]\n"),
    "summary-missing-keys": _summary_without("seed", "method"),
    "summary-a-directory": _summary_is_a_directory,
    "status-binary": _rewrite("status", b"\x00\x9f\xff\xfe\x01"),
    "status-unknown-word": _rewrite("status", b"finished\n"),
}
# Damage inside files that only some readers open: metrics lines and mask snapshots.
CONTENT_DAMAGE: dict[str, Callable[[Path], Path]] = {
    "metrics-not-utf8-line": _metrics_middle_line(b'{"kind": "train", "step": 3, "x": "\xff\xfe"}'),
    "metrics-garbage-line": _metrics_middle_line(b"NaN garbage"),
    "snapshot-truncated": _last_snapshot(lambda data: data[: len(data) // 2]),
    "snapshot-not-a-zip": _last_snapshot(lambda data: b"not a zip file at all" * 10),
}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> factory.Store:
    return factory.build_store(tmp_path_factory.mktemp("pristine"), SPEC, plasticity=False)


def damaged_copy(pristine: factory.Store, root: Path, damage: Callable[[Path], Path]) -> tuple[Path, Path]:
    """A copy of the store with `damage` applied to the GraNet seed-0 run (the training-dynamics run)."""
    shutil.copytree(pristine.root, root)
    target = next(
        root / path.relative_to(pristine.root)
        for path in pristine.run_dirs
        if path.name.startswith("granet-") and "-s0-" in path.name
    )
    return target, damage(target)


def warnings_about(caplog: pytest.LogCaptureFixture, run_dir: Path, damaged: Path) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.levelno >= logging.WARNING
        and run_dir.name in record.getMessage()
        and damaged.name in record.getMessage()
    ]


def harness(*argv: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli.app, list(argv))
    # An unexpected exception would be a traceback for the user.
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize("kind", list(ROW_DAMAGE))
def test_a_damaged_run_is_listed_damaged_with_one_warning_and_the_others_are_shown(
    kind: str, pristine: factory.Store, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "runs"
    run_dir, damaged = damaged_copy(pristine, root, ROW_DAMAGE[kind])
    caplog.set_level(logging.WARNING)

    code, stdout, stderr = harness("runs", str(root), "--json")
    assert code == 0, stderr
    assert "Traceback" not in stdout + stderr
    listing = {run["run_key"]: run["status"] for run in json.loads(stdout)["runs"]}
    assert len(listing) == len(pristine.run_dirs)
    damaged_key = f"{run_dir.parent.name}/{run_dir.name}"
    assert listing.pop(damaged_key) == "damaged"
    assert set(listing.values()) == {"completed"}
    assert len(warnings_about(caplog, run_dir, damaged)) == 1

    # Analysis leaves the run out, with one warning; the sweep planner does not count it as done.
    caplog.clear()
    runs = load_runs(root)
    assert damaged_key not in set(runs["run_key"]) and len(runs) == len(pristine.run_dirs) - 1
    assert len(warnings_about(caplog, run_dir, damaged)) == 1
    assert not rundir.is_completed(run_dir) and rundir.is_completed(next(p for p in root.rglob("dense-*")))
    assert not (tmp_path / "PWNED").exists()  # the !!python/object tag built nothing


def test_harness_figures_skips_every_kind_of_damaged_run_with_one_warning_each(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch
) -> None:
    """One store, one `harness figures` call: GraNet seeds 1..12 each damaged one way, a non-UTF-8
    metrics line in the training-dynamics run (GraNet seed 0), and a NaN test accuracy in one dense run."""
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "runs"
    spec = factory.StoreSpec(**{**SPEC.__dict__, "seeds": tuple(range(len(ROW_DAMAGE) + 1))})
    store = factory.build_store(root, spec, plasticity=False)
    by_method_seed = {
        (path.name.split("-")[0], int(path.name.split("-s")[1].split("-")[0])): path
        for path in store.run_dirs
    }
    damaged = {
        by_method_seed["granet", seed]: damage(by_method_seed["granet", seed])
        for seed, damage in enumerate(ROW_DAMAGE.values(), start=1)
    }
    dynamics_run = by_method_seed["granet", 0]
    damaged[dynamics_run] = CONTENT_DAMAGE["metrics-not-utf8-line"](dynamics_run)
    summary_path = by_method_seed["dense", 1] / "summary.json"
    summary = json.loads(summary_path.read_text())
    summary["test_acc"] = math.nan
    # What a writer without allow_nan=False leaves: a bare NaN, which Python's json reads as a float.
    summary_path.write_text(json.dumps(summary))
    assert '"test_acc": NaN' in summary_path.read_text()
    caplog.set_level(logging.WARNING)

    code, stdout, stderr = harness("figures", str(root), "--out", str(tmp_path / "figures"))
    assert code == 0, stderr
    assert "Traceback" not in stdout + stderr
    for run_dir, path in damaged.items():
        assert len(warnings_about(caplog, run_dir, path)) == 1, run_dir.name
    assert "skipped training_dynamics:" in stdout and "wrote accuracy_vs_sparsity" in stdout
    index = (tmp_path / "figures" / "index.md").read_text()
    # 13 dense runs and the one GraNet run whose only damage is in its metrics lines.
    assert f"From {len(spec.seeds) + 1} runs (" in index
    table = (tmp_path / "figures" / "comparison_table.md").read_text().splitlines()
    granet_row = next(line for line in table if "| granet |" in line)
    dense_row = next(line for line in table if "| dense |" in line)
    assert "| 1 |" in granet_row
    # The NaN is a missing value: 12 seeds counted, not 13.
    assert f"| {len(spec.seeds) - 1} |" in dense_row


def test_a_truncated_mask_snapshot_of_the_dynamics_run_skips_that_figure_only(
    pristine: factory.Store, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "runs"
    run_dir, damaged = damaged_copy(pristine, root, CONTENT_DAMAGE["snapshot-truncated"])
    caplog.set_level(logging.WARNING)

    code, stdout, stderr = harness("runs", str(root), "--json")
    assert code == 0 and "Traceback" not in stdout + stderr
    listed = json.loads(stdout)["runs"]
    assert len(listed) == len(pristine.run_dirs)
    assert {run["status"] for run in listed} == {"completed"}  # listing reads no snapshots

    code, stdout, stderr = harness("figures", str(root), "--out", str(tmp_path / "figures"))
    assert code == 0, stderr
    assert "Traceback" not in stdout + stderr
    assert len(warnings_about(caplog, run_dir, damaged)) == 1
    assert f"skipped training_dynamics: run compare/{run_dir.name} is damaged: {damaged}" in stdout
    assert "wrote accuracy_vs_sparsity" in stdout
    assert f"From {len(pristine.run_dirs)} runs (" in (tmp_path / "figures" / "index.md").read_text()


@pytest.mark.parametrize("kind", ["metrics-not-utf8-line", "metrics-garbage-line"])
def test_a_damaged_metrics_line_leaves_only_that_runs_curves_out(
    kind: str, pristine: factory.Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "runs"
    run_dir, damaged = damaged_copy(pristine, root, CONTENT_DAMAGE[kind])
    runs = load_runs(root)
    caplog.set_level(logging.WARNING)
    curves = load_curves(runs, "epoch")
    damaged_key = f"{run_dir.parent.name}/{run_dir.name}"
    assert set(curves["run_key"]) == set(runs["run_key"]) - {damaged_key}
    assert (curves.groupby("run_key").size() == SPEC.compare_epochs).all()
    assert len(warnings_about(caplog, run_dir, damaged)) == 1


@pytest.mark.parametrize("kind", ["snapshot-truncated", "snapshot-not-a-zip"])
def test_a_damaged_snapshot_is_a_damaged_file_naming_it(
    kind: str, pristine: factory.Store, tmp_path: Path
) -> None:
    run_dir, damaged = damaged_copy(pristine, tmp_path / "runs", CONTENT_DAMAGE[kind])
    with pytest.raises(rundir.DamagedFile, match=f"^{damaged}: mask snapshot is truncated or not a zip"):
        mask_dynamics(run_dir)


def test_non_finite_summary_values_are_missing_and_n_counts_only_finite_ones(
    pristine: factory.Store, tmp_path: Path
) -> None:
    root = tmp_path / "runs"
    shutil.copytree(pristine.root, root)
    first, second = sorted(path for path in root.rglob("granet-*") if path.is_dir())
    accuracy = json.loads((second / "summary.json").read_text())["test_acc"]
    for literal, key in (("NaN", "test_acc"), ("Infinity", "density")):
        summary = json.loads((first / "summary.json").read_text())
        summary[key] = float(literal.lower().replace("infinity", "inf"))
        (first / "summary.json").write_text(json.dumps(summary))
    runs = load_runs(root)
    row = runs[runs["run_id"] == first.name].iloc[0]
    assert math.isnan(row["test_acc"]) and math.isnan(row["density"]) and row["status"] == "completed"
    table = comparison_table(runs).set_index("method")
    assert table.loc["granet", "n"] == 1
    assert table.loc["granet", "test_acc_mean"] == pytest.approx(accuracy)
    assert math.isnan(table.loc["granet", "test_acc_std"])
    assert table.loc["dense", "n"] == 2


def test_load_runs_status_filter_knows_damaged(pristine: factory.Store, tmp_path: Path) -> None:
    root = tmp_path / "runs"
    run_dir, _ = damaged_copy(pristine, root, ROW_DAMAGE["status-binary"])
    damaged = load_runs(root, status="damaged")
    assert list(damaged["run_id"]) == [run_dir.name]
    assert isinstance(load_runs(root, status=None), pd.DataFrame)

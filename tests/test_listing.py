"""`harness runs`: columns that tell runs apart, filters, the count line and JSON, on a generated store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import runstore_factory as factory
from typer.testing import CliRunner

from analysis import listing
from harness.cli.commands import app

SPEC = factory.StoreSpec(
    archs=("resnet20",),
    seeds=(0, 1),
    methods=("gmp", "granet", "granet-0.5", "rigl"),
    sparsities=(0.95,),
    snapshot_seeds=(),
)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> factory.Store:
    return factory.build_store(tmp_path_factory.mktemp("runs"), SPEC, plasticity=False)


def _invoke(*args: str):
    result = CliRunner().invoke(app, ["runs", *args])
    return result


def _epochs_done(run_dir: Path) -> int:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return int(max(line["epoch"] for line in lines if line["kind"] == "epoch"))


def test_json_has_the_columns_that_tell_runs_apart(store):
    result = _invoke(str(store.root), "--json")
    assert result.exit_code == 0, result.output
    listed = json.loads(result.output)
    assert listed["count"] == 12 and listed["statuses"] == {"completed": 10, "failed": 1, "running": 1}
    rows = {(row["method"], row["init_sparsity"], row["seed"], row["status"]): row for row in listed["runs"]}
    # The two GraNet runs at 95% differ in s_i; RigL and dense have no s_i of their own.
    granet = rows[("granet", 0.0, 0, "completed")]
    assert rows[("granet", 0.5, 0, "completed")]["run_key"] != granet["run_key"]
    assert ("rigl", None, 1, "completed") in rows and ("dense", None, 0, "completed") in rows
    assert granet["sparsity"] == 0.95 and rows[("dense", None, 0, "completed")]["sparsity"] == 0.0
    assert (granet["arch"], granet["dataset"], granet["epochs_done"], granet["epochs_total"]) == (
        "resnet20", "mnist1d", 10, 10,
    )  # fmt: skip
    assert granet["test_acc"] == factory.compare_test_acc("resnet20", "granet", 0.95, 0)
    summary = json.loads((Path(granet["run_dir"]) / "summary.json").read_text())
    assert granet["test_acc_at_best_val"] == summary["test_acc_at_best_val"]
    assert granet["wall_time_s"] == summary["wall_time_s"]
    # A running run has no summary: method, seed and epochs come from its config and metrics lines.
    running = rows[("gmp", 0.0, 8, "running")]
    done = _epochs_done(Path(running["run_dir"]))
    assert 0 < done < 10
    assert (running["epochs_done"], running["epochs_total"], running["sparsity"]) == (done, 10, 0.9)
    assert running["test_acc"] is None and running["wall_time_s"] is None


def test_text_table_filters_and_count_line(store):
    result = _invoke(str(store.root), "--where", "method=granet", "--where", "s_i=0.5")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == [
        "run", "method", "arch", "dataset", "sparsity", "s_i", "seed", "status", "epochs", "test", "acc",
        "best-val", "test", "acc", "wall",
    ]  # fmt: skip
    assert len(lines) == 4 and lines[-1] == "2 runs: 2 completed"
    for seed, line in enumerate(lines[1:3]):
        cells = line.split()
        acc = factory.compare_test_acc("resnet20", "granet-0.5", 0.95, seed)
        assert cells[1:9] == ["granet", "resnet20", "mnist1d", "0.95", "0.5", str(seed), "completed", "10/10"]
        assert cells[9] == f"{acc:.4f}"

    running = _invoke(str(store.root), "--where", "status=running").output.splitlines()
    assert running[-1] == "1 run: 1 running"
    cells = running[1].split()
    assert cells[1] == "gmp" and cells[6:9] == ["8", "running", f"{_epochs_done_from_table(store)}/10"]
    assert cells[9:] == ["-", "-", "-"]  # no test acc, no best-val test acc, no wall time yet
    assert "NaN" not in result.output and "nan" not in running[1]

    # Any load_runs column works as a key too; values compare as numbers where the column is numeric.
    epochs = _invoke(str(store.root), "--where", "optim.epochs=10.0", "--where", "seed=1").output
    assert epochs.splitlines()[-1] == "5 runs: 5 completed"
    nothing = _invoke(str(store.root), "--where", "method=set").output
    assert nothing.strip() == "0 runs"


def _epochs_done_from_table(store) -> int:
    (running,) = [path for path in store.run_dirs if (path / "status").read_text().strip() == "running"]
    return _epochs_done(running)


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("method", "error: --where: 'method' is not key=value (e.g. method=granet)"),
        ("colour=red", "error: --where: unknown key 'colour'; use one of "),
    ],
)
def test_bad_filters_are_one_line_errors(store, where, message):
    result = _invoke(str(store.root), "--where", where)
    assert result.exit_code == 2
    assert result.output.startswith(message) and result.output.count("\n") == 1


def test_wall_time_is_readable():
    assert [listing._duration(seconds) for seconds in (17.4, 550, 3 * 3600 + 125, None)] == [
        "17s", "9m10s", "3h02m", "-",
    ]  # fmt: skip

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
    nothing = _invoke(str(store.root), "--where", "method=set")
    assert nothing.stdout.strip() == "0 runs"
    assert nothing.stderr == (
        "note: --where method=set: no run has this method; (method here: dense, gmp, granet, rigl)\n"
    )


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


def test_names_match_whatever_their_case_and_a_typo_gets_a_did_you_mean(store):
    upper = _invoke(
        str(store.root), "--where", "method=GraNet", "--where", "arch=ResNet20", "--format", "csv"
    )
    lower = _invoke(str(store.root), "--where", "method=granet", "--format", "csv")
    assert upper.exit_code == 0 and upper.stderr == ""
    assert upper.stdout == lower.stdout and len(upper.stdout.splitlines()) == 1 + 4  # header, 2 s_i x 2 seeds
    typo = _invoke(str(store.root), "--where", "method=GraNets")
    assert typo.exit_code == 0 and typo.stdout.strip() == "0 runs"
    assert typo.stderr.startswith(
        "note: --where method=GraNets: no run has this method; did you mean granet?"
    )


PROBES = factory.one_probe_spec()


@pytest.fixture(scope="module")
def probe_store(tmp_path_factory: pytest.TempPathFactory) -> factory.Store:
    return factory.build_store(tmp_path_factory.mktemp("probes"), PROBES, compare=False)


def test_probes_and_controls_show_what_they_measured(probe_store):
    listed = json.loads(_invoke(str(probe_store.root), "--format", "json").stdout)["runs"]
    by_method = {}
    for row in listed:
        by_method.setdefault(row["method"], []).append(row)
    assert sorted(by_method) == ["control", "dense", "probe"]  # not the base's "dense"
    (control,) = by_method["control"]
    off, on = sorted(by_method["probe"], key=lambda row: row["regeneration"])
    summary = json.loads((Path(off["run_dir"]) / "summary.json").read_text())
    expected = {
        key: summary[key] for key in ("acc_pre", "acc_post", "acc_continue", "acc_control", "plasticity")
    }
    assert {key: off[key] for key in expected} == expected
    assert (off["criterion"], off["pruning_rate"], off["regeneration"], off["probe_epoch"]) == (
        "global",
        0.5,
        False,
        8,
    )
    assert on["regeneration"] is True and off["sparsity"] is None and control["pruning_rate"] == 0.0
    (base,) = by_method["dense"]
    assert base["sparsity"] == 0.0 and base["criterion"] is None and base["acc_pre"] is None

    lines = _invoke(str(probe_store.root), "--where", "regen=on").stdout.splitlines()
    assert lines[0].split()[:13] == [
        "run", "method", "arch", "dataset", "sparsity", "s_i", "seed", "criterion", "rate", "regen", "probe",
        "epoch", "acc_pre",
    ]  # fmt: skip
    assert lines[1].split()[1:16] == [
        "probe", "resnet20", "mnist1d", "-", "-", "0", "global", "0.5", "on", "8",
        f"{on['acc_pre']:.4f}", f"{on['acc_post']:.4f}", f"{on['acc_continue']:.4f}",
        f"{on['acc_control']:.4f}", f"{on['plasticity']:+.4f}",
    ]  # fmt: skip
    assert lines[-1] == "1 run: 1 completed"


def test_formats_and_columns(probe_store):
    root = str(probe_store.root)
    markdown = _invoke(
        root, "--format", "markdown", "--columns", "method,rate,regen,plasticity", "--where", "job_type=probe"
    )
    assert markdown.exit_code == 0
    rows = sorted(json.loads(_invoke(root, "--json", "--where", "job_type=probe").stdout)["runs"],
                  key=lambda row: row["regeneration"])  # fmt: skip
    assert markdown.stdout.splitlines() == [
        "| method | rate | regen | plasticity |",
        "|---|---:|---|---:|",
        *sorted(
            f"| probe | 0.5 | {'on' if row['regeneration'] else 'off'} | {row['plasticity']:+.4f} |"
            for row in rows
        ),
        "",
        "2 runs: 2 completed",
    ]
    csv = _invoke(root, "--format", "csv", "--columns", "run,epochs,plasticity", "--where", "method=control")
    (control,) = json.loads(_invoke(root, "--json", "--where", "method=control").stdout)["runs"]
    assert csv.stdout.splitlines() == [
        "run_key,epochs_done,epochs_total,plasticity",
        f"{control['run_key']},12,12,{control['plasticity']}",
    ]
    narrow = json.loads(_invoke(root, "--format", "json", "--columns", "run,plasticity").stdout)
    assert [sorted(row) for row in narrow["runs"]] == [["plasticity", "run_key"]] * 4 and narrow["count"] == 4


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            ("--format", "xml"),
            "error: --format: 'xml' is not a format; use one of table, markdown, csv, json\n",
        ),
        (
            ("--json", "--format", "csv"),
            "error: --json: is --format json; drop one of --json and --format csv\n",
        ),
    ],
)
def test_bad_formats_are_one_line_errors(probe_store, options, message):
    result = _invoke(str(probe_store.root), *options)
    assert (result.exit_code, result.stdout, result.stderr) == (2, "", message)


def test_a_bad_column_is_one_line_with_a_suggestion(probe_store):
    result = _invoke(str(probe_store.root), "--columns", "run,meth")
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.startswith(
        "error: --columns: unknown column 'meth'; did you mean method? use any of run_key,"
    )
    assert result.stderr.count("\n") == 1

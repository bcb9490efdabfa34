"""`harness sweep --only name=value`: the grid is cut before planning, for --dry-run and real runs alike."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.cli.commands import app
from harness.errors import UserError
from harness.launch import sweep, sweep_file, sweep_plan

REPO = Path(__file__).resolve().parents[1]
GRANET_MNIST1D = REPO / "sweeps" / "granet-mnist1d.yaml"


def _planned(only: list[str], runs_dir: Path) -> list[sweep_plan.Job]:
    chosen = sweep_file.restrict(sweep_file.load_sweep(GRANET_MNIST1D), only)
    return sweep_plan.plan_jobs(chosen, runs_dir=runs_dir)


def test_only_cuts_the_grid_before_planning(tmp_path):
    full = sweep_file.load_sweep(GRANET_MNIST1D)
    chosen = sweep_file.restrict(full, ["seed=0", "final_sparsity=0.95"])
    assert chosen.parameters["seed"] == (0,) and chosen.parameters["final_sparsity"] == (0.95,)
    assert chosen.parameters["method"] == full.parameters["method"]
    methods = len(full.parameters["method"])
    assert len(sweep_file.grid_points(chosen)) == methods * 2  # methods x init_sparsity
    jobs = _planned(["seed=0", "final_sparsity=0.95"], tmp_path)
    # dense ignores sparsity and init_sparsity (one run); gmp and granet read s_i (2 runs each); every
    # other method fixes its own s_i (1 run each).
    assert len(jobs) == 1 + 2 * 2 + (methods - 3)
    names = [job.run_dir.name for job in jobs]
    assert all("-s0-" in name for name in names)
    everything = sweep_plan.plan_jobs(full, runs_dir=tmp_path)
    assert {job.run_dir for job in jobs} <= {job.run_dir for job in everything}


def test_one_name_given_twice_keeps_both_values_in_file_order(tmp_path):
    chosen = sweep_file.restrict(sweep_file.load_sweep(GRANET_MNIST1D), ["method=granet", "seed=2", "seed=0"])
    assert chosen.parameters["seed"] == (0, 2) and chosen.parameters["method"] == ("granet",)
    # Numbers compare as numbers: 0.90 is the file's 0.9.
    assert sweep_file.restrict(chosen, ["final_sparsity=0.90"]).parameters["final_sparsity"] == (0.9,)


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("seed", "--only: 'seed' is not name=value (e.g. seed=0)"),
        ("colour=red", f"--only: 'colour' is not a parameter of {GRANET_MNIST1D}; parameters: dataset, arch, "
         "method, final_sparsity, init_sparsity, seed"),
        ("seed=7", f"--only: seed=7 is not in the grid of {GRANET_MNIST1D}; seed takes 0, 1, 2"),
    ],
)  # fmt: skip
def test_bad_selections_name_the_parameter_and_what_is_allowed(item, message):
    with pytest.raises(UserError) as raised:
        sweep_file.restrict(sweep_file.load_sweep(GRANET_MNIST1D), [item])
    assert str(raised.value) == message


def test_dry_run_lists_only_the_selection(tmp_path):
    out = io.StringIO()
    code = sweep.run_sweep(
        GRANET_MNIST1D, runs_dir=tmp_path, dry_run=True, out=out, only=["seed=1", "method=rigl"]
    )
    assert code == 0
    lines = out.getvalue().splitlines()
    assert lines[0] == "sweep granet-mnist1d: 6 grid points -> 3 runs (0 already complete)"
    to_run = [line.split()[-1] for line in lines if line.startswith("  to run")]
    assert len(to_run) == 3 and all(
        Path(path).name.startswith("rigl-resnet20-mnist1d-s1-") for path in to_run
    )
    assert not tmp_path.joinpath("default").exists()  # a dry run creates nothing


def test_the_cli_passes_only_and_reports_a_bad_one_in_one_line(tmp_path):
    runner = CliRunner()
    shown = runner.invoke(
        app, ["sweep", "run", str(GRANET_MNIST1D), "--dry-run", "--runs-dir", str(tmp_path), "--only", "seed=2",
              "--only", "method=dense"],
    )  # fmt: skip
    assert shown.exit_code == 0, shown.output
    assert (
        shown.output.splitlines()[0] == "sweep granet-mnist1d: 6 grid points -> 1 runs (0 already complete)"
    )
    bad = runner.invoke(app, ["sweep", "run", str(GRANET_MNIST1D), "--dry-run", "--only", "seed=9"])
    assert bad.exit_code == 2
    assert bad.output == f"error: --only: seed=9 is not in the grid of {GRANET_MNIST1D}; seed takes 0, 1, 2\n"

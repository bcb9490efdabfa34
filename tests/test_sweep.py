"""`harness sweep`: W&B-format grid files, the agent's command line, planning, scheduling and real runs.

Fast tests drive the scheduler with fake processes; the two slow ones run real (synthetic-data) runs in
child processes: a failing run among good ones, and SIGKILL of the runner followed by a re-run.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from analysis import collapse
from harness.cli import commands as cli
from harness.errors import UserError
from harness.launch import planning, supervisor, sweep, sweep_agent, sweep_file, sweep_plan
from harness.launch.supervisor import ALREADY, BLOCKED, COMPLETED, FAILED, STOPPED, Outcome
from harness.launch.sweep_plan import Job
from harness.store import rundir

REPO = Path(__file__).resolve().parents[1]
SWEEPS = REPO / "sweeps"
PLASTICITY_COMMAND = ["${env}", "${program}", "plasticity", "${args_no_boolean_flags}"]
RUN_COMMAND = ["${env}", "${program}", "run", "${args_no_boolean_flags}"]


def write_sweep(directory: Path, parameters: dict, *, command=None, name="tiny", **top) -> Path:
    data = {"program": "harness", "method": "grid", "parameters": parameters, **top}
    if command is not None:
        data["command"] = command
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def synthetic_plasticity(directory: Path, **extra) -> Path:
    """2 rates x 2 regeneration settings: 1 base, 1 control, 4 probes."""
    parameters = {
        "dataset": {"value": "synthetic"},
        "wandb": {"value": "disabled"},
        "probe_epoch": {"value": 1},
        "pruning_rate": {"values": [0.5, 0.9]},
        "regeneration": {"values": [False, True]},
        **extra,
    }
    return write_sweep(directory, parameters, command=PLASTICITY_COMMAND)


# ---------------------------------------------------------------------------------------------------------
# The sweep file and the grid


def test_grid_is_the_cross_product_in_file_order_first_parameter_slowest(tmp_path):
    path = write_sweep(
        tmp_path,
        {"a": {"values": [1, 2]}, "b": {"value": "x"}, "c": {"values": [True, False, None]}},
    )
    loaded = sweep_file.load_sweep(path)
    assert loaded.name == "tiny"
    assert loaded.command == sweep_file.DEFAULT_COMMAND  # W&B's default when `command` is absent
    assert sweep_file.grid_points(loaded) == [
        {"a": 1, "b": "x", "c": True},
        {"a": 1, "b": "x", "c": False},
        {"a": 1, "b": "x", "c": None},
        {"a": 2, "b": "x", "c": True},
        {"a": 2, "b": "x", "c": False},
        {"a": 2, "b": "x", "c": None},
    ]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("method: random\nparameters: {a: {values: [1]}}\n", "method: only 'grid'"),
        ("method: grid\n", "parameters: expected a mapping"),
        ("method: grid\nparameters: {lr: {min: 0.1, max: 1}}\n", "parameters.lr: min: grid search needs"),
        ("method: grid\nparameters: {lr: {distribution: uniform}}\n", "parameters.lr: distribution:"),
        ("method: grid\nparameters: {lr: {value: 1, values: [2]}}\n", "parameters.lr: give exactly one"),
        ("method: grid\nparameters: {lr: {}}\n", "parameters.lr: give exactly one"),
        (
            "method: grid\nparameters: {lr: {values: []}}\n",
            "parameters.lr: values: expected a non-empty list",
        ),
        ("method: grid\nparameters: {lr: 0.1}\n", "parameters.lr: expected a mapping"),
        ("method: grid\nparameters: {opt: {parameters: {lr: {value: 1}}}}\n", "parameters.opt: nested"),
        ("method: grid\nparamters: {a: {value: 1}}\n", "paramters: not a W&B sweep key"),
        (
            "method: grid\ncommand: harness run\nparameters: {a: {value: 1}}\n",
            "command: expected a non-empty list",
        ),
        ("method: grid\nprogram: [harness]\nparameters: {a: {value: 1}}\n", "program: expected a string"),
        ("- just\n- a list\n", "expected a mapping with program"),
        ("method: grid\nparameters: {a: [\n", "not valid YAML"),
    ],
)
def test_bad_sweep_files_name_the_file_and_the_field(tmp_path, content, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(UserError) as raised:
        sweep_file.load_sweep(path)
    message = str(raised.value)
    assert message.startswith(f"{path}: ")
    assert expected in message
    assert "\n" not in message


def test_a_missing_sweep_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match=r"missing\.yaml: cannot read the sweep file"):
        sweep_file.load_sweep(tmp_path / "missing.yaml")


# ---------------------------------------------------------------------------------------------------------
# The command line `wandb agent` builds


POINT = {"arch": "resnet20", "pruning_rate": 0.9, "probe_epoch": 10, "regeneration": True, "fast": False}


def test_argument_macros_render_parameters_as_the_agent_does():
    macros = sweep_agent.argument_macros(POINT)
    assert macros["args"] == [
        "--arch=resnet20",
        "--pruning_rate=0.9",
        "--probe_epoch=10",
        "--regeneration=True",
        "--fast=False",
    ]
    # True booleans become bare flags, false ones disappear: what a --flag/--no-flag CLI needs.
    assert macros["args_no_boolean_flags"] == [
        "--arch=resnet20",
        "--pruning_rate=0.9",
        "--probe_epoch=10",
        "--regeneration",
    ]
    assert macros["args_no_hyphens"] == [
        "arch=resnet20",
        "pruning_rate=0.9",
        "probe_epoch=10",
        "regeneration=True",
        "fast=False",
    ]
    assert macros["args_no_equals"][:4] == ["--arch", "resnet20", "--pruning_rate", "0.9"]
    assert json.loads(macros["args_json"][0]) == POINT


def test_agent_command_expands_env_interpreter_program_and_envvar(tmp_path):
    path = write_sweep(
        tmp_path,
        {"arch": {"value": "vgg19"}, "regeneration": {"value": False}},
        command=[
            "${env}",
            "${interpreter}",
            "${program}",
            "--tag=${envvar:TAG}-x",
            "${args}",
            "${args_json_file}",
        ],
        program="train.py",
    )
    loaded = sweep_file.load_sweep(path)
    point = sweep_file.grid_points(loaded)[0]
    argv = sweep_agent.agent_command(loaded, point, environ={"TAG": "t7"}, json_dir=tmp_path / "json")
    assert argv[:6] == [
        "/usr/bin/env",
        "python",
        "train.py",
        "--tag=t7-x",
        "--arch=vgg19",
        "--regeneration=False",
    ]
    assert json.loads(Path(argv[6]).read_text()) == {"arch": "vgg19", "regeneration": False}
    # An unset variable is replaced by its own name, as the agent does.
    assert sweep_agent.agent_command(loaded, point, environ={}, json_dir=tmp_path)[3] == "--tag=TAG-x"


def test_unknown_macros_and_a_missing_program_are_user_errors(tmp_path):
    unknown = sweep_file.load_sweep(
        write_sweep(tmp_path, {"a": {"value": 1}}, command=["${program}", "${argz}"])
    )
    with pytest.raises(UserError, match=r"command: unknown macro \$\{argz\}"):
        sweep_agent.agent_command(unknown, {"a": 1})
    path = tmp_path / "noprogram.yaml"
    path.write_text("method: grid\nparameters: {a: {value: 1}}\n")
    with pytest.raises(UserError, match=r"noprogram\.yaml: program: missing"):
        sweep_agent.agent_command(sweep_file.load_sweep(path), {"a": 1})


def test_harness_argv_finds_the_cli_after_env_and_its_assignments():
    found = sweep_agent.harness_argv(["/usr/bin/env", "A=1", "harness", "run", "--seed=1"], Path("s.yaml"))
    assert found.argv == ["run", "--seed=1"]
    assert found.env == {"A": "1"}
    found = sweep_agent.harness_argv(["python3", "-m", "harness.cli", "plasticity", "--x=1"], Path("s.yaml"))
    assert found.argv == ["plasticity", "--x=1"]
    assert sweep_agent.harness_argv(["/venv/bin/harness", "run"], Path("s.yaml")).argv == ["run"]
    with pytest.raises(UserError, match=r"s\.yaml: command: expected the harness CLI"):
        sweep_agent.harness_argv(["/usr/bin/env", "python", "train.py", "--lr=1"], Path("s.yaml"))


def dry_run(argv: list[str], runs: int) -> tuple[dict, list[str]]:
    """`harness <argv> --dry-run`: the last run's resolved config and the `runs` run directories printed."""
    result = CliRunner().invoke(cli.app, [*argv, "--dry-run"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    return yaml.safe_load("\n".join(lines[:-runs])), lines[-runs:]


def count_line(state: str, count: int) -> str:
    width = max(len(name) for name in supervisor.STATES)
    return f"  {state:<{width}}  {count:>5}"


@pytest.mark.parametrize("regeneration", [True, False])
def test_wandb_command_line_round_trip_lands_in_the_probe_config(tmp_path, regeneration):
    """The argv the agent builds from a sweep file resolves, through the real CLI, to the intended configs."""
    path = write_sweep(
        tmp_path,
        {
            "dataset": {"value": "synthetic"},
            "probe_epoch": {"value": 1},
            "pruning_rate": {"value": 0.7},
            "criterion": {"value": "layerwise"},
            "regeneration": {"value": regeneration},
            "seed": {"value": 3},
        },
        command=PLASTICITY_COMMAND,
    )
    loaded = sweep_file.load_sweep(path)
    [point] = sweep_file.grid_points(loaded)
    command = sweep_agent.agent_command(loaded, point)
    expected_flags = ["--dataset=synthetic", "--probe_epoch=1", "--pruning_rate=0.7", "--criterion=layerwise"]
    expected_flags += ["--regeneration"] if regeneration else []
    assert command == ["/usr/bin/env", "harness", "plasticity", *expected_flags, "--seed=3"]

    argv = sweep_agent.harness_argv(command, path).argv
    config, printed_dirs = dry_run(argv, runs=3)
    probe = config["plasticity"]
    assert probe["pruning_rate"] == 0.7
    assert probe["criterion"] == "layerwise"
    assert probe["probe_epoch"] == 1
    assert probe["regeneration"] is regeneration  # an omitted false flag is the CLI's --no-regeneration
    assert config["run"]["seed"] == 3
    assert config["tracking"]["job_type"] == "probe"

    planned = planning.plan_invocation(argv)
    assert [str(run.run_dir) for run in planned] == printed_dirs
    assert [run.run_dir.name.split("-")[0] for run in planned] == ["dense", "control", "probe"]
    assert ("-regen-" in planned[-1].run_dir.name) is regeneration


def test_dashed_and_underscored_parameter_names_plan_the_same_runs():
    underscored = planning.plan_invocation(
        ["plasticity", "--dataset=synthetic", "--probe_epoch=1", "--pruning_rate=0.5"]
    )
    dashed = planning.plan_invocation(
        ["plasticity", "--dataset=synthetic", "--probe-epoch=1", "--pruning-rate=0.5"]
    )
    assert [run.run_dir for run in underscored] == [run.run_dir for run in dashed]


def test_a_granet_grid_point_resolves_to_the_method_and_its_sparsities(tmp_path):
    path = write_sweep(
        tmp_path,
        {
            "dataset": {"value": "synthetic"},
            "method": {"value": "granet"},
            "sparsity": {"value": 0.95},
            "init_sparsity": {"value": 0.5},
        },
        command=RUN_COMMAND,
    )
    loaded = sweep_file.load_sweep(path)
    argv = sweep_agent.harness_argv(
        sweep_agent.agent_command(loaded, sweep_file.grid_points(loaded)[0]), path
    ).argv
    config, printed_dirs = dry_run(argv, runs=1)
    assert config["sparsity"]["method"] == "granet"
    assert config["sparsity"]["sparsity"] == 0.95
    assert config["sparsity"]["init_sparsity"] == 0.5
    assert [str(run.run_dir) for run in planning.plan_invocation(argv)] == printed_dirs


# ---------------------------------------------------------------------------------------------------------
# Planning


def test_plan_shares_base_and_control_and_orders_dependencies_first(tmp_path):
    runs = tmp_path / "runs"
    jobs = sweep_plan.plan_jobs(sweep_file.load_sweep(synthetic_plasticity(tmp_path)), runs_dir=runs)
    kinds = [job.run_dir.name.split("-")[0] for job in jobs]
    assert kinds == ["dense", "control", "probe", "probe", "probe", "probe"]
    base, control, *probes = jobs
    assert base.needs == () and control.needs == (base.run_dir,)
    assert all(probe.needs == (control.run_dir,) for probe in probes)
    assert base.argv[-2:] == ("--stage", "base") and control.argv[-2:] == ("--stage", "control")
    assert "--stage" not in probes[0].argv
    assert len({job.run_dir for job in jobs}) == 6
    assert all(job.run_dir.parent == runs / "plasticity" for job in jobs)
    assert {("-regen-" in probe.run_dir.name, "-p0.9-" in probe.run_dir.name) for probe in probes} == {
        (False, False),
        (True, False),
        (False, True),
        (True, True),
    }
    assert base.log_path == runs / ".sweeps" / "tiny" / f"{base.run_dir.name}.log"


def test_booleans_under_plain_args_are_refused_with_the_macro_to_use(tmp_path):
    path = write_sweep(
        tmp_path,
        {
            "dataset": {"value": "synthetic"},
            "probe_epoch": {"value": 1},
            "pruning_rate": {"value": 0.5},
            "regeneration": {"values": [False, True]},
        },
        command=["${env}", "${program}", "plasticity", "${args}"],
    )
    with pytest.raises(UserError) as raised:
        sweep_plan.plan_jobs(sweep_file.load_sweep(path))
    assert str(raised.value) == (
        f"{path}: parameters.regeneration: ${{args}} passes booleans as --regeneration=True/False, which "
        "the harness CLI rejects; use ${args_no_boolean_flags} in command"
    )


def test_runs_dir_argument_overrides_the_sweeps_own(tmp_path):
    path = synthetic_plasticity(tmp_path, runs_dir={"value": str(tmp_path / "theirs")})
    own = sweep_plan.plan_jobs(sweep_file.load_sweep(path))
    assert all(job.run_dir.parents[1] == tmp_path / "theirs" for job in own)
    mine = sweep_plan.plan_jobs(sweep_file.load_sweep(path), runs_dir=tmp_path / "mine")
    assert all(job.run_dir.parents[1] == tmp_path / "mine" for job in mine)
    assert [job.run_dir.name for job in own] == [job.run_dir.name for job in mine]


def test_a_bad_grid_point_names_the_file_and_the_point(tmp_path):
    path = synthetic_plasticity(tmp_path, probe_epoch={"values": [1, 5]})  # the base keeps epochs 0..2
    with pytest.raises(UserError) as raised:
        sweep_plan.plan_jobs(sweep_file.load_sweep(path))
    message = str(raised.value)
    assert message.startswith(f"{path}: grid point dataset=synthetic wandb=disabled probe_epoch=5")
    assert "probe_epoch: 5 is not a checkpoint of the base run" in message


@pytest.mark.parametrize(
    ("name", "points"),
    [
        ("plasticity", 2 * 3 * 16 * 4 * 2),
        ("plasticity-structured", 2 * 3 * 4 * 16 * 4 * 2),
        ("plasticity-structured-mnist1d", 3 * 2 * 2 * 2 * 2),
        ("plasticity-mnist1d", 3 * 4 * 3 * 2),
        ("granet-cifar10", 3 * 11 * 3 * 2 * 3),
        ("granet-cifar100", 11 * 3 * 2 * 3),
        ("granet-mnist1d", 11 * 3 * 2 * 3),
    ],
)
def test_shipped_sweep_files_expand_and_plan(name, points):
    """Grid sizes, and the first, middle and last points plan (the CPU sweeps are planned whole below)."""
    loaded = sweep_file.load_sweep(SWEEPS / f"{name}.yaml")
    grid = sweep_file.grid_points(loaded)
    assert len(grid) == points
    for point in (grid[0], grid[len(grid) // 2], grid[-1]):
        command = sweep_agent.agent_command(loaded, point)
        assert command[:2] == ["/usr/bin/env", "harness"]
        planned = planning.plan_invocation(sweep_agent.harness_argv(command, loaded.path).argv)
        assert planned[-1].run_dir.parent.name == (
            "plasticity" if name.startswith("plasticity") else "default"
        )


def test_the_cpu_plasticity_sweep_is_one_base_four_controls_and_its_probes_per_seed():
    jobs = sweep_plan.plan_jobs(sweep_file.load_sweep(SWEEPS / "plasticity-mnist1d.yaml"), runs_dir=Path("r"))
    kinds = [job.run_dir.name.split("-")[0] for job in jobs]
    seeds = Counter(job.run_dir.name.split("-")[3] for job in jobs)
    assert seeds == {"s0": 29, "s1": 29, "s2": 29}
    assert kinds.count("dense") == 3
    assert kinds.count("control") == 3 * 4
    assert kinds.count("probe") == 3 * 4 * 3 * 2
    assert sum("-regen-" in job.run_dir.name for job in jobs) == 3 * 4 * 3
    # Every probe continues for the full 6 epochs: none is cut short by the end of the 30-epoch schedule.
    probe_epochs = {
        int(name.split("-")[4][1:]) for name in (job.run_dir.name for job in jobs) if name.startswith("probe")
    }
    assert probe_epochs == {0, 4, 10, 16} and max(probe_epochs) + 6 <= 30
    # Every probe and control measures with recomputed BatchNorm statistics; the base runs do not measure.
    measured = [job for job in jobs if not job.run_dir.name.startswith("dense")]
    assert all("--recalibrate_bn" in job.argv for job in measured)


def test_the_cpu_filter_study_shares_its_dense_base_with_the_unstructured_study():
    unstructured = sweep_plan.plan_jobs(
        sweep_file.load_sweep(SWEEPS / "plasticity-mnist1d.yaml"), runs_dir=Path("r")
    )
    filters = sweep_plan.plan_jobs(
        sweep_file.load_sweep(SWEEPS / "plasticity-structured-mnist1d.yaml"), runs_dir=Path("r")
    )
    bases = {job.run_dir for job in filters if job.run_dir.name.startswith(("dense", "static"))}
    assert len(bases) == 3 * 2
    assert {job.run_dir for job in unstructured if job.run_dir.name.startswith("dense")} < bases
    shared_controls = {job.run_dir for job in unstructured if job.run_dir.name.startswith("control")}
    assert len({job.run_dir for job in filters if job.run_dir in shared_controls}) == 3 * 2


def test_the_collapse_ablation_runs_each_variant_once_outside_the_comparison():
    loaded = sweep_file.load_sweep(SWEEPS / "collapse-mnist1d.yaml")
    assert len(sweep_file.grid_points(loaded)) == 4 * 9 * 3
    jobs = sweep_plan.plan_jobs(loaded, runs_dir=Path("r"))
    methods = Counter(job.run_dir.name.split("-")[0] for job in jobs)
    # Per seed: granet 1 + 1 regen_until + 1 r_0 + 1 dT + 1 growth + 2 (width, samples) + 1 drop_rounding = 8;
    # rigl 8 (update_until instead of regen_until); set 8 (growth=random is its own growth, under another
    # id); gmp 4.
    assert methods == {"granet": 24, "rigl": 24, "set": 24, "gmp": 12}
    assert {job.run_dir.parent.name for job in jobs} == {"collapse"}
    assert all("tracking.job_type=ablation" in job.argv for job in jobs)
    # The baseline the analysis compares against is the one the sweep pins.
    pinned = f"sparsity.regen_rate={collapse.ABLATION_BASE['sparsity']['regen_rate']}"
    assert all(job.argv[job.argv.index(pinned) - 1] == "--set" for job in jobs)


def test_the_cpu_comparison_runs_each_distinct_experiment_once():
    """Grid points differing only in settings a method ignores share one run (dense at any sparsity...)."""
    jobs = sweep_plan.plan_jobs(sweep_file.load_sweep(SWEEPS / "granet-mnist1d.yaml"), runs_dir=Path("r"))
    methods = Counter(job.run_dir.name.split("-")[0] for job in jobs)
    assert methods == {
        **{"dense": 3, "rigl": 9, "set": 9, "static": 9, "gmp": 18, "granet": 18},
        **{"snip": 9, "grasp": 9, "synflow": 9, "mest": 9, "acdc": 9},
    }


# ---------------------------------------------------------------------------------------------------------
# Scheduling, with fake processes


class FakeProcess:
    """Finishes after `polls` polls with `code`, writing the status a real run would leave."""

    def __init__(self, job: Job, code: int, polls: int, clock: list) -> None:
        self.job, self.code, self.polls, self.clock = job, code, polls, clock
        self.pid = 1000 + len(clock)
        self.signals: list[int] = []

    def poll(self):
        self.polls -= 1
        if self.polls > 0:
            return None
        if not self.finished:
            self.job.run_dir.mkdir(parents=True, exist_ok=True)
            (self.job.run_dir / "status").write_text("completed\n" if self.code == 0 else "failed\n")
            self.clock.append(("end", self.job.run_dir.name))
        return self.code

    @property
    def finished(self) -> bool:
        return any(event == ("end", self.job.run_dir.name) for event in self.clock)

    def wait(self, timeout=None):
        self.polls = 0
        return self.poll()

    def send_signal(self, sig):
        self.signals.append(sig)
        self.code = 3

    def kill(self):
        self.code = -9


class FakeLauncher:
    def __init__(self, codes: dict[str, int] | None = None, polls: int = 2) -> None:
        self.codes = codes or {}
        self.polls = polls
        self.clock: list = []
        self.processes: list[FakeProcess] = []
        self.most_running = 0

    def __call__(self, job: Job) -> FakeProcess:
        running = sum(1 for process in self.processes if not process.finished)
        self.most_running = max(self.most_running, running + 1)
        self.clock.append(("start", job.run_dir.name))
        process = FakeProcess(job, self.codes.get(job.run_dir.name, 0), self.polls, self.clock)
        self.processes.append(process)
        return process


def chain(root: Path, prefix: str) -> list[Job]:
    """base -> control -> two probes, like one plasticity probe epoch."""

    def job(name: str, *needs: str) -> Job:
        run_dir = root / "g" / f"{prefix}{name}"
        return Job(
            run_dir,
            (name,),
            tuple(root / "g" / f"{prefix}{need}" for need in needs),
            root / f"{prefix}{name}.log",
        )

    return [job("base"), job("control", "base"), job("probe1", "control"), job("probe2", "control")]


def test_a_failed_base_blocks_its_probes_and_the_other_chain_still_completes(tmp_path):
    jobs = chain(tmp_path, "a-") + chain(tmp_path, "b-")
    jobs.sort(key=lambda job: ["base", "control", "probe1", "probe2"].index(job.argv[0]))
    launcher = FakeLauncher({"a-base": 1})
    outcomes, stopped = supervisor.execute(jobs, workers=2, launch=launcher, poll_seconds=0)
    states = {outcome.job.run_dir.name: outcome.state for outcome in outcomes}
    assert not stopped
    assert states == {
        "a-base": FAILED,
        "a-control": BLOCKED,
        "a-probe1": BLOCKED,
        "a-probe2": BLOCKED,
        "b-base": COMPLETED,
        "b-control": COMPLETED,
        "b-probe1": COMPLETED,
        "b-probe2": COMPLETED,
    }
    blocked = next(outcome for outcome in outcomes if outcome.job.run_dir.name == "a-probe1")
    assert blocked.detail == f"needs {tmp_path / 'g' / 'a-control'}"
    assert [name for event, name in launcher.clock if event == "start"] == [
        "a-base",
        "b-base",
        "b-control",
        "b-probe1",
        "b-probe2",
    ]
    assert launcher.most_running == 2
    # Every job started only after everything it needs had ended.
    for job in jobs:
        if ("start", job.run_dir.name) in launcher.clock:
            started = launcher.clock.index(("start", job.run_dir.name))
            assert all(launcher.clock.index(("end", need.name)) < started for need in job.needs)


def test_completed_runs_are_skipped_without_starting_a_process(tmp_path):
    jobs = chain(tmp_path, "a-")
    for job in jobs[:2]:
        job.run_dir.mkdir(parents=True)
        (job.run_dir / "status").write_text("completed\n")
    (jobs[2].run_dir).mkdir(parents=True)
    (jobs[2].run_dir / "status").write_text("running\n")  # interrupted: started again, resumes itself
    launcher = FakeLauncher()
    outcomes, _ = supervisor.execute(jobs, workers=1, launch=launcher, poll_seconds=0)
    assert [outcome.state for outcome in outcomes] == [ALREADY, ALREADY, COMPLETED, COMPLETED]
    assert [name for event, name in launcher.clock if event == "start"] == ["a-probe1", "a-probe2"]
    assert launcher.most_running == 1


def test_run_sweep_of_a_finished_sweep_starts_nothing_and_exits_0(tmp_path):
    path = synthetic_plasticity(tmp_path)
    runs = tmp_path / "runs"
    for job in sweep_plan.plan_jobs(sweep_file.load_sweep(path), runs_dir=runs):
        job.run_dir.mkdir(parents=True)
        (job.run_dir / "status").write_text("completed\n")

    def refuse(job):
        raise AssertionError(f"started {job.run_dir}")

    out = io.StringIO()
    assert sweep.run_sweep(path, workers=2, runs_dir=runs, out=out, launch=refuse) == 0
    assert out.getvalue().splitlines() == ["sweep tiny: 6 runs", count_line(ALREADY, 6)]


def test_run_sweep_reports_failures_with_their_log_tail_and_exits_1(tmp_path):
    path = synthetic_plasticity(tmp_path)
    runs = tmp_path / "runs"
    jobs = sweep_plan.plan_jobs(sweep_file.load_sweep(path), runs_dir=runs)
    failing = jobs[2]  # a probe: its siblings go on
    failing.log_path.parent.mkdir(parents=True)
    failing.log_path.write_text("".join(f"line {index}\n" for index in range(30)))
    out = io.StringIO()
    code = sweep.run_sweep(path, workers=2, runs_dir=runs, out=out, launch=FakeLauncher({failing.name: 1}))
    report = out.getvalue()
    assert code == 1
    assert count_line(COMPLETED, 5) in report.splitlines()
    assert count_line(FAILED, 1) in report.splitlines()
    assert f"  failed: {failing.run_dir} (exit code 1)" in report
    assert f"    log: {failing.log_path}" in report
    assert [line for line in report.splitlines() if line.startswith("    | ")] == [
        f"    | line {index}" for index in range(30 - sweep.LOG_TAIL_LINES, 30)
    ]


def test_the_report_shows_the_log_tails_of_the_first_failures_only(tmp_path):
    jobs = chain(tmp_path, "a-") + chain(tmp_path, "b-")
    for job in jobs:
        job.log_path.write_text(f"last words of {job.name}\n")
    outcomes = [Outcome(job, FAILED, "exit code 1") for job in jobs[:7]] + [
        Outcome(jobs[7], BLOCKED, "needs x")
    ]
    report = sweep.format_report(sweep_file.load_sweep(synthetic_plasticity(tmp_path)), outcomes).splitlines()
    assert sum(line.startswith("    log: ") for line in report) == 7
    assert [line for line in report if line.startswith("    | ")] == [
        f"    | last words of {job.name}" for job in jobs[: sweep.MAX_LOG_TAILS]
    ]
    assert report[-1] == f"  {BLOCKED}: {jobs[7].run_dir} (needs x)"


def test_dry_run_lists_what_would_run_and_what_is_complete(tmp_path):
    path = synthetic_plasticity(tmp_path)
    runs = tmp_path / "runs"
    jobs = sweep_plan.plan_jobs(sweep_file.load_sweep(path), runs_dir=runs)
    jobs[0].run_dir.mkdir(parents=True)
    (jobs[0].run_dir / "status").write_text("completed\n")
    out = io.StringIO()
    assert sweep.run_sweep(path, runs_dir=runs, dry_run=True, out=out, launch=FakeLauncher()) == 0
    lines = out.getvalue().splitlines()
    assert lines[0] == "sweep tiny: 4 grid points -> 6 runs (1 already complete)"
    assert lines[1] == f"  complete  {jobs[0].run_dir}"
    assert lines[2] == f"  to run    {jobs[1].run_dir}  (after {jobs[0].run_dir.name})"
    assert lines[3] == f"            harness {' '.join(jobs[1].argv)}"
    assert len(lines) == 2 + 2 * 5
    assert not jobs[1].run_dir.exists()


def test_stopping_the_runner_stops_children_and_reports_them_resumable(tmp_path):
    jobs = chain(tmp_path, "a-")
    launcher = FakeLauncher(polls=10**9)  # never ends by itself

    def interrupting(job):
        process = launcher(job)
        original = process.poll

        def poll():  # Ctrl-C arrives while the runner waits; afterwards the child answers normally
            process.poll = original
            raise KeyboardInterrupt

        process.poll = poll
        return process

    outcomes, stopped = supervisor.execute(jobs, workers=2, launch=interrupting, poll_seconds=0)
    assert stopped
    assert [outcome.state for outcome in outcomes] == [STOPPED] * 4
    assert launcher.processes[0].signals == [signal.SIGTERM]
    assert outcomes[0].detail.startswith("stopped by a signal (exit code 3)")
    assert outcomes[1].detail == "not started: the sweep was stopped"


def test_judge_trusts_the_run_directory_not_only_the_exit_code(tmp_path):
    job = chain(tmp_path, "a-")[0]
    mismatch = supervisor.judge(job, 0)
    assert mismatch.state == FAILED
    assert mismatch.detail.startswith(f"exited 0 but {job.run_dir / 'status'} is None (did the harness code")
    job.run_dir.mkdir(parents=True)
    (job.run_dir / "status").write_text("completed\n")
    assert supervisor.judge(job, 0).state == COMPLETED
    assert supervisor.judge(job, 2) == Outcome(job, FAILED, "exit code 2")
    assert supervisor.judge(job, -9) == Outcome(job, FAILED, "killed by signal 9")
    assert supervisor.judge(job, 3).state == STOPPED


def test_workers_share_the_cores_and_a_users_thread_setting_wins(monkeypatch):
    job = Job(Path("r/g/x"), ("run",), (), Path("x.log"), env=(("EXTRA", "1"),))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    env = supervisor.child_environment(2, job, base={})
    assert env["OMP_NUM_THREADS"] == "2" and env["MKL_NUM_THREADS"] == "2" and env["EXTRA"] == "1"
    assert supervisor.child_environment(8, job, base={})["OMP_NUM_THREADS"] == "1"
    assert supervisor.child_environment(2, job, base={"OMP_NUM_THREADS": "3"})["OMP_NUM_THREADS"] == "3"


def test_workers_must_be_positive(tmp_path):
    with pytest.raises(UserError, match="--workers: must be at least 1"):
        sweep.run_sweep(synthetic_plasticity(tmp_path), workers=0)


# ---------------------------------------------------------------------------------------------------------
# Real runs in child processes


def starts(log_path: Path) -> int:
    return sum(line.startswith("=== start ") for line in log_path.read_text().splitlines())


@pytest.mark.slow
def test_real_sweep_keeps_going_when_a_run_fails(tmp_path):
    """Two runs in parallel; the one with an absurd learning rate fails on a non-finite loss."""
    path = write_sweep(
        tmp_path,
        {
            "dataset": {"value": "synthetic"},
            "method": {"value": "dense"},
            "wandb": {"value": "disabled"},
            "lr": {"values": [0.05, 1.0e30]},
        },
        command=RUN_COMMAND,
    )
    runs = tmp_path / "runs"
    good, bad = sweep_plan.plan_jobs(sweep_file.load_sweep(path), runs_dir=runs)
    out = io.StringIO()
    assert sweep.run_sweep(path, workers=2, runs_dir=runs, out=out) == 1
    assert (good.run_dir / "status").read_text() == "completed\n"
    assert (bad.run_dir / "status").read_text() == "failed\n"
    report = out.getvalue()
    assert count_line(COMPLETED, 1) in report.splitlines()
    assert f"  failed: {bad.run_dir} (exit code 1)" in report
    assert "error: non-finite loss at step" in report  # the log's last lines
    assert starts(good.log_path) == 1 and starts(bad.log_path) == 1


def harness_processes(marker: str) -> list[int]:
    """Processes whose command line mentions `marker` (our temporary runs directory)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if marker in command:
                found.append(int(entry.name))
    return found


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="children die with the runner on Linux")
def test_sigkill_of_the_runner_then_a_rerun_finishes_only_what_is_missing(tmp_path):
    path = write_sweep(
        tmp_path,
        {
            "dataset": {"value": "synthetic"},
            "method": {"value": "dense"},
            "wandb": {"value": "disabled"},
            "epochs": {"value": 6},
            "seed": {"values": [0, 1, 2]},
        },
        command=RUN_COMMAND,
    )
    runs = tmp_path / "runs"
    jobs = sweep_plan.plan_jobs(sweep_file.load_sweep(path), runs_dir=runs)

    def epochs_done(job: Job) -> int:
        metrics = job.run_dir / "metrics.jsonl"
        return metrics.read_text().count('"kind": "epoch"') if metrics.exists() else 0

    def midway() -> bool:
        """One run completed and the next checkpointed, with half its epochs still to go: a wide window."""
        done = [job for job in jobs if rundir.is_completed(job.run_dir)]
        started = [
            job
            for job in jobs
            if not rundir.is_completed(job.run_dir)
            and (job.run_dir / "checkpoints" / "last.pt").exists()
            and epochs_done(job) <= 3
        ]
        return bool(done) and bool(started)

    runner = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "harness.cli",
            "sweep",
            "run",
            str(path),
            "--workers",
            "1",
            "--runs-dir",
            str(runs),
        ],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(midway, 240, "one run completed and the next one checkpointed")
    finally:
        runner.kill()
        runner.wait()
    # The child got SIGTERM from the kernel when the runner died: it checkpoints and exits by itself.
    wait_for(lambda: not harness_processes(str(runs)), 120, "the runner's children to exit")

    completed_before = {job.run_dir for job in jobs if rundir.is_completed(job.run_dir)}
    interrupted = [job for job in jobs if job.run_dir not in completed_before and job.log_path.exists()]
    assert len(completed_before) >= 1 and len(interrupted) == 1

    out = io.StringIO()
    assert sweep.run_sweep(path, workers=2, runs_dir=runs, out=out) == 0
    assert all(rundir.is_completed(job.run_dir) for job in jobs)
    for job in jobs:
        expected = 1 if job.run_dir in completed_before or job not in interrupted else 2
        assert starts(job.log_path) == expected, job.run_dir.name
    [resumed] = interrupted
    assert "resuming" in resumed.log_path.read_text()
    epochs = [
        record["epoch"]
        for record in map(json.loads, (resumed.run_dir / "metrics.jsonl").read_text().splitlines())
        if record["kind"] == "epoch"
    ]
    assert epochs == [1, 2, 3, 4, 5, 6]
    assert count_line(ALREADY, len(completed_before)) in out.getvalue().splitlines()

"""`harness sweep submit` / `harness sweep status`: levels, submission records, the task's guard, the status report.

Fast tests drive the submission with a recording submitter and the status with given scheduler states.
The slow ones run a base run and two probes for real: through submitit's local executor, and through a
single-node SLURM cluster (munged, slurmctld, slurmd) that the test starts in a temporary directory when
Debian's slurm-wlm is installed.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from harness.cli import commands as cli
from harness.errors import UserError
from harness.launch import slurm, supervisor, sweep_file, sweep_plan
from harness.launch.sweep_plan import Job
from harness.store import rundir

PLASTICITY_COMMAND = ["${env}", "${program}", "plasticity", "${args_no_boolean_flags}"]


def base_and_two_probes(directory: Path) -> Path:
    """1 base run, 1 control (shared by the probes) and 2 probes, on synthetic data."""
    data = {
        "program": "harness",
        "method": "grid",
        "command": PLASTICITY_COMMAND,
        "parameters": {
            "dataset": {"value": "synthetic"},
            "wandb": {"value": "disabled"},
            "probe_epoch": {"value": 1},
            "pruning_rate": {"values": [0.5, 0.9]},
        },
    }
    path = directory / "tiny.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def plan(tmp_path: Path) -> tuple[Path, Path, list[Job]]:
    path = base_and_two_probes(tmp_path)
    runs = tmp_path / "runs"
    return path, runs, sweep_plan.plan_jobs(sweep_file.load_sweep(path), runs_dir=runs)


def complete(job: Job, status: str = "completed") -> None:
    job.run_dir.mkdir(parents=True, exist_ok=True)
    (job.run_dir / "status").write_text(status + "\n")


def count_line(state: str, count: int) -> str:
    width = max(len(name) for name in slurm.REPORT_STATES)
    return f"  {state:<{width}}  {count:>5}"


# ---------------------------------------------------------------------------------------------------------
# Options


@pytest.mark.parametrize(
    ("text", "minutes"),
    [("90", 90), ("30:00", 30), ("00:30", 1), ("01:30:00", 90), ("2:00:01", 121), ("1-0", 1440)],
)
def test_time_limits_use_slurms_syntax_in_whole_minutes_rounded_up(text, minutes):
    assert slurm.time_minutes(text) == minutes
    assert slurm.time_minutes("1-02:03:04") == 1440 + 2 * 60 + 3 + 1


@pytest.mark.parametrize(
    ("flags", "slurm_args", "expected"),
    [
        ({"time": "1:2:3:4"}, [], "--time: expected SLURM's time syntax"),
        ({"time": "0"}, [], "--time: must be between 1 minute and 365 days (525600 minutes) (got '0')"),
        ({"gpus_per_task": -1}, [], "--gpus-per-task: Input should be greater than or equal to 0 (got -1)"),
        ({"array_parallelism": 0}, [], "--array-parallelism: Input should be greater than or equal to 1"),
        ({"cluster": "pbs"}, [], "--cluster: Input should be 'slurm' or 'local' (got 'pbs')"),
        ({}, ["account"], "--slurm-arg: expected an sbatch option as KEY=VALUE"),
        ({}, ["dependency=afterok:1"], "--slurm-arg: dependency is set by the harness"),
        ({}, ["time=10"], "--slurm-arg: time is set by the harness; use --time"),
    ],
)
def test_bad_slurm_options_name_the_flag(flags, slurm_args, expected):
    with pytest.raises(UserError) as raised:
        slurm.slurm_options(slurm_args=slurm_args, **flags)
    assert str(raised.value).startswith(expected)
    assert "\n" not in str(raised.value)


def test_slurm_options_keep_extra_sbatch_options():
    options = slurm.slurm_options(slurm_args=["account=proj", "qos=low"], time="2:00:00", partition=None)
    assert options.extra == {"account": "proj", "qos": "low"}
    assert options.minutes == 120 and options.partition is None and options.cluster == "slurm"


# ---------------------------------------------------------------------------------------------------------
# Levels and submission


def test_levels_follow_dependencies_and_leave_out_completed_runs(tmp_path):
    _, _, jobs = plan(tmp_path)
    base, control, *probes = jobs
    assert slurm.plan_levels(jobs) == [[base], [control], probes]
    complete(base)
    assert slurm.plan_levels(jobs) == [[control], probes]
    complete(control)
    assert slurm.plan_levels(jobs) == [probes]  # needs complete: the probes can start at once
    for probe in probes:
        complete(probe)
    assert slurm.plan_levels(jobs) == []


class RecordingSubmitter:
    """Stands for sbatch: numbers the arrays from 10 and remembers what each was asked."""

    def __init__(self) -> None:
        self.arrays: list[tuple[str, str | None, list[slurm.Task]]] = []
        self.finished = False

    def __call__(self, folder: Path, options: slurm.SlurmOptions) -> RecordingSubmitter:
        self.folder, self.options = folder, options
        return self

    def submit(self, tasks, after, name):
        self.arrays.append((name, after, list(tasks)))
        array = str(10 + len(self.arrays) - 1)
        return [array] if len(tasks) == 1 else [f"{array}_{index}" for index in range(len(tasks))]

    def finish(self) -> None:
        self.finished = True


def test_submission_is_one_array_per_level_each_after_the_previous(tmp_path):
    path, runs, jobs = plan(tmp_path)
    base, control, *probes = jobs
    recorder = RecordingSubmitter()
    out = io.StringIO()
    options = slurm.slurm_options(partition="gpu", gpus_per_task=2, time="30")
    assert slurm.submit_sweep(path, options, runs_dir=runs, out=out, submitter=recorder) == 0
    folder = runs / ".sweeps" / "tiny"
    assert recorder.folder == folder and recorder.finished
    assert [(name, after) for name, after, _ in recorder.arrays] == [
        ("tiny-0", None),
        ("tiny-1", "10"),
        ("tiny-2", "11"),
    ]
    assert [[task.job for task in tasks] for _, _, tasks in recorder.arrays] == [[base], [control], probes]
    assert recorder.arrays[2][2][1].record_path == folder / "tasks" / f"{probes[1].name}.json"
    [record_file] = (folder / "submissions").glob("*.json")
    record = json.loads(record_file.read_text())
    assert record["options"]["partition"] == "gpu" and record["options"]["gpus_per_task"] == 2
    assert [(array["job_id"], array["after"]) for array in record["arrays"]] == [
        ("10", None),
        ("11", "10"),
        ("12", "11"),
    ]
    assert record["arrays"][2]["tasks"] == [
        {"job_id": f"12_{index}", "run_dir": str(probe.run_dir), "argv": list(probe.argv)}
        for index, probe in enumerate(probes)
    ]
    lines = out.getvalue().splitlines()
    assert lines[0] == (
        "sweep tiny: 2 grid points -> 4 runs (0 already complete); 3 arrays on SLURM, per task: "
        "partition gpu, 2 GPUs, --time 30, at most 256 tasks of an array at once"
    )
    assert lines[1:4] == [
        "  array 10: 1 task",
        "  array 11: 1 task after 10 ends",
        "  array 12: 2 tasks after 11 ends",
    ]
    assert lines[4] == f"  plan and job ids: {record_file}"
    assert not any(job.run_dir.exists() for job in jobs)  # nothing ran here


def test_a_finished_sweep_submits_nothing_and_a_dry_run_submits_nothing(tmp_path):
    path, runs, jobs = plan(tmp_path)
    complete(jobs[0])

    def refuse(folder, options):
        raise AssertionError("submitted")

    out = io.StringIO()
    assert (
        slurm.submit_sweep(path, slurm.SlurmOptions(), runs_dir=runs, dry_run=True, out=out, submitter=refuse)
        == 0
    )
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("sweep tiny: 2 grid points -> 4 runs (1 already complete); 2 arrays on SLURM")
    assert lines[1:4] == [
        "  array 1: 1 task",
        f"    [0] {jobs[1].run_dir}",
        f"        harness {' '.join(jobs[1].argv)}",
    ]
    assert lines[4] == "  array 2: 2 tasks, after array 1 ends (afterany)"
    assert len(lines) == 5 + 2 * 2
    assert not (runs / ".sweeps").exists()
    for job in jobs:
        complete(job)
    out = io.StringIO()
    assert slurm.submit_sweep(path, slurm.SlurmOptions(), runs_dir=runs, out=out, submitter=refuse) == 0
    assert out.getvalue().splitlines() == [
        "sweep tiny: 2 grid points -> 4 runs (4 already complete); 0 arrays on SLURM, per task: "
        "the default partition, no GPUs, --time 60, at most 256 tasks of an array at once"
    ]


def test_a_level_larger_than_an_array_may_be_is_split_and_the_next_level_waits_for_all(tmp_path):
    path = base_and_two_probes(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["parameters"]["pretrained_sparsity"] = {"values": [0.0, 0.5]}  # two base runs, two controls
    data["parameters"]["pruning_rate"] = {"value": 0.5}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    recorder = RecordingSubmitter()
    out = io.StringIO()
    options = slurm.SlurmOptions()
    runs = tmp_path / "runs"
    slurm.submit_sweep(path, options, runs_dir=runs, out=out, submitter=recorder, max_array_tasks=1)
    assert [(name, after, len(tasks)) for name, after, tasks in recorder.arrays] == [
        ("tiny-0", None, 1),
        ("tiny-0", None, 1),
        ("tiny-1", "10:11", 1),
        ("tiny-1", "10:11", 1),
        ("tiny-2", "12:13", 1),
        ("tiny-2", "12:13", 1),
    ]
    assert out.getvalue().splitlines()[3] == "  array 12: 1 task after 10, 11 ends"
    dry = io.StringIO()
    slurm.submit_sweep(path, options, runs_dir=runs, dry_run=True, out=dry, max_array_tasks=1)
    assert [line for line in dry.getvalue().splitlines() if line.startswith("  array")][2:4] == [
        "  array 3: 1 task, after array 1, 2 ends (afterany)",
        "  array 4: 1 task, after array 1, 2 ends (afterany)",
    ]


class RefusingSubmitter(RecordingSubmitter):
    def submit(self, tasks, after, name):
        if self.arrays:
            raise UserError("sweep submit: sbatch refused array tiny-1: Invalid partition name specified")
        return super().submit(tasks, after, name)


def test_an_sbatch_refusal_halfway_names_the_arrays_already_queued(tmp_path):
    path, runs, jobs = plan(tmp_path)
    with pytest.raises(UserError) as raised:
        slurm.submit_sweep(
            path, slurm.SlurmOptions(), runs_dir=runs, out=io.StringIO(), submitter=RefusingSubmitter()
        )
    [record_file] = (runs / ".sweeps" / "tiny" / "submissions").glob("*.json")
    assert str(raised.value) == (
        "sweep submit: sbatch refused array tiny-1: Invalid partition name specified; arrays 10 are queued already "
        f"(recorded in {record_file}): scancel them, or fix the cause and submit again (completed runs are skipped)"
    )
    assert [array["job_id"] for array in json.loads(record_file.read_text())["arrays"]] == ["10"]


def test_without_sbatch_a_slurm_submission_is_one_line_naming_it(tmp_path, monkeypatch):
    path, runs, _ = plan(tmp_path)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(UserError, match=r"^sweep submit: sbatch and srun not found on this machine"):
        slurm.submit_sweep(path, slurm.SlurmOptions(), runs_dir=runs, out=io.StringIO())
    assert not (runs / ".sweeps" / "tiny" / "submissions").exists()


# ---------------------------------------------------------------------------------------------------------
# The task


def forbid_processes(monkeypatch) -> None:
    def refuse(job):
        raise AssertionError(f"started {job.run_dir}")

    monkeypatch.setattr(slurm, "run_command", refuse)


def test_the_task_skips_a_run_that_completed_after_planning(tmp_path, monkeypatch):
    _, _, jobs = plan(tmp_path)
    forbid_processes(monkeypatch)
    complete(jobs[0])
    record_path = tmp_path / "record.json"
    assert slurm.run_task(jobs[0], record_path, job_id="5") == "already complete"
    record = json.loads(record_path.read_text())
    assert (record["state"], record["detail"], record["job_id"]) == ("completed", "already complete", "5")


def test_the_task_never_starts_a_probe_whose_needs_are_not_complete(tmp_path, monkeypatch):
    _, _, jobs = plan(tmp_path)
    forbid_processes(monkeypatch)
    complete(jobs[0], "failed")
    record_path = tmp_path / "record.json"
    with pytest.raises(slurm.TaskFailed, match="needs .*control.*, which is not complete \\(status: None\\)"):
        slurm.run_task(jobs[2], record_path, job_id="7_0")
    with pytest.raises(slurm.TaskFailed, match="which is not complete \\(status: failed\\)"):
        slurm.run_task(jobs[1], record_path, job_id="6")
    record = json.loads(record_path.read_text())
    assert record["state"] == "blocked" and record["job_id"] == "6"


@pytest.mark.parametrize(("code", "state"), [(0, "completed"), (1, "failed"), (3, "failed")])
def test_the_task_records_the_outcome_and_fails_when_the_run_did(tmp_path, monkeypatch, code, state):
    _, _, jobs = plan(tmp_path)
    seen = []

    def fake_command(job):
        seen.append(json.loads((tmp_path / "record.json").read_text())["state"])
        complete(job, "completed" if code == 0 else "failed")
        return code

    monkeypatch.setattr(slurm, "run_command", fake_command)
    record_path = tmp_path / "record.json"
    if code == 0:
        assert slurm.run_task(jobs[0], record_path, job_id="5") == supervisor.COMPLETED
    else:
        with pytest.raises(slurm.TaskFailed, match=f"log: {jobs[0].log_path}"):
            slurm.run_task(jobs[0], record_path, job_id="5")
    assert seen == ["running"]  # written before the run starts
    record = json.loads(record_path.read_text())
    assert (record["state"], record["exit_code"]) == (state, code)
    assert record["ended"] >= record["started"]


@pytest.fixture
def sigterm_once_waiting():
    """Sends this process SIGTERM once wait_for_run's handler is in place (never to pytest's own handler)."""

    def placeholder(signum, frame):
        pass

    previous = signal.signal(signal.SIGTERM, placeholder)

    def fire():
        deadline = time.monotonic() + 60
        while signal.getsignal(signal.SIGTERM) is placeholder and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=fire, daemon=True).start()
    yield
    signal.signal(signal.SIGTERM, previous)


def test_a_sigterm_to_the_task_is_passed_to_the_run_outside_slurm(monkeypatch, sigterm_once_waiting):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    process = subprocess.Popen(["sleep", "30"])
    assert slurm.wait_for_run(process) == 3  # stopped: resumable
    assert process.returncode == -signal.SIGTERM


def test_under_slurm_the_task_leaves_the_signal_to_slurm(monkeypatch, sigterm_once_waiting):
    """SLURM signals every process of the task: passed on too, torchrun would get it twice."""
    monkeypatch.setenv("SLURM_JOB_ID", "5")
    process = subprocess.Popen(["sleep", "30"])
    threading.Timer(3, process.kill).start()  # stands for SLURM's own signal to the run
    assert slurm.wait_for_run(process) == 3
    assert process.returncode == -signal.SIGKILL  # it was not sent SIGTERM by the task


def test_a_task_stopped_by_submitits_time_limit_handler_says_so_in_its_record(tmp_path, monkeypatch):
    _, _, jobs = plan(tmp_path)

    def timed_out(job):
        raise RuntimeError("Job not requeued because: timed-out and not checkpointable.")

    monkeypatch.setattr(slurm, "run_command", timed_out)
    record_path = tmp_path / "record.json"
    with pytest.raises(RuntimeError, match="timed-out"):
        slurm.run_task(jobs[0], record_path, job_id="5")
    record = json.loads(record_path.read_text())
    assert record["state"] == "failed"
    assert record["detail"] == (
        "the task was stopped (RuntimeError: Job not requeued because: timed-out and not checkpointable.); "
        "submit again to resume the run"
    )


# ---------------------------------------------------------------------------------------------------------
# Status


def test_scheduler_lines_are_parsed_with_arrays_expanded():
    text = "12_[3-5%2]|PENDING\n12_1|RUNNING\n13|CANCELLED by 0\n14_[0,2]|PENDING\nnot a line\n"
    assert slurm.parse_states(text) == {
        "12_3": "PENDING",
        "12_4": "PENDING",
        "12_5": "PENDING",
        "12_1": "RUNNING",
        "13": "CANCELLED",
        "14_0": "PENDING",
        "14_2": "PENDING",
    }


def write_submission(folder: Path, jobs: list[Job], ids: list[str], cluster: str = "slurm") -> None:
    submission = {
        "options": {"cluster": cluster},
        "arrays": [
            {"job_id": i.split("_")[0], "tasks": [{"job_id": i, "run_dir": str(j.run_dir)}]}
            for i, j in zip(ids, jobs, strict=True)
        ],
    }
    slurm.write_record(folder / "submissions" / "20260101T000000.000000Z.json", submission)


def task_record(folder: Path, job: Job, job_id: str, state: str, detail: str = "") -> None:
    slurm.write_record(
        folder / "tasks" / f"{job.name}.json", {"job_id": job_id, "state": state, "detail": detail}
    )


def test_status_joins_the_run_store_the_scheduler_and_the_task_records(tmp_path):
    path, runs, jobs = plan(tmp_path)
    base, control, probe1, probe2 = jobs
    folder = runs / ".sweeps" / "tiny"
    write_submission(folder, [base, control, probe1], ["5", "6", "7_0"])
    complete(base)
    task_record(folder, base, "5", "completed")
    task_record(folder, control, "6", "running")  # the controller lost it: killed or timed out
    task_record(folder, probe1, "7_0", "running")
    queue = {"5": "COMPLETED", "7_0": "RUNNING"}
    report = slurm.sweep_status(path, runs_dir=runs, queue=queue)
    assert [(row.state, row.job_id) for row in report.rows] == [
        ("completed", "5"),
        ("failed", "6"),
        ("running", "7_0"),
        ("not submitted", None),
    ]
    assert report.rows[1].detail.startswith("the task ended without a result (the scheduler no longer knows")
    assert slurm.status_exit_code(report) == 1
    lines = slurm.format_status(report).splitlines()
    assert lines[0] == "sweep tiny: 4 runs, 1 submission (states from squeue/sacct)"
    assert lines[1:6] == [
        count_line("queued", 0),
        count_line("running", 1),
        count_line("completed", 1),
        count_line("failed", 1),
        count_line("not submitted", 1),
    ]
    assert f"  failed: {control.run_dir} (job 6: the task ended without a result" in lines[6]
    assert lines[7] == f"    log: {control.log_path}"
    assert lines[8:] == [f"  running: {probe1.run_dir} (job 7_0)"]


@pytest.mark.parametrize(
    ("scheduled", "record", "state", "detail"),
    [
        ("PENDING", None, "queued", ""),
        ("REQUEUED", ("running", ""), "queued", ""),  # a requeued task's old record says running
        ("RUNNING", None, "running", ""),
        ("TIMEOUT", None, "failed", "job TIMEOUT before its task started"),
        ("TIMEOUT", ("running", ""), "failed", "the task ended without a result (the scheduler says TIMEOUT"),
        ("FAILED", ("failed", "exit code 1"), "failed", "exit code 1"),
        ("FAILED", ("blocked", "needs x"), "failed", "needs x"),
        (None, None, "failed", "the scheduler no longer knows the job and its task left no record"),
    ],
)
def test_one_runs_state_from_the_scheduler_and_its_record(tmp_path, scheduled, record, state, detail):
    _, _, jobs = plan(tmp_path)
    queue = {} if scheduled is None else {"6": scheduled}
    record = None if record is None else {"job_id": "6", "state": record[0], "detail": record[1]}
    row = slurm.run_state(jobs[1], "6", record, queue)
    assert row.state == state
    assert row.detail.startswith(detail)


def test_without_a_scheduler_records_decide_and_stale_records_are_ignored(tmp_path):
    _, _, jobs = plan(tmp_path)
    assert slurm.run_state(jobs[1], "6", {"job_id": "6", "state": "running"}, None).state == "running"
    assert slurm.run_state(jobs[1], "6", None, None).state == "queued"
    stale = {"job_id": "3", "state": "failed", "detail": "an older submission"}
    assert slurm.run_state(jobs[1], "6", stale, {"6": "PENDING"}).state == "queued"
    complete(jobs[1], "failed")
    assert slurm.run_state(jobs[1], None, None, None).state == "failed"


def test_a_damaged_submission_record_is_a_warning_naming_it(tmp_path, caplog):
    path, runs, jobs = plan(tmp_path)
    folder = runs / ".sweeps" / "tiny"
    write_submission(folder, jobs[:1], ["5"], cluster="local")
    damaged = folder / "submissions" / "20260202T000000.000000Z.json"
    damaged.write_text('{"arrays": [')
    with caplog.at_level(logging.WARNING, logger="harness.launch.slurm"):
        report = slurm.sweep_status(path, runs_dir=runs)
    assert f"{damaged}: unreadable sweep record, ignored" in caplog.text
    assert report.submissions == 1
    assert [row.state for row in report.rows] == ["queued", "not submitted", "not submitted", "not submitted"]


# ---------------------------------------------------------------------------------------------------------
# The command line


@pytest.mark.parametrize(
    ("command", "argv", "expected"),
    [
        ("run", ["--partition", "gpu"], "error: harness sweep run: no such option --partition"),
        ("run", ["--slurm-arg", "qos=low"], "error: harness sweep run: no such option --slurm-arg"),
        ("status", ["--dry-run"], "error: harness sweep status: no such option --dry-run"),
        ("status", ["--time", "10"], "error: harness sweep status: no such option --time"),
        ("submit", ["--workers", "2"], "error: harness sweep submit: no such option --workers"),
        ("submit", ["--gpus-per-task", "-2"], "error: --gpus-per-task: Input should be greater than"),
    ],
)
def test_cli_mistakes_are_one_line_and_exit_2(tmp_path, command, argv, expected):
    path = base_and_two_probes(tmp_path)
    result = CliRunner().invoke(
        cli.app, ["sweep", command, str(path), "--runs-dir", str(tmp_path / "runs"), *argv]
    )
    assert result.exit_code == 2
    assert result.stderr.strip().startswith(expected)
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_cli_dry_run_shows_torchrun_tasks_with_nproc_per_node_and_submits_nothing(tmp_path):
    path = base_and_two_probes(tmp_path)
    runs = tmp_path / "runs"
    argv = ["sweep", "submit", str(path), "--runs-dir", str(runs), "--dry-run", "--nproc-per-node", "2"]
    result = CliRunner().invoke(cli.app, [*argv, "--gpus-per-task", "2", "--slurm-arg", "account=proj"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].endswith(
        "per task: the default partition, 2 GPUs, --time 60, at most 256 tasks of an array at once, --account=proj"
    )
    commands = [line.strip() for line in lines if line.strip().startswith("harness ")]
    assert len(commands) == 4 and all("--nproc-per-node=2" in command for command in commands)
    # The world size is part of the run id: these are other runs than the 1-process ones.
    one_process = {str(job.run_dir) for job in plan(tmp_path)[2]}
    assert not one_process & {line.split()[-1] for line in lines if line.strip().startswith("[")}
    assert not runs.exists()


def test_cli_status_of_an_unsubmitted_sweep_exits_3(tmp_path):
    path = base_and_two_probes(tmp_path)
    result = CliRunner().invoke(cli.app, ["sweep", "status", str(path), "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 3
    assert count_line("not submitted", 4) in result.stdout.splitlines()


# ---------------------------------------------------------------------------------------------------------
# Real runs


def records(runs: Path, jobs: list[Job]) -> list[dict]:
    return [
        json.loads((runs / ".sweeps" / "tiny" / "tasks" / f"{job.name}.json").read_text()) for job in jobs
    ]


def check_order(found: list[dict]) -> None:
    base, control, *probes = found
    assert base["ended"] <= control["started"]
    assert all(control["ended"] <= probe["started"] for probe in probes)


@pytest.mark.slow
def test_local_executor_runs_base_control_and_probes_in_order_then_skips_them(tmp_path):
    path, runs, jobs = plan(tmp_path)
    argv = ["sweep", "submit", str(path), "--runs-dir", str(runs), "--cluster", "local", "--time", "20"]
    result = CliRunner().invoke(cli.app, argv)
    assert result.exit_code == 0, result.output
    assert all(rundir.is_completed(job.run_dir) for job in jobs)
    found = records(runs, jobs)
    assert [record["state"] for record in found] == ["completed"] * 4
    check_order(found)
    assert count_line("completed", 4) in result.stdout.splitlines()
    status = CliRunner().invoke(cli.app, ["sweep", "status", str(path), "--runs-dir", str(runs)])
    assert status.exit_code == 0
    assert status.stdout.splitlines()[1:6] == [
        count_line("queued", 0),
        count_line("running", 0),
        count_line("completed", 4),
        count_line("failed", 0),
        count_line("not submitted", 0),
    ]
    again = CliRunner().invoke(cli.app, argv)
    assert again.exit_code == 0
    assert "(4 already complete); 0 arrays" in again.stdout
    assert len(list((runs / ".sweeps" / "tiny" / "submissions").glob("*.json"))) == 1


# A single-node SLURM cluster in a temporary directory, started and stopped by the test.

SLURM_BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "srun", "scontrol")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def slurm_conf(root: Path, host: str, cpus: int) -> str:
    return f"""\
ClusterName=harnesstest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge/munge.socket
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
ReturnToService=2
MinJobAge=3600
KillWait=10
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def stop_daemon(pid_file: Path) -> None:
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    try:
        os.kill(pid, 15)
    except ProcessLookupError:
        return
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(pid, 9)


@pytest.fixture
def slurm_cluster(tmp_path_factory, monkeypatch):
    missing = [name for name in SLURM_BINARIES if shutil.which(name) is None]
    if missing:
        pytest.skip(f"Debian's slurm-wlm and munge are not installed ({', '.join(missing)} not on PATH)")
    if os.geteuid() != 0:
        pytest.skip(f"slurmd must run as root to start tasks (this test runs as uid {os.geteuid()})")
    root = tmp_path_factory.mktemp("slurm")
    for sub in ("munge", "state", "spool"):
        (root / sub).mkdir()
    (root / "munge").chmod(0o700)
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    host = socket.gethostname()
    conf = root / "slurm.conf"
    conf.write_text(slurm_conf(root, host, len(os.sched_getaffinity(0))))
    monkeypatch.setenv("SLURM_CONF", str(conf))
    daemons = [
        (
            [
                "munged",
                f"--key-file={key}",
                f"--socket={root}/munge/munge.socket",
                f"--pid-file={root}/munged.pid",
            ]
            + [f"--log-file={root}/munged.log", f"--seed-file={root}/munge/seed", "--force"],
            root / "munged.pid",
        ),
        (["slurmctld", "-f", str(conf), "-i"], root / "slurmctld.pid"),
        (["slurmd", "-f", str(conf)], root / "slurmd.pid"),
    ]
    started: list[Path] = []
    try:
        for command, pid_file in daemons:
            subprocess.run(command, check=True, capture_output=True, timeout=60)
            started.append(pid_file)
        deadline = time.monotonic() + 60
        while True:
            state = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
            if state.stdout.strip() == "idle":
                break
            if time.monotonic() > deadline:
                logs = "".join(path.read_text()[-2000:] for path in root.glob("slurm*.log"))
                raise AssertionError(f"the test cluster did not come up (sinfo: {state.stdout!r})\n{logs}")
            time.sleep(0.5)
        yield root
    finally:
        subprocess.run(["scancel", "--user=root"], capture_output=True, timeout=30, check=False)
        for pid_file in reversed(started):
            stop_daemon(pid_file)


def state_counts(report: str) -> dict[str, int]:
    return {line.rsplit(maxsplit=1)[0].strip(): int(line.split()[-1]) for line in report.splitlines()[1:6]}


def wait_for_status(argv: list[str], timeout: float) -> CliRunner:
    deadline = time.monotonic() + timeout
    while True:
        result = CliRunner().invoke(cli.app, argv)
        if result.exit_code != 3 or time.monotonic() > deadline:
            return result
        time.sleep(2)


@pytest.mark.slow
def test_real_single_node_slurm_runs_the_arrays_in_dependency_order(tmp_path, slurm_cluster):
    path, runs, jobs = plan(tmp_path)
    argv = [str(path), "--runs-dir", str(runs)]
    submitted = CliRunner().invoke(cli.app, ["sweep", "submit", *argv, "--time", "20"])
    assert submitted.exit_code == 0, submitted.output
    lines = submitted.stdout.splitlines()
    arrays = [line.split()[1].rstrip(":") for line in lines[1:4]]
    assert lines[2].endswith(f"after {arrays[0]} ends") and lines[3].endswith(f"after {arrays[1]} ends")
    # The dependencies are SLURM's own: the probes' array waits on the control's.
    shown = subprocess.run(["scontrol", "show", "job", arrays[2]], capture_output=True, text=True, check=True)
    assert f"Dependency=afterany:{arrays[1]}" in shown.stdout

    first = CliRunner().invoke(cli.app, ["sweep", "status", *argv])
    assert first.exit_code == 3, first.output
    counts = state_counts(first.stdout)
    assert counts["queued"] + counts["running"] == 4 and counts["completed"] == 0

    final = wait_for_status(["sweep", "status", *argv], timeout=900)
    assert final.exit_code == 0, final.output + "".join(
        job.log_path.read_text() for job in jobs if job.log_path.exists()
    )
    assert count_line("completed", 4) in final.stdout.splitlines()
    found = records(runs, jobs)
    assert [record["job_id"] for record in found] == [
        arrays[0],
        arrays[1],
        f"{arrays[2]}_0",
        f"{arrays[2]}_1",
    ]
    check_order(found)
    again = CliRunner().invoke(cli.app, ["sweep", "submit", *argv])
    assert again.exit_code == 0 and "(4 already complete); 0 arrays" in again.stdout

"""`harness sweep run --gpus`: several runs per GPU, and the throughput line of the report (issue 26).

The GPUs are fake: an `nvidia-smi` script written by the test on PATH, or `CUDA_VISIBLE_DEVICES`. The
runs are fake too (a launcher that records each child's environment, as the runner would build it), except
in the last test, which runs a real synthetic plasticity sweep and checks the samples it reports.
"""

from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path

import pytest
import yaml
from test_sweep import synthetic_plasticity
from typer.testing import CliRunner

from harness.cli import commands as cli
from harness.errors import UserError
from harness.launch import gpus, supervisor, sweep, sweep_file, sweep_plan
from harness.launch.gpus import GpuSlots, Placement
from harness.launch.supervisor import COMPLETED, FAILED
from harness.launch.sweep import StepLedger, Throughput
from harness.launch.sweep_plan import Job

BASE_ENVIRONMENT = {"PATH": "/usr/bin", "HOME": "/home/someone", "OMP_NUM_THREADS": "3"}
H100 = "NVIDIA H100 80GB HBM3"


def fake_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str) -> Path:
    """An `nvidia-smi` shell script with `body` first on PATH (CUDA_VISIBLE_DEVICES unset); returns the
    file each call appends its arguments to."""
    folder = tmp_path / "fake-bin"
    folder.mkdir(exist_ok=True)
    calls = tmp_path / "nvidia-smi-calls"
    script = folder / "nvidia-smi"
    script.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n{body}\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return calls


def listing(count: int) -> str:
    lines = [
        f"GPU {index}: {H100} (UUID: GPU-{index:08d}-aaaa-bbbb-cccc-dddddddddddd)" for index in range(count)
    ]
    return "cat <<'EOF'\n" + "\n".join(lines) + "\nEOF"


def no_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


# ---------------------------------------------------------------------------------------------------------
# Finding the GPUs


def test_nvidia_smi_lists_the_gpus_and_its_mig_lines_are_not_gpus(tmp_path, monkeypatch):
    mig = "  MIG 1g.10gb     Device  0: (UUID: MIG-11111111-2222-3333-4444-555555555555)"
    fake_nvidia_smi(tmp_path, monkeypatch, listing(2) + f"\necho '{mig}'")
    assert gpus.available_gpus() == (("0", "1"), "nvidia-smi -L")


@pytest.mark.parametrize(
    "body", ["exit 9", "echo 'No devices were found'", "echo 'NVIDIA-SMI has failed' >&2; exit 9"]
)
def test_a_failing_or_empty_nvidia_smi_means_no_gpu(tmp_path, monkeypatch, body):
    fake_nvidia_smi(tmp_path, monkeypatch, body)
    assert gpus.available_gpus() == ((), "nvidia-smi -L")


def test_no_nvidia_smi_means_no_gpu(tmp_path, monkeypatch):
    no_nvidia_smi(tmp_path, monkeypatch)
    assert gpus.available_gpus() == ((), "nvidia-smi -L")


def test_a_hung_nvidia_smi_is_given_up_on_with_a_warning(tmp_path, monkeypatch, caplog):
    fake_nvidia_smi(tmp_path, monkeypatch, "exec sleep 30")
    with caplog.at_level(logging.WARNING, logger="harness.launch.sweep"):
        assert gpus.nvidia_smi_gpus(timeout_s=0.3) == ()
    assert [record.getMessage() for record in caplog.records] == [
        "nvidia-smi -L did not answer within 0.3 s: the sweep places no run on a GPU"
    ]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("3,5", ("3", "5")),
        (" 2 , 0 ", ("2", "0")),
        ("", ()),
        ("-1", ()),
        ("1,-1,0", ("1",)),
        ("0,,1", ("0",)),
    ],
)
def test_cuda_visible_devices_wins_over_nvidia_smi_as_cuda_reads_it(tmp_path, monkeypatch, value, expected):
    calls = fake_nvidia_smi(tmp_path, monkeypatch, listing(8))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
    assert gpus.available_gpus() == (expected, f"CUDA_VISIBLE_DEVICES={value!r}")
    assert not calls.exists()


def test_gpus_option_auto_none_and_lists(tmp_path, monkeypatch):
    calls = fake_nvidia_smi(tmp_path, monkeypatch, listing(2))
    assert gpus.choose_gpus("none") == ()
    assert not calls.exists()  # `none` asks nothing
    assert gpus.choose_gpus("auto") == ("0", "1")
    assert gpus.choose_gpus("1") == ("1",)
    assert gpus.choose_gpus("1,0") == ("1", "0")
    assert calls.read_text().splitlines() == ["-L"] * 3


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "--gpus: '' is not auto, none or a comma-separated list of GPU indices such as 0,1"),
        ("0,", "--gpus: '0,' is not auto, none or a comma-separated list of GPU indices such as 0,1"),
        ("0 1", "--gpus: '0 1' is not auto, none or a comma-separated list of GPU indices such as 0,1"),
        ("-1", "--gpus: '-1' is not auto, none or a comma-separated list of GPU indices such as 0,1"),
        ("all", "--gpus: 'all' is not auto, none or a comma-separated list of GPU indices such as 0,1"),
        ("0,1,0", "--gpus: 0,1,0: GPU 0 is given twice; name each GPU once"),
        ("2", "--gpus: 2: GPU 2 is not available (available: 0, 1, per nvidia-smi -L)"),
    ],
)
def test_bad_gpus_options_are_refused_naming_the_option(tmp_path, monkeypatch, spec, message):
    fake_nvidia_smi(tmp_path, monkeypatch, listing(2))
    with pytest.raises(UserError) as refused:
        gpus.choose_gpus(spec)
    assert str(refused.value) == message


def test_a_gpu_list_outside_cuda_visible_devices_or_without_gpus_is_refused(tmp_path, monkeypatch):
    fake_nvidia_smi(tmp_path, monkeypatch, listing(8))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert gpus.choose_gpus("5") == ("5",)
    with pytest.raises(UserError, match=r"^--gpus: 1: GPU 1 is not available \(available: 3, 5, per "):
        gpus.choose_gpus("1")
    no_nvidia_smi(tmp_path, monkeypatch)
    with pytest.raises(UserError) as refused:
        gpus.choose_gpus("0")
    assert str(refused.value) == "--gpus: 0: GPU 0 is not available (no GPU available, per nvidia-smi -L)"


# ---------------------------------------------------------------------------------------------------------
# Placing runs


def test_slots_share_each_gpu_among_at_most_ceil_workers_over_gpus_runs():
    assert (GpuSlots(["0", "1"], 4).per_gpu, GpuSlots(["0", "1"], 4).memory_fraction) == (2, 0.5)
    assert (GpuSlots(["0", "1"], 3).per_gpu, GpuSlots(["0", "1"], 3).memory_fraction) == (2, 0.5)
    assert (GpuSlots(["0"], 3).per_gpu, GpuSlots(["0"], 3).memory_fraction) == (3, 1 / 3)
    assert (GpuSlots(["0", "1"], 2).per_gpu, GpuSlots(["0", "1"], 2).memory_fraction) == (1, None)
    assert (GpuSlots(["0", "1", "2"], 2).per_gpu, GpuSlots(["0", "1", "2"], 2).memory_fraction) == (1, None)


def test_a_run_of_several_processes_takes_one_gpu_each_and_waits_for_room():
    slots = GpuSlots(["0", "1", "2"], 3)  # one run per GPU
    assert slots.place("single") == Placement(("0",))
    assert slots.place("pair", 2) == Placement(("1", "2"))
    assert slots.place("next") is None  # every GPU is full: the runner keeps the job pending
    slots.release("single")
    assert slots.place("next pair", 2) is None  # one GPU free is not enough for two processes
    assert slots.place("next") == Placement(("0",))
    slots.release("pair")
    assert slots.occupancy == {"0": 1, "1": 0, "2": 0}
    assert Placement(("1", "2")).environment() == {"CUDA_VISIBLE_DEVICES": "1,2"}
    assert Placement(("3",), 0.25).environment() == {
        "CUDA_VISIBLE_DEVICES": "3",
        "HARNESS_GPU_MEMORY_FRACTION": "0.25",
    }


class TimedProcess:
    """A fake child that ends, successfully, on its `polls`-th poll (writing the status a run leaves)."""

    def __init__(self, job: Job, polls: int) -> None:
        self.job, self.polls, self.pid = job, polls, 4242

    def poll(self):
        self.polls -= 1
        if self.polls > 0:
            return None
        self.job.run_dir.mkdir(parents=True, exist_ok=True)
        (self.job.run_dir / "status").write_text("completed\n")
        return 0

    def wait(self, timeout=None):
        self.polls = 0
        return self.poll()

    def send_signal(self, sig):
        pass

    def kill(self):
        pass


class RecordingLauncher:
    """Records each child's environment as the runner builds it, and the GPU occupancy at every start."""

    def __init__(self, workers: int, polls: dict[str, int] | None = None) -> None:
        self.workers = workers
        self.polls = polls or {}
        self.environments: list[tuple[str, dict[str, str]]] = []
        self.processes: list[TimedProcess] = []
        self.busiest = 0  # the most runs seen on one GPU at once

    def __call__(self, job: Job) -> TimedProcess:
        env = supervisor.child_environment(self.workers, job, base=BASE_ENVIRONMENT)
        self.environments.append((job.run_dir.name, env))
        visible = [
            self.environments[index][1] for index, process in enumerate(self.processes) if process.polls > 0
        ]
        running = [
            gpu for seen in [*visible, env] for gpu in seen.get("CUDA_VISIBLE_DEVICES", "").split(",") if gpu
        ]
        self.busiest = max(self.busiest, *(running.count(gpu) for gpu in running), 0)
        process = TimedProcess(job, self.polls.get(job.run_dir.name, 2))
        self.processes.append(process)
        return process

    def gpus(self) -> list[str | None]:
        return [env.get("CUDA_VISIBLE_DEVICES") for _, env in self.environments]


def independent_jobs(root: Path, count: int, processes: int = 1) -> list[Job]:
    return [
        Job(root / "g" / f"j{index}", ("run",), (), root / f"j{index}.log", processes=processes)
        for index in range(count)
    ]


def test_two_gpus_four_workers_two_runs_per_gpu_and_a_finished_runs_gpu_is_reused(tmp_path):
    jobs = independent_jobs(tmp_path, 6)
    # j1 ends first (on GPU 1); the others run long enough that j4 can only take j1's place.
    launcher = RecordingLauncher(4, polls={"j0": 12, "j1": 2, "j2": 12, "j3": 12, "j4": 12, "j5": 2})
    outcomes, stopped = supervisor.execute(
        jobs, workers=4, launch=launcher, poll_seconds=0, gpus=GpuSlots(["0", "1"], 4)
    )
    assert not stopped and [outcome.state for outcome in outcomes] == [COMPLETED] * 6
    assert [name for name, _ in launcher.environments][:5] == ["j0", "j1", "j2", "j3", "j4"]
    assert launcher.gpus()[:5] == ["0", "1", "0", "1", "1"]
    assert launcher.busiest == 2
    assert {env["HARNESS_GPU_MEMORY_FRACTION"] for _, env in launcher.environments} == {"0.5"}
    # The outcomes keep the planned job: where a run ran is the launcher's business only.
    assert all(outcome.job.placement is None for outcome in outcomes)


def test_a_run_of_two_processes_waits_until_both_gpus_have_room(tmp_path):
    single = independent_jobs(tmp_path, 2)
    double = Job(tmp_path / "g" / "pair", ("run",), (), tmp_path / "pair.log", processes=2)
    launcher = RecordingLauncher(2, polls={"j0": 3, "j1": 6, "pair": 2})
    outcomes, _ = supervisor.execute(
        [*single, double], workers=2, launch=launcher, poll_seconds=0, gpus=GpuSlots(["0", "1"], 2)
    )
    assert [outcome.state for outcome in outcomes] == [COMPLETED] * 3
    assert launcher.gpus() == ["0", "1", "0,1"]
    assert launcher.busiest == 1  # the pair started only once j0 and j1 had both ended
    assert all("HARNESS_GPU_MEMORY_FRACTION" not in env for _, env in launcher.environments)


def run_fake_sweep(tmp_path: Path, workers: int, gpu_option: str = "auto") -> RecordingLauncher:
    path = synthetic_plasticity(tmp_path)
    launcher = RecordingLauncher(workers)
    out = io.StringIO()
    code = sweep.run_sweep(
        path, workers=workers, runs_dir=tmp_path / "runs", out=out, launch=launcher, gpus=gpu_option
    )
    assert code == 0, out.getvalue()
    assert len(launcher.environments) == 6
    return launcher


def test_without_gpus_the_children_environment_is_exactly_as_before(tmp_path, monkeypatch):
    no_nvidia_smi(tmp_path, monkeypatch)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    launcher = run_fake_sweep(tmp_path, workers=2)
    # What the runner gave every child before GPU placement existed: the runner's environment, the
    # worker's share of the cores for the pools the user did not set, the sweep command's own variables.
    before = {**BASE_ENVIRONMENT, "MKL_NUM_THREADS": "2"}
    assert [env for _, env in launcher.environments] == [before] * 6


@pytest.mark.parametrize("gpu_option", ["none", "auto"])
def test_no_run_is_placed_with_gpus_none_or_an_empty_listing(tmp_path, monkeypatch, gpu_option):
    fake_nvidia_smi(tmp_path, monkeypatch, listing(2) if gpu_option == "none" else "exit 0")
    launcher = run_fake_sweep(tmp_path, workers=2, gpu_option=gpu_option)
    assert launcher.gpus() == [None] * 6
    assert all("HARNESS_GPU_MEMORY_FRACTION" not in env for _, env in launcher.environments)


def test_a_sweep_on_two_gpus_with_four_workers_places_every_run(tmp_path, monkeypatch):
    fake_nvidia_smi(tmp_path, monkeypatch, listing(2))
    launcher = run_fake_sweep(tmp_path, workers=4)
    assert set(launcher.gpus()) == {"0", "1"}
    assert launcher.busiest <= 2
    assert {env["HARNESS_GPU_MEMORY_FRACTION"] for _, env in launcher.environments} == {"0.5"}


def test_cuda_visible_devices_3_5_gives_children_3_or_5(tmp_path, monkeypatch):
    fake_nvidia_smi(tmp_path, monkeypatch, "exit 1")  # must not be asked
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    launcher = run_fake_sweep(tmp_path, workers=2)
    assert set(launcher.gpus()) == {"3", "5"}
    # Two workers on two GPUs: one run per GPU, each with all of its memory.
    assert all("HARNESS_GPU_MEMORY_FRACTION" not in env for _, env in launcher.environments)


def test_gpus_1_restricts_the_runs_to_gpu_1(tmp_path, monkeypatch):
    fake_nvidia_smi(tmp_path, monkeypatch, listing(2))
    launcher = run_fake_sweep(tmp_path, workers=3, gpu_option="1")
    assert launcher.gpus() == ["1"] * 6
    assert {env["HARNESS_GPU_MEMORY_FRACTION"] for _, env in launcher.environments} == {repr(1 / 3)}


def test_a_dry_run_asks_nvidia_smi_only_to_check_a_list(tmp_path, monkeypatch):
    calls = fake_nvidia_smi(tmp_path, monkeypatch, listing(2))
    path = synthetic_plasticity(tmp_path)
    for option in ("auto", "none", "1"):
        out = io.StringIO()
        assert sweep.run_sweep(path, runs_dir=tmp_path / "runs", dry_run=True, out=out, gpus=option) == 0
        assert out.getvalue().startswith("sweep tiny: 4 grid points -> 6 runs (0 already complete)\n")
    assert calls.read_text().splitlines() == ["-L"]  # for the list only
    with pytest.raises(UserError, match="^--gpus: 2: GPU 2 is not available"):
        sweep.run_sweep(path, runs_dir=tmp_path / "runs", dry_run=True, out=io.StringIO(), gpus="2")


def files_under(root: Path) -> list[str]:
    """Every path below `root` but the fake nvidia-smi's record of its calls."""
    return sorted(str(path.relative_to(root)) for path in root.rglob("*") if path.name != "nvidia-smi-calls")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            "0;1",
            "error: --gpus: '0;1' is not auto, none or a comma-separated list of GPU indices such as 0,1",
        ),
        ("7", "error: --gpus: 7: GPU 7 is not available (available: 0, 1, per nvidia-smi -L)"),
    ],
)
def test_the_cli_refuses_a_bad_gpus_option_in_one_line_creating_nothing(tmp_path, monkeypatch, spec, message):
    fake_nvidia_smi(tmp_path, monkeypatch, listing(2))
    path = synthetic_plasticity(tmp_path)
    before = files_under(tmp_path)
    result = CliRunner().invoke(
        cli.app, ["sweep", "run", str(path), "--runs-dir", str(tmp_path / "runs"), "--gpus", spec]
    )
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == [message]
    assert result.stdout == ""
    assert files_under(tmp_path) == before


# ---------------------------------------------------------------------------------------------------------
# The run's side: its share of the GPU's memory


def test_the_run_reads_the_same_variable_the_sweep_writes():
    from harness.engine import distributed

    assert distributed.MEMORY_FRACTION_VARIABLE == gpus.MEMORY_FRACTION_VARIABLE


@pytest.mark.parametrize("value", ["0", "-0.5", "1.5", "nan", "inf", "", "half", "0.5.1"])
def test_a_bad_memory_fraction_is_a_user_error_naming_the_variable(monkeypatch, value):
    from harness.engine import distributed

    monkeypatch.setenv("HARNESS_GPU_MEMORY_FRACTION", value)
    with pytest.raises(UserError) as refused:
        distributed.dist_info_from_env("cpu")  # checked on any device, so a CPU machine finds the mistake
    assert str(refused.value) == (
        f"HARNESS_GPU_MEMORY_FRACTION={value!r}: must be a number in (0, 1], this run's share of its GPU's memory"
    )


def test_the_memory_fraction_caps_the_allocator_of_the_runs_gpu(monkeypatch):
    import torch

    from harness.engine import distributed

    capped: list[tuple[float, torch.device]] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f, d: capped.append((f, d)))
    monkeypatch.setenv("HARNESS_GPU_MEMORY_FRACTION", "0.5")
    assert distributed.dist_info_from_env("auto").device == torch.device("cuda", 0)
    assert capped == [(0.5, torch.device("cuda", 0))]
    assert distributed.dist_info_from_env("cpu").device == torch.device("cpu")  # nothing to cap on a CPU
    monkeypatch.delenv("HARNESS_GPU_MEMORY_FRACTION")
    distributed.dist_info_from_env("auto")
    assert capped == [(0.5, torch.device("cuda", 0))]


def test_a_run_given_a_bad_memory_fraction_exits_2_in_one_line_creating_nothing(harness_cli, monkeypatch):
    monkeypatch.setenv("HARNESS_GPU_MEMORY_FRACTION", "2")
    result = harness_cli.invoke("run", "dense", *harness_cli.mnist1d(), "--wandb", "disabled")
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        "error: HARNESS_GPU_MEMORY_FRACTION='2': must be a number in (0, 1], this run's share of its GPU's memory"
    ]
    assert not harness_cli.runs_dir.exists()


# ---------------------------------------------------------------------------------------------------------
# Throughput


def test_the_throughput_lines_say_runs_wall_time_runs_per_hour_and_samples_per_second():
    assert Throughput(started=3, completed=2, wall_s=90.0, samples=12345, counted=3).lines() == [
        "ran 3 runs (2 completed) in 1m30s: 80 completed runs/h",
        "trained 12,345 samples (steps x batch size): 137 samples/s",
    ]
    assert Throughput(started=2, completed=2, wall_s=7.5, samples=640, counted=1).lines() == [
        "ran 2 runs (2 completed) in 7.5 s: 960 completed runs/h",
        "trained 640 samples (steps x batch size, from the 1 run with readable files): 85.3 samples/s",
    ]
    assert (
        Throughput(1, 0, 4000.0, 0, 1).lines()[0] == "ran 1 run (0 completed) in 1h06m40s: 0 completed runs/h"
    )


def write_run(run_dir: Path, steps: list[int], batch_size: int | None = 32) -> None:
    """The files a run leaves that the ledger reads: config.yaml and one metrics record per step."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if batch_size is not None:
        (run_dir / "config.yaml").write_text(yaml.safe_dump({"optim": {"batch_size": batch_size}}))
    with open(run_dir / "metrics.jsonl", "a") as metrics:
        for step in steps:
            metrics.write(json.dumps({"kind": "train", "step": step}) + "\n")


def test_the_ledger_counts_only_the_steps_trained_in_this_invocation(tmp_path):
    jobs = independent_jobs(tmp_path, 7)
    fresh, probe, resumed, failed, no_config, damaged, skipped = jobs
    write_run(resumed.run_dir, [0, 10, 20], batch_size=16)  # an earlier invocation reached step 20
    write_run(skipped.run_dir, [0, 10])  # complete before the sweep: never started

    def launch(job: Job) -> TimedProcess:  # the runs' work, done at once
        if job is fresh:
            write_run(job.run_dir, [0, 7, 14])
        elif job is probe:
            write_run(job.run_dir, [70, 80, 140])  # a probe starts at its probe epoch's step
        elif job is resumed:
            write_run(job.run_dir, [20, 30, 50], batch_size=16)
        elif job is no_config:
            write_run(job.run_dir, [0, 9], batch_size=None)
        elif job is damaged:
            write_run(job.run_dir, [0, 9])
            with open(job.run_dir / "metrics.jsonl", "a") as metrics:
                metrics.write("not json\n")
            write_run(job.run_dir, [18])
        return TimedProcess(job, 1)  # `failed` wrote nothing: it stopped before training

    ledger = StepLedger(launch)
    for job in jobs[:-1]:
        ledger(job)
    assert [ledger.samples(job.run_dir) for job in jobs] == [14 * 32, 70 * 32, 30 * 16, 0, None, None, None]
    states = [COMPLETED, COMPLETED, COMPLETED, FAILED, COMPLETED, COMPLETED, COMPLETED]
    outcomes = [supervisor.Outcome(job, state) for job, state in zip(jobs, states, strict=True)]
    assert Throughput.measure(outcomes, ledger, 10.0) == Throughput(
        started=6, completed=5, wall_s=10.0, samples=14 * 32 + 70 * 32 + 30 * 16, counted=4
    )


def test_a_finished_sweep_reports_no_throughput_a_run_sweep_does(tmp_path, monkeypatch):
    no_nvidia_smi(tmp_path, monkeypatch)
    path = synthetic_plasticity(tmp_path)
    jobs = sweep_plan.plan_jobs(sweep_file.load_sweep(path), runs_dir=tmp_path / "runs")
    report = sweep.format_report(sweep_file.load_sweep(path), [supervisor.Outcome(jobs[0], COMPLETED)])
    assert report.splitlines() == ["sweep tiny: 1 runs", "  completed                           1"]
    throughput = Throughput(started=1, completed=1, wall_s=2.0, samples=64, counted=1)
    report = sweep.format_report(
        sweep_file.load_sweep(path), [supervisor.Outcome(jobs[0], COMPLETED)], throughput
    )
    assert report.splitlines()[2:] == throughput.lines()


@pytest.mark.slow
def test_a_real_sweep_reports_the_samples_its_runs_trained(tmp_path, monkeypatch, isolated_environment):
    """A synthetic plasticity sweep (base, control, two probes) on a fake single GPU with two workers: the
    children accept the memory share they are given (here they compute on the CPU), and the report counts
    2 epochs of 7 steps of 32 samples for the base and the second epoch for the control and each probe."""
    fake_nvidia_smi(tmp_path, monkeypatch, listing(1))
    path = synthetic_plasticity(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["parameters"]["pruning_rate"] = {"values": [0.5]}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    runs = tmp_path / "runs"
    out = io.StringIO()
    assert sweep.run_sweep(path, workers=2, runs_dir=runs, out=out) == 0
    summaries = [json.loads(found.read_text()) for found in sorted(runs.glob("*/*/summary.json"))]
    assert [(summary["steps"], summary["epochs"]) for summary in summaries] == [(14, 2)] * 4
    lines = out.getvalue().splitlines()
    assert lines[:2] == ["sweep tiny: 4 runs", "  completed                           4"]
    assert lines[2].startswith("ran 4 runs (4 completed) in ")
    assert lines[3].startswith(f"trained {(14 + 7 + 7 + 7) * 32:,} samples (steps x batch size): ")
    assert len(lines) == 4

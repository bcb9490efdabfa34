"""`harness sweep submit FILE`: a sweep's planned runs as SLURM job arrays, submitted with submitit.

The grid is planned exactly as for the local runner (`harness.launch.sweep.plan_jobs`: same run ids, dependencies
first, shared base runs and controls once). The runs that are not complete are cut into dependency levels:
level 0 holds the runs whose needs are all complete, level L the runs that need one of level L-1. Each
level is one job array (several above SLURM's MaxArraySize), one task per run, and the arrays of level L
start only when those of level L-1 have ended
(`--dependency=afterany`). `afterany` rather than `afterok`: one failed base run must not hold back the
probes of every other base run; each task checks its own needs instead and fails, naming the need, when one
of them is not complete. So a probe never starts before its base run has completed, and one failure stops
only the runs that depend on it, as in the local runner.

Each task runs one planned command (`python -m harness.cli ...`, torchrun inside it with
`--nproc-per-node`), with its output appended to the same `<runs_dir>/.sweeps/<sweep>/<run_id>.log` the
local runner writes, and skips a run that completed since planning. What a submission wrote, all under
`<runs_dir>/.sweeps/<sweep>/`:

    submissions/<time>.json   the plan and the job ids, one file per submission (never rewritten)
    tasks/<run_id>.json       the last task's state for that run: running, completed, failed, blocked
    submitit/                 submitit's pickles and the tasks' own stdout/stderr

`harness sweep status FILE` plans the sweep again and joins the run store, those records and what
squeue (and sacct, where accounting is enabled) say about the job ids.

With `--cluster local` submitit's local executor runs the same tasks on this machine: it knows no
dependencies, so the submitter itself waits for each level to end before it submits the next one, and
returns when everything has ended.

Over 450 lines on purpose: submission, the per-task runner and the status report share one record format
and one plan, and change together.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol, TextIO

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from harness.errors import UserError
from harness.launch.supervisor import child_environment, judge
from harness.launch.sweep_file import MAX_POINTS, Sweep, grid_points, load_sweep, unsafe
from harness.launch.sweep_plan import Job, plan_jobs
from harness.launch.torchrun import die_with_parent
from harness.store import rundir
from harness.store.rundir import is_completed
from harness.store.rundir import read_status_or_damaged as read_status

log = logging.getLogger(__name__)

SUBMISSIONS = "submissions"
TASKS = "tasks"
SUBMITIT = "submitit"

# What squeue/sacct may say about a job (their long state names), grouped as the status report counts them.
QUEUED_STATES = frozenset(
    {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "SUSPENDED", "RESV_DEL_HOLD"}
)
RUNNING_STATES = frozenset({"RUNNING", "COMPLETING", "CONFIGURING", "RESIZING", "SIGNALING", "STAGE_OUT"})
ENDED_STATES = frozenset(
    {
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "BOOT_FAIL",
        "DEADLINE",
        "REVOKED",
        "SPECIAL_EXIT",
    }
)

# States in the status report.
QUEUED = "queued"
RUNNING = "running"
COMPLETED = "completed"
FAILED = "failed"
NOT_SUBMITTED = "not submitted"
REPORT_STATES = (QUEUED, RUNNING, COMPLETED, FAILED, NOT_SUBMITTED)


# ---------------------------------------------------------------------------------------------------------
# Options


# SLURM keeps CPU and GPU counts in 16 bits; a larger number is a typo that sbatch would refuse late.
MAX_COUNT = 65535


def batch_script_value(value: str) -> str:
    """A value submitit writes into an `#SBATCH` line: a line break there would end the header and make the
    rest shell lines of the job script, so control characters are refused, as is an empty value."""
    if not value.strip():
        raise ValueError("must not be empty")
    bad = next((character for character in value if unsafe(character)), None)
    if bad is not None:
        raise ValueError(f"must not contain control characters or line breaks (found U+{ord(bad):04X})")
    return value


class SlurmOptions(BaseModel):
    """What `harness sweep submit` asks the scheduler for, per task (one task = one planned run).

    Every value here reaches the batch script's `#SBATCH` header (tests/test_sweep_hostile.py renders it).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    cluster: Literal["slurm", "local"] = "slurm"
    partition: str | None = None
    gpus_per_task: int = Field(0, ge=0, le=MAX_COUNT)  # 0: no GPUs
    cpus_per_task: int | None = Field(None, ge=1, le=MAX_COUNT)
    time: str = "60"  # SLURM's --time syntax; checked by the validator below
    array_parallelism: int = Field(256, ge=1, le=MAX_COUNT)
    extra: dict[str, str] = Field(default_factory=dict)  # more sbatch options: --slurm-arg KEY=VALUE

    @field_validator("time")
    @classmethod
    def _time_is_slurm_syntax(cls, value: str) -> str:
        time_minutes(value)
        return value

    @field_validator("partition")
    @classmethod
    def _partition_is_a_name(cls, value: str | None) -> str | None:
        if value is not None and any(character.isspace() for character in batch_script_value(value)):
            raise ValueError("a partition name (or a comma-separated list) has no spaces")
        return value

    @field_validator("extra")
    @classmethod
    def _extra_values_fit_the_header(cls, extra: dict[str, str]) -> dict[str, str]:
        for key, value in extra.items():
            try:
                batch_script_value(value)
            except ValueError as error:
                raise ValueError(f"{key}: {error}") from None
        return extra

    @property
    def minutes(self) -> int:
        return time_minutes(self.time)


FLAG_NAMES = {
    "cluster": "--cluster",
    "partition": "--partition",
    "gpus_per_task": "--gpus-per-task",
    "cpus_per_task": "--cpus-per-task",
    "time": "--time",
    "array_parallelism": "--array-parallelism",
    "extra": "--slurm-arg",
}


def slurm_options(*, slurm_args: Sequence[str] = (), **flags: Any) -> SlurmOptions:
    """The CLI's flags as SlurmOptions; a bad value is a UserError naming the flag."""
    extra: dict[str, str] = {}
    for item in slurm_args:
        key, equals, value = item.partition("=")
        if not equals or not re.fullmatch(r"[a-z][a-z0-9-]*", key):
            raise UserError(
                f"--slurm-arg: expected an sbatch option as KEY=VALUE, e.g. account=proj (got {item!r})"
            )
        if key in RESERVED_SBATCH_OPTIONS:
            raise UserError(f"--slurm-arg: {key} is set by the harness; use {RESERVED_SBATCH_OPTIONS[key]}")
        extra[key] = value
    try:
        return SlurmOptions(
            extra=extra, **{name: value for name, value in flags.items() if value is not None}
        )
    except ValidationError as error:
        first = error.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else ""
        message = first["msg"].removeprefix("Value error, ")
        raise UserError(f"{FLAG_NAMES.get(field, field)}: {message} (got {first.get('input')!r})") from None


# sbatch options the submitter derives itself; passing them again would contradict the plan.
RESERVED_SBATCH_OPTIONS = {
    "array": "--array-parallelism",
    "dependency": "nothing: the levels set it",
    "time": "--time",
    "partition": "--partition",
    "gpus-per-node": "--gpus-per-task",
    "cpus-per-task": "--cpus-per-task",
    "ntasks-per-node": "nothing: one task per run",
    "output": "nothing: logs go under <runs_dir>/.sweeps/",
    "error": "nothing: logs go under <runs_dir>/.sweeps/",
    # submitit's own: its job names, its time-limit signal (how a task learns to stop) and its log mode.
    "job-name": "nothing: the sweep names its arrays",
    "signal": "nothing: submitit's time-limit warning needs its own",
    "open-mode": "nothing: the logs are appended",
    "nodes": "nothing: one node per run",
}

# SLURM's forms of a time limit: D days, H hours, M minutes, S seconds, every field after the first within
# its unit (minutes and seconds below 60, hours below 24).
_TIME_FORMATS = (
    r"(?P<M>\d+)",
    r"(?P<M>\d+):(?P<S>\d{1,2})",
    r"(?P<H>\d+):(?P<M>\d{1,2}):(?P<S>\d{1,2})",
    r"(?P<D>\d+)-(?P<H>\d{1,2})",
    r"(?P<D>\d+)-(?P<H>\d{1,2}):(?P<M>\d{1,2})",
    r"(?P<D>\d+)-(?P<H>\d{1,2}):(?P<M>\d{1,2}):(?P<S>\d{1,2})",
)
# A year: far beyond any partition's MaxTime, far below the 32 bits SLURM keeps minutes in.
MAX_TIME_MINUTES = 365 * 1440
_TIME_SYNTAX = "expected SLURM's time syntax: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS"


def time_minutes(text: str) -> int:
    """SLURM's time syntax (minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS) in whole minutes, rounded up
    (submitit takes minutes), between one minute and MAX_TIME_MINUTES."""
    if len(text) > 32:  # int() of thousands of digits is slow, then refused; no real limit is this long
        raise ValueError(_TIME_SYNTAX)
    for pattern in _TIME_FORMATS:
        match = re.fullmatch(pattern, text, flags=re.ASCII)  # no stripping: "60\n..." is not a time
        if match is None:
            continue
        fields = {unit: int(value) for unit, value in match.groupdict().items() if value is not None}
        leading = next(iter(fields))
        limits = {"H": 24, "M": 60, "S": 60}
        for unit, value in fields.items():
            if unit != leading and value >= limits[unit]:
                raise ValueError("minutes and seconds must be below 60, and hours below 24 after days")
        seconds = fields.get("S", 0)
        total = 1440 * fields.get("D", 0) + 60 * fields.get("H", 0) + fields.get("M", 0) + (seconds > 0)
        if not 1 <= total <= MAX_TIME_MINUTES:
            raise ValueError(f"must be between 1 minute and 365 days ({MAX_TIME_MINUTES} minutes)")
        return total
    raise ValueError(_TIME_SYNTAX)


# ---------------------------------------------------------------------------------------------------------
# Levels: one array each


def plan_levels(jobs: Sequence[Job]) -> list[list[Job]]:
    """The jobs that are not complete, by dependency level (grid order within a level).

    A complete need does not count: a probe whose base run completed earlier goes into level 0.
    """
    level: dict[Path, int] = {}
    for job in jobs:  # plan_jobs orders needs before the jobs that need them
        if is_completed(job.run_dir):
            continue
        level[job.run_dir] = 1 + max((level[need] for need in job.needs if need in level), default=-1)
    levels: list[list[Job]] = [[] for _ in range(1 + max(level.values(), default=-1))]
    for job in jobs:
        if job.run_dir in level:
            levels[level[job.run_dir]].append(job)
    return levels


# SLURM's default MaxArraySize is 1001 (task ids 0-1000): a larger level becomes several arrays.
MAX_ARRAY_TASKS = 1000


@dataclass(frozen=True)
class Array:
    level: int
    jobs: list[Job]


def plan_arrays(levels: Sequence[Sequence[Job]], max_tasks: int = MAX_ARRAY_TASKS) -> list[Array]:
    """Each level as one array, or as several of at most `max_tasks` tasks."""
    return [
        Array(index, list(level[start : start + max_tasks]))
        for index, level in enumerate(levels)
        for start in range(0, len(level), max_tasks)
    ]


def sweep_folder(jobs: Sequence[Job], sweep: Sweep) -> Path:
    """`<runs_dir>/.sweeps/<sweep>/`, next to the local runner's logs (that of the first planned run)."""
    if not jobs:
        raise UserError(f"{sweep.path}: the sweep plans no runs")
    return jobs[0].log_path.parent


# ---------------------------------------------------------------------------------------------------------
# The task: what runs on a node


class TaskFailed(RuntimeError):
    """The task's run did not complete; raised so that SLURM (and submitit) mark the task failed."""


@dataclass(frozen=True)
class Task:
    """One planned run as submitit pickles it: the sweep's Job and where the task writes its record."""

    job: Job
    record_path: Path

    def __call__(self) -> str:
        return run_task(self.job, self.record_path)


def current_job_id() -> str:
    """The scheduler's id of this task (`<array>_<index>` in an array), as the submission recorded it."""
    import submitit

    try:
        return str(submitit.JobEnvironment().job_id)
    except RuntimeError:  # not started by submitit (a test, or by hand)
        return ""


def run_task(job: Job, record_path: Path, *, job_id: str | None = None) -> str:
    """Run one planned command unless its run completed meanwhile; refuse to start before its needs completed.

    Returns the outcome ("already complete", "completed"); raises TaskFailed otherwise, after writing the
    record, so the scheduler's state and the record agree.
    """
    job_id = current_job_id() if job_id is None else job_id
    record = {
        "run_dir": str(job.run_dir),
        "job_id": job_id,
        "host": os.uname().nodename,
        "started": time.time(),
    }
    if is_completed(job.run_dir):
        write_record(
            record_path, {**record, "state": COMPLETED, "detail": "already complete", "ended": time.time()}
        )
        return "already complete"
    missing = [need for need in job.needs if not is_completed(need)]
    if missing:
        detail = f"needs {missing[0]}, which is not complete (status: {read_status(missing[0])})"
        write_record(record_path, {**record, "state": "blocked", "detail": detail, "ended": time.time()})
        raise TaskFailed(f"{job.run_dir}: {detail}")
    write_record(record_path, {**record, "state": RUNNING})
    try:
        code = run_command(job)
    except BaseException as error:
        # submitit's handler of SLURM's warning signal (USR2, 90 s before the time limit) raises here; the run
        # gets SIGTERM when this process ends (it dies with its parent), checkpoints and stops.
        detail = f"the task was stopped ({type(error).__name__}: {error}); submit again to resume the run"
        write_record(record_path, {**record, "state": FAILED, "detail": detail, "ended": time.time()})
        raise
    outcome = judge(job, code)
    state = COMPLETED if outcome.state == COMPLETED else FAILED
    write_record(
        record_path,
        {**record, "state": state, "detail": outcome.detail, "exit_code": code, "ended": time.time()},
    )
    if state != COMPLETED:
        raise TaskFailed(f"{job.run_dir}: {outcome.detail}; log: {job.log_path}")
    return outcome.state


def run_command(job: Job) -> int:
    """`python -m harness.cli <argv>` with its output appended to the run's sweep log.

    Returns the exit code, or 3 (stopped, resumable) when a SIGTERM to this task ended the run.
    """

    job.log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(job.log_path, "a") as log_file:
        stamp = datetime.now().isoformat(timespec="seconds")
        log_file.write(f"=== start {stamp} on {os.uname().nodename}: harness {' '.join(job.argv)}\n")
        log_file.flush()
        process = subprocess.Popen(
            [sys.executable, "-m", "harness.cli", *job.argv],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            # The task owns the cores SLURM gave it (its affinity), as one local worker owns its share.
            env=child_environment(1, job),
            preexec_fn=die_with_parent(),
        )
        return wait_for_run(process)


def wait_for_run(process: subprocess.Popen) -> int:
    """Wait for the run; a SIGTERM (scancel, the time limit, the local executor) makes it checkpoint and stop.

    SLURM signals every process of the task itself, the run and its torchrun workers included, so under
    SLURM the signal is only noted: passed on as well, it would reach torchrun twice and cut its shutdown
    short. Not harness.cli's wait_passing_on_stop, which always passes it on (and importing harness.cli
    imports torch, seconds per task).
    """
    stops: list[int] = []
    under_slurm = "SLURM_JOB_ID" in os.environ

    def on_stop(signum: int, frame: Any) -> None:
        if not stops and not under_slurm:
            process.send_signal(signum)
        stops.append(signum)

    previous = signal.signal(signal.SIGTERM, on_stop)
    try:
        code = process.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 3 if stops and code != 0 else code


def write_record(path: Path, record: Mapping[str, Any]) -> None:
    """Write a record atomically (`harness.store.rundir.atomic_write_text`): a reader sees the old one or the new one."""
    rundir.atomic_write_text(path, json.dumps(dict(record), sort_keys=True) + "\n")


def read_json(path: Path) -> dict[str, Any] | None:
    """A record, or None when it is absent; a damaged one is a warning naming the file, then None."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        log.warning("%s: unreadable sweep record, ignored (%s)", path, error)
        return None
    if not isinstance(data, dict):
        log.warning("%s: unreadable sweep record, ignored (not a JSON object)", path)
        return None
    return data


# ---------------------------------------------------------------------------------------------------------
# Submitting


class Submitter(Protocol):
    def submit(self, tasks: Sequence[Task], after: str | None, name: str) -> list[str]:
        """Submit one array; returns the tasks' job ids, in order.

        `after`: the job ids of the arrays it must wait for, colon-separated as sbatch's --dependency takes
        them (None for the first level).
        """

    def finish(self) -> None:
        """Called once after the last array (the local executor waits here)."""


class SlurmSubmitter:
    def __init__(self, folder: Path, options: SlurmOptions) -> None:
        import submitit

        if shutil.which("sbatch") is None or shutil.which("srun") is None:
            raise UserError(
                "sweep submit: sbatch and srun not found on this machine; submit from a SLURM login node"
            )
        self.executor = submitit.SlurmExecutor(folder=folder / SUBMITIT / "%j")
        self.parameters: dict[str, Any] = {
            "time": options.minutes,
            "nodes": 1,
            "ntasks_per_node": 1,  # torchrun inside the task starts the per-GPU workers
            "array_parallelism": options.array_parallelism,
            "stderr_to_stdout": True,
            "additional_parameters": dict(options.extra),
        }
        if options.partition is not None:
            self.parameters["partition"] = options.partition
        if options.gpus_per_task:
            self.parameters["gpus_per_node"] = options.gpus_per_task
        if options.cpus_per_task is not None:
            self.parameters["cpus_per_task"] = options.cpus_per_task

    def submit(self, tasks: Sequence[Task], after: str | None, name: str) -> list[str]:
        from submitit.core.utils import FailedJobError, FailedSubmissionError

        dependency = {"dependency": f"afterany:{after}"} if after is not None else {}
        self.executor.update_parameters(job_name=name, **self.parameters, **dependency)
        try:
            jobs = self.executor.submit_array(list(tasks))
        except (FailedJobError, FailedSubmissionError) as error:
            lines = str(error).strip().splitlines() or ["no message"]
            raise UserError(f"sweep submit: sbatch refused array {name}: {lines[-1]}") from None
        return [str(job.job_id) for job in jobs]

    def finish(self) -> None:
        pass


class LocalSubmitter:
    """submitit's local executor: the same tasks as subprocesses here, a level only after the previous one."""

    def __init__(self, folder: Path, options: SlurmOptions, poll_seconds: float = 0.5) -> None:
        import submitit

        self.executor = submitit.LocalExecutor(folder=folder / SUBMITIT / "%j")
        self.executor.update_parameters(timeout_min=options.minutes, tasks_per_node=1, nodes=1)
        self.parallelism = options.array_parallelism
        self.poll_seconds = poll_seconds
        self.running: list[Any] = []

    def submit(self, tasks: Sequence[Task], after: str | None, name: str) -> list[str]:
        self.wait()  # what `afterany` does on SLURM
        ids: list[str] = []
        for start in range(0, len(tasks), self.parallelism):
            self.wait()
            self.running = self.executor.submit_array(list(tasks[start : start + self.parallelism]))
            ids += [str(job.job_id) for job in self.running]
        return ids

    def wait(self) -> None:
        while not all(job.done() for job in self.running):
            time.sleep(self.poll_seconds)
        self.running = []

    def finish(self) -> None:
        self.wait()


def make_submitter(folder: Path, options: SlurmOptions) -> Submitter:
    if options.cluster == "local":
        return LocalSubmitter(folder, options)
    return SlurmSubmitter(folder, options)


def submit_sweep(
    path: Path,
    options: SlurmOptions,
    *,
    runs_dir: Path | None = None,
    extra_args: Sequence[str] = (),
    dry_run: bool = False,
    out: TextIO | None = None,
    submitter: Callable[[Path, SlurmOptions], Submitter] = make_submitter,
    max_array_tasks: int = MAX_ARRAY_TASKS,
    max_points: int = MAX_POINTS,
) -> int:
    """Submit (or, with dry_run, print) the sweep's runs that are not complete as one array per level."""
    out = sys.stdout if out is None else out
    sweep = load_sweep(path)
    points = grid_points(sweep, max_points)
    jobs = plan_jobs(sweep, runs_dir=runs_dir, extra_args=list(extra_args), max_points=max_points)
    folder = sweep_folder(jobs, sweep)
    if any(unsafe(character) for character in str(folder)):
        # submitit writes the folder into `#SBATCH --output=`; a line break there would start shell lines.
        raise UserError(f"--runs-dir: {str(folder)!r} contains control characters or line breaks")
    arrays = plan_arrays(plan_levels(jobs), max_array_tasks)
    done = sum(is_completed(job.run_dir) for job in jobs)
    out.write(
        f"sweep {sweep.name}: {len(points)} grid points -> {len(jobs)} runs ({done} already complete); "
        f"{plural(len(arrays), 'array')} on {describe(options)}\n"
    )
    if dry_run:
        out.write(format_arrays(arrays))
        return 0
    if not arrays:
        return 0
    active = submitter(folder, options)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    submission: dict[str, Any] = {
        "sweep": str(sweep.path),
        "submitted": stamp,
        "options": options.model_dump(),
        "arrays": [],
    }
    record_file = folder / SUBMISSIONS / f"{stamp}.json"
    ids_by_level: dict[int, list[str]] = {}
    for array in arrays:
        # Every array of a level waits for every array of the level before (which waited for its own).
        after = ":".join(ids_by_level.get(array.level - 1, [])) or None
        tasks = [Task(job, folder / TASKS / f"{job.name}.json") for job in array.jobs]
        try:
            ids = active.submit(tasks, after, f"{sweep.name}-{array.level}")
        except UserError as error:
            if not submission["arrays"]:
                raise
            queued = ", ".join(array["job_id"] for array in submission["arrays"])
            raise UserError(
                f"{error}; arrays {queued} are queued already (recorded in {record_file}): "
                "scancel them, or fix the cause and submit again (completed runs are skipped)"
            ) from None
        array_id = ids[0].split("_")[0]
        ids_by_level.setdefault(array.level, []).append(array_id)
        submission["arrays"].append(
            {
                "job_id": array_id,
                "level": array.level,
                "after": after,
                "tasks": [
                    {"job_id": job_id, "run_dir": str(job.run_dir), "argv": list(job.argv)}
                    for job_id, job in zip(ids, array.jobs, strict=True)
                ],
            }
        )
        # Written after every array: if a later sbatch fails, the arrays already queued stay known.
        write_record(record_file, submission)
        dependency = f" after {after.replace(':', ', ')} ends" if after is not None else ""
        out.write(f"  array {array_id}: {plural(len(array.jobs), 'task')}{dependency}\n")
    out.write(f"  plan and job ids: {record_file}\n")
    active.finish()
    if options.cluster == "local":
        report = sweep_status(
            path, runs_dir=runs_dir, extra_args=extra_args, queue=None, max_points=max_points
        )
        out.write(format_status(report))
        return 0 if report.counts[COMPLETED] == len(report.rows) else 1
    return 0


def describe(options: SlurmOptions) -> str:
    if options.cluster == "local":
        return "submitit's local executor"
    parts = [f"partition {options.partition}" if options.partition else "the default partition"]
    parts.append(f"{options.gpus_per_task} GPUs" if options.gpus_per_task else "no GPUs")
    if options.cpus_per_task:
        parts.append(f"{options.cpus_per_task} CPUs")
    parts.append(f"--time {options.time}")
    parts.append(f"at most {options.array_parallelism} tasks of an array at once")
    parts += [f"--{key}={value}" for key, value in options.extra.items()]
    return "SLURM, per task: " + ", ".join(parts)


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def format_arrays(arrays: Sequence[Array]) -> str:
    lines: list[str] = []
    for number, array in enumerate(arrays, start=1):
        before = [
            str(other) for other, earlier in enumerate(arrays, start=1) if earlier.level == array.level - 1
        ]
        after = f", after array {', '.join(before)} ends (afterany)" if before else ""
        lines.append(f"  array {number}: {plural(len(array.jobs), 'task')}{after}")
        for task, job in enumerate(array.jobs):
            lines.append(f"    [{task}] {job.run_dir}")
            lines.append(f"        harness {' '.join(job.argv)}")
    return "\n".join(lines) + ("\n" if lines else "")


# ---------------------------------------------------------------------------------------------------------
# Status


@dataclass(frozen=True)
class StatusRow:
    job: Job
    state: str
    job_id: str | None = None
    detail: str = ""


@dataclass(frozen=True)
class StatusReport:
    sweep: Sweep
    rows: list[StatusRow]
    submissions: int
    scheduler: str  # what the job states came from

    @property
    def counts(self) -> Counter[str]:
        return Counter(row.state for row in self.rows)


def read_submissions(folder: Path) -> list[dict[str, Any]]:
    directory = folder / SUBMISSIONS
    if not directory.is_dir():
        return []
    found = [read_json(path) for path in sorted(directory.glob("*.json"))]
    return [submission for submission in found if submission is not None]


def latest_job_ids(submissions: Sequence[Mapping[str, Any]]) -> dict[str, tuple[str, str]]:
    """run_dir -> (job id, cluster) of the last task submitted for it."""
    latest: dict[str, tuple[str, str]] = {}
    for submission in submissions:
        cluster = str(submission.get("options", {}).get("cluster", "slurm"))
        for array in submission.get("arrays", []):
            for task in array.get("tasks", []):
                latest[str(task["run_dir"])] = (str(task["job_id"]), cluster)
    return latest


SchedulerStates = dict[str, str]  # job id (`123` or `123_4`) -> long state name


def query_scheduler(job_ids: Sequence[str]) -> SchedulerStates | None:
    """What sacct (where accounting is enabled) and squeue say about the jobs, or None when neither answered."""
    arrays = {job_id.split("_")[0] for job_id in job_ids}
    commands = [
        [
            "sacct",
            "--noheader",
            "--parsable2",
            "--allocations",
            "--format=JobID,State",
            f"--jobs={','.join(sorted(arrays))}",
        ],
        # Not --jobs: squeue refuses the whole list when the controller has forgotten one of them.
        ["squeue", "--noheader", "--array", "--states=all", "--format=%i|%T", f"--user={getpass.getuser()}"],
    ]
    states: SchedulerStates = {}
    answered = False
    for command in commands if arrays else []:
        if shutil.which(command[0]) is None:
            continue
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired) as error:
            log.warning("%s: could not ask the scheduler (%s)", command[0], error)
            continue
        if result.returncode != 0:
            # sacct without accounting storage, squeue without a controller: then the records must do.
            log.debug("%s exited %d: %s", command[0], result.returncode, result.stderr.strip())
            continue
        answered = True
        # squeue last: for the jobs the controller still holds, its view is the newer one.
        states.update(
            (job_id, state)
            for job_id, state in parse_states(result.stdout).items()
            if job_id.split("_")[0] in arrays
        )
    return states if answered else None


def parse_states(text: str) -> SchedulerStates:
    """`JOBID|STATE` lines (squeue --format=%i|%T, sacct --parsable2) -> {job id: state}.

    sacct writes `CANCELLED by 0`; a pending array that squeue did not expand (`12_[3-7%2]`) stands for
    each of its tasks.
    """
    states: SchedulerStates = {}
    for line in text.splitlines():
        job_id, bar, state = line.strip().partition("|")
        if not bar:
            continue
        state = state.split()[0] if state.split() else ""
        expanded = re.fullmatch(r"(\d+)_\[([0-9,\-]+)(?:%\d+)?\]", job_id)
        if expanded:
            for part in expanded[2].split(","):
                low, _, high = part.partition("-")
                for index in range(int(low), int(high or low) + 1):
                    states[f"{expanded[1]}_{index}"] = state
        else:
            states[job_id] = state
    return states


def run_state(
    job: Job, job_id: str | None, record: Mapping[str, Any] | None, queue: SchedulerStates | None
) -> StatusRow:
    """One run's state from the run store, the scheduler and the task's record, in that order of trust."""
    if is_completed(job.run_dir):
        return StatusRow(job, COMPLETED, job_id)
    if job_id is None:
        status = read_status(job.run_dir)
        if status == "failed":
            return StatusRow(job, FAILED, None, "failed outside a submission (run store)")
        return StatusRow(job, NOT_SUBMITTED, None, "" if status is None else f"run store: {status}")
    if record is not None and str(record.get("job_id")) != job_id:
        record = None  # from an earlier submission
    scheduled = None if queue is None else queue.get(job_id)
    if scheduled in QUEUED_STATES:
        return StatusRow(job, QUEUED, job_id)
    if scheduled in RUNNING_STATES:
        return StatusRow(job, RUNNING, job_id)
    if record is not None:
        state = record.get("state")
        detail = str(record.get("detail") or "")
        if state == RUNNING and queue is None:
            return StatusRow(job, RUNNING, job_id)
        if state == RUNNING:
            said = f"the scheduler says {scheduled}" if scheduled else "the scheduler no longer knows the job"
            return StatusRow(
                job, FAILED, job_id, f"the task ended without a result ({said}: killed, timed out?)"
            )
        if state in (FAILED, "blocked"):
            return StatusRow(job, FAILED, job_id, detail)
        if state == COMPLETED:
            return StatusRow(
                job, FAILED, job_id, f"the task ended, but the run store says {read_status(job.run_dir)!r}"
            )
    if scheduled in ENDED_STATES:
        return StatusRow(job, FAILED, job_id, f"job {scheduled} before its task started")
    if queue is None:
        return StatusRow(job, QUEUED, job_id, "not started (no squeue here to ask)")
    return StatusRow(job, FAILED, job_id, "the scheduler no longer knows the job and its task left no record")


def sweep_status(
    path: Path,
    *,
    runs_dir: Path | None = None,
    extra_args: Sequence[str] = (),
    queue: SchedulerStates | None | Literal["ask"] = "ask",
    max_points: int = MAX_POINTS,
) -> StatusReport:
    sweep = load_sweep(path)
    jobs = plan_jobs(sweep, runs_dir=runs_dir, extra_args=list(extra_args), max_points=max_points)
    folder = sweep_folder(jobs, sweep)
    submissions = read_submissions(folder)
    latest = latest_job_ids(submissions)
    if queue == "ask":
        # Local executor ids are process ids: no scheduler knows them.
        queue = query_scheduler([job_id for job_id, cluster in latest.values() if cluster == "slurm"])
    scheduler = "squeue/sacct" if queue is not None else "the run store and the task records"
    rows = []
    for job in jobs:
        job_id, cluster = latest.get(str(job.run_dir), (None, "slurm"))
        record = read_json(folder / TASKS / f"{job.name}.json")
        rows.append(run_state(job, job_id, record, queue if cluster == "slurm" else None))
    return StatusReport(sweep, rows, len(submissions), scheduler)


def format_status(report: StatusReport) -> str:
    width = max(len(state) for state in REPORT_STATES)
    lines = [
        f"sweep {report.sweep.name}: {len(report.rows)} runs, {report.submissions} "
        f"{'submission' if report.submissions == 1 else 'submissions'} (states from {report.scheduler})"
    ]
    lines += [f"  {state:<{width}}  {report.counts[state]:>5}" for state in REPORT_STATES]
    # Queued runs are only counted: in a large sweep they are most of it.
    for row in report.rows:
        if row.state in (FAILED, RUNNING):
            job = f"job {row.job_id}" if row.job_id else "no job"
            detail = f": {row.detail}" if row.detail else ""
            lines.append(f"  {row.state}: {row.job.run_dir} ({job}{detail})")
            if row.state == FAILED:
                lines.append(f"    log: {row.job.log_path}")
    return "\n".join(lines) + "\n"


def status_exit_code(report: StatusReport) -> int:
    """0 when every run completed, 1 when one failed, 3 while runs are still queued, running or unsubmitted."""
    if report.counts[FAILED]:
        return 1
    return 0 if report.counts[COMPLETED] == len(report.rows) else 3

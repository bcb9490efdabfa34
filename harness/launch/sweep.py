"""`harness sweep run FILE.yaml`: run a W&B-format grid sweep locally, in parallel worker processes.

A sweep file is the one a W&B server takes (`wandb sweep FILE`, then `wandb agent` on any machine):
`program`, `command`, `method: grid` and `parameters` with `values`/`value`. Locally, every grid point's
command line is built exactly as the W&B agent would build it, the part after the `harness` program is
handed to `harness.launch.planning.plan_invocation` to learn which run directories it stands for, and those runs
are executed as separate `python -m harness.cli ...` processes:

- run directories shared by many grid points (one plasticity base run serves every probe) run once;
- a run starts only when the runs it needs (base -> control -> probe) have completed, and is skipped,
  and reported, when one of them failed;
- a completed run (`<run_dir>/status` reads `completed`) is skipped without starting a process, so a
  finished sweep re-runs in seconds; an interrupted one is started again and resumes from its checkpoint;
- one failure never stops the others; failures are listed at the end and make the exit code 1;
- on a machine with GPUs, each run is placed on one (`--gpus`, `harness.launch.gpus`);
- the report ends with the invocation's throughput: runs and wall time, runs per hour, training samples
  per second (`Throughput`).

Each job's output goes to `<runs_dir>/.sweeps/<sweep>/<run_id>.log` (appended across attempts, each
attempt opening with a `=== start` line). Children die with the runner (SIGTERM on Linux, so they
checkpoint first), which keeps a re-run after `kill -9` from racing with leftovers.

One job per module: `harness.launch.sweep_file` (the file's schema and grid), `harness.launch.sweep_agent` (the agent's
command line), `harness.launch.sweep_plan` (jobs in dependency order), `harness.launch.supervisor` (child processes);
this module holds the entry point and its reports.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from harness.errors import UserError
from harness.launch.gpus import GpuSlots, choose_gpus
from harness.launch.supervisor import (
    ALREADY,
    BLOCKED,
    COMPLETED,
    FAILED,
    STATES,
    STOPPED,
    Launcher,
    Outcome,
    Process,
    Progress,
    Stop,
    execute,
    subprocess_launcher,
)
from harness.launch.sweep_file import MAX_POINTS, Sweep, grid_points, load_sweep, restrict
from harness.launch.sweep_plan import Job, check_data, plan_jobs, warn_damaged
from harness.store import rundir
from harness.store.rundir import is_completed

log = logging.getLogger(__name__)

LOG_TAIL_LINES = 12
MAX_LOG_TAILS = 5  # failures whose log tail the final report shows


# ---------------------------------------------------------------------------------------------------------
# Reports


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> list[str]:
    try:
        with open(path, errors="replace") as handle:
            return [line.rstrip("\n") for line in deque(handle, maxlen=lines)]
    except FileNotFoundError:
        return []


def format_plan(sweep: Sweep, jobs: Sequence[Job], points: int) -> str:
    done = [job for job in jobs if is_completed(job.run_dir)]
    lines = [f"sweep {sweep.name}: {points} grid points -> {len(jobs)} runs ({len(done)} already complete)"]
    for job in jobs:
        if is_completed(job.run_dir):
            lines.append(f"  complete  {job.run_dir}")
        else:
            needs = f"  (after {', '.join(need.name for need in job.needs)})" if job.needs else ""
            lines.append(f"  to run    {job.run_dir}{needs}")
            lines.append(f"            harness {' '.join(job.argv)}")
    return "\n".join(lines) + "\n"


def format_report(sweep: Sweep, outcomes: Sequence[Outcome], throughput: Throughput | None = None) -> str:
    counts = Counter(outcome.state for outcome in outcomes)
    width = max(len(state) for state in STATES)
    lines = [f"sweep {sweep.name}: {len(outcomes)} runs"]
    lines += [f"  {state:<{width}}  {counts[state]:>5}" for state in STATES if counts[state]]
    if throughput is not None and throughput.started:
        lines += throughput.lines()
    problems = [outcome for outcome in outcomes if outcome.state in (FAILED, BLOCKED, STOPPED)]
    if problems:
        lines.append("not completed:")
    tails_left = MAX_LOG_TAILS
    for outcome in problems:
        lines.append(f"  {outcome.state}: {outcome.job.run_dir} ({outcome.detail})")
        if outcome.state == FAILED:
            lines.append(f"    log: {outcome.job.log_path}")
            if tails_left > 0:  # many failures usually share one cause: the first few logs show it
                lines += [f"    | {line}" for line in tail(outcome.job.log_path)]
                tails_left -= 1
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------
# Throughput


class Unreadable(Exception):
    """A run's files do not say how far it trained."""


def recorded_steps(run_dir: Path) -> tuple[int, int] | None:
    """The steps of a run's first and last metrics records, or None when it recorded nothing (it has not
    trained). Raises Unreadable for a damaged or unreadable metrics file.

    A run's first record is the mask event at the step it starts from (0, or a probe's probe epoch), and
    every later record carries the step it was written at."""
    try:
        records = rundir.read_metrics(rundir.metrics_path(run_dir))
    except (rundir.DamagedFile, OSError) as error:
        raise Unreadable(str(error)) from None
    if not records:
        return None
    return records[0]["step"], max(record["step"] for record in records)


def batch_size(run_dir: Path) -> int:
    """The run's global batch size (`optim.batch_size` in its config.yaml). Raises Unreadable."""
    try:
        value = (rundir.read_config(run_dir).get("optim") or {}).get("batch_size")
    except (rundir.DamagedFile, OSError) as error:
        raise Unreadable(str(error)) from None
    if not isinstance(value, int) or isinstance(value, bool):
        raise Unreadable(f"{rundir.config_path(run_dir)}: optim.batch_size is {value!r}")
    return value


UNREADABLE = -1  # a start step for a run whose metrics could not be read when it was started


class StepLedger:
    """A launcher that notes the step each run stood at when this invocation started it, so that the
    samples it trained here can be counted afterwards without any new field in the run's files."""

    def __init__(self, launch: Launcher) -> None:
        self.launch = launch
        self.start_steps: dict[Path, int | None] = {}

    def __call__(self, job: Job) -> Process:
        # A resumed run continues from a checkpoint at or before its last record: count from that record
        # (a run killed between checkpoints redoes steps that are not counted twice). None: a fresh run.
        try:
            steps = recorded_steps(job.run_dir)
            self.start_steps[job.run_dir] = None if steps is None else steps[1]
        except Unreadable:
            self.start_steps[job.run_dir] = UNREADABLE
        return self.launch(job)

    def samples(self, run_dir: Path) -> int | None:
        """Training samples the run went through since it was started here (steps x the global batch size,
        so an epoch's last, smaller batch counts as a full one); None where its files do not say."""
        start = self.start_steps.get(run_dir, UNREADABLE)
        if start == UNREADABLE:
            return None
        try:
            steps = recorded_steps(run_dir)
            if steps is None:
                return 0  # it recorded nothing, not even its starting mask event: it did not train
            first = steps[0] if start is None else start
            return max(0, steps[1] - first) * batch_size(run_dir)
        except Unreadable as problem:
            log.debug("no sample count for %s: %s", run_dir.name, problem)
            return None


@dataclass(frozen=True)
class Throughput:
    """What one `sweep run` invocation did: the runs it started, those of them that completed, its wall
    time, and the training samples of the runs it started (`counted` of them had readable files)."""

    started: int
    completed: int
    wall_s: float
    samples: int
    counted: int

    @classmethod
    def measure(cls, outcomes: Sequence[Outcome], ledger: StepLedger, wall_s: float) -> Throughput:
        started = [outcome for outcome in outcomes if outcome.job.run_dir in ledger.start_steps]
        samples = [ledger.samples(outcome.job.run_dir) for outcome in started]
        return cls(
            started=len(started),
            completed=sum(outcome.state == COMPLETED for outcome in started),
            wall_s=wall_s,
            samples=sum(count for count in samples if count is not None),
            counted=sum(count is not None for count in samples),
        )

    def lines(self) -> list[str]:
        hours = self.wall_s / 3600
        per_hour = rate(self.completed / hours) if hours > 0 else "-"
        per_second = rate(self.samples / self.wall_s) if self.wall_s > 0 else "-"
        partial = (
            "" if self.counted == self.started else f", from the {runs(self.counted)} with readable files"
        )
        return [
            f"ran {runs(self.started)} ({self.completed} completed) in {duration(self.wall_s)}: "
            f"{per_hour} completed runs/h",
            f"trained {self.samples:,} samples (steps x batch size{partial}): {per_second} samples/s",
        ]


def runs(count: int) -> str:
    return f"{count} run" if count == 1 else f"{count} runs"


def rate(value: float) -> str:
    """Three significant digits below 100, whole numbers with thousands separators above."""
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{rest:02d}s" if hours else f"{minutes}m{rest:02d}s"


# ---------------------------------------------------------------------------------------------------------
# Entry point


def run_sweep(
    path: Path,
    *,
    workers: int = 1,
    runs_dir: Path | None = None,
    dry_run: bool = False,
    extra_args: Iterable[str] = (),
    out: TextIO | None = None,
    launch: Launcher | None = None,
    only: Sequence[str] = (),
    max_points: int = MAX_POINTS,
    gpus: str = "auto",
) -> int:
    """Run (or, with dry_run, list) every run of a sweep file. Returns the exit code: 0 if all completed.

    The plan and the final report are written to `out` (stdout by default): they are the command's
    output. `extra_args` are appended to every command line; `launch` replaces the process launcher; a grid
    (after `only`) of over `max_points` points is refused before anything is planned. `gpus` is `--gpus`
    (`harness.launch.gpus.choose_gpus`): the GPUs the runs are placed on.
    """
    out = sys.stdout if out is None else out
    if workers < 1:
        raise UserError(f"--workers: must be at least 1 (got {workers})")
    # A dry run places nothing: it asks nvidia-smi only to check a list of GPUs.
    placed_on = () if dry_run and gpus == "auto" else choose_gpus(gpus)
    sweep = restrict(load_sweep(path), only)  # before planning, so --dry-run lists the same selection
    points = grid_points(sweep, max_points)
    jobs = plan_jobs(sweep, runs_dir=runs_dir, extra_args=list(extra_args), max_points=max_points)
    warn_damaged(jobs)
    check_data(sweep, jobs, dry_run=dry_run)
    if dry_run:
        out.write(format_plan(sweep, jobs, len(points)))
        return 0
    slots = GpuSlots(placed_on, workers) if placed_on else None
    where = "" if slots is None else f" on {slots.describe()}"
    log.info(
        "sweep %s: %d grid points -> %d runs, %d workers%s",
        sweep.name,
        len(points),
        len(jobs),
        workers,
        where,
    )
    progress = Progress(sweep.name, total=len(jobs), done=sum(is_completed(job.run_dir) for job in jobs))
    ledger = StepLedger(launch or subprocess_launcher(workers))
    started = time.monotonic()
    with stop_on_sigterm():
        try:
            outcomes, stopped = execute(jobs, workers=workers, launch=ledger, progress=progress, gpus=slots)
        finally:
            progress.close()
    throughput = Throughput.measure(outcomes, ledger, time.monotonic() - started)
    out.write(format_report(sweep, outcomes, throughput))
    if stopped:
        log.warning("sweep %s stopped; run the same command again to finish what is missing", sweep.name)
        return 130
    return 0 if all(outcome.state in (ALREADY, COMPLETED) for outcome in outcomes) else 1


@contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """SIGTERM stops the runner as Ctrl-C does: children checkpoint, the report is written."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _raise_stop(signum: int, frame: Any) -> None:
    raise Stop(f"signal {signum}")

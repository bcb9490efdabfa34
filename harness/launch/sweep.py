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
- one failure never stops the others; failures are listed at the end and make the exit code 1.

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
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from harness.errors import UserError
from harness.launch.supervisor import (
    ALREADY,
    BLOCKED,
    COMPLETED,
    FAILED,
    STATES,
    STOPPED,
    Launcher,
    Outcome,
    Progress,
    Stop,
    execute,
    subprocess_launcher,
)
from harness.launch.sweep_file import MAX_POINTS, Sweep, grid_points, load_sweep, restrict
from harness.launch.sweep_plan import Job, check_data, plan_jobs, warn_damaged
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


def format_report(sweep: Sweep, outcomes: Sequence[Outcome]) -> str:
    counts = Counter(outcome.state for outcome in outcomes)
    width = max(len(state) for state in STATES)
    lines = [f"sweep {sweep.name}: {len(outcomes)} runs"]
    lines += [f"  {state:<{width}}  {counts[state]:>5}" for state in STATES if counts[state]]
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
) -> int:
    """Run (or, with dry_run, list) every run of a sweep file. Returns the exit code: 0 if all completed.

    The plan and the final report are written to `out` (stdout by default): they are the command's
    output. `extra_args` are appended to every command line; `launch` replaces the process launcher; a grid
    (after `only`) of over `max_points` points is refused before anything is planned.
    """
    out = sys.stdout if out is None else out
    if workers < 1:
        raise UserError(f"--workers: must be at least 1 (got {workers})")
    sweep = restrict(load_sweep(path), only)  # before planning, so --dry-run lists the same selection
    points = grid_points(sweep, max_points)
    jobs = plan_jobs(sweep, runs_dir=runs_dir, extra_args=list(extra_args), max_points=max_points)
    warn_damaged(jobs)
    check_data(sweep, jobs, dry_run=dry_run)
    if dry_run:
        out.write(format_plan(sweep, jobs, len(points)))
        return 0
    log.info("sweep %s: %d grid points -> %d runs, %d workers", sweep.name, len(points), len(jobs), workers)
    progress = Progress(sweep.name, total=len(jobs), done=sum(is_completed(job.run_dir) for job in jobs))
    with stop_on_sigterm():
        try:
            outcomes, stopped = execute(
                jobs, workers=workers, launch=launch or subprocess_launcher(workers), progress=progress
            )
        finally:
            progress.close()
    out.write(format_report(sweep, outcomes))
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

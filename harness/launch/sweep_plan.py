"""A sweep's jobs: one per distinct run directory its grid points stand for, in dependency order.

Every grid point's command line is built exactly as the W&B agent would build it (`harness.launch.sweep_agent`),
and the part after the `harness` program is handed to `harness.launch.planning.plan_invocation` to learn which
run directories it stands for. Run directories shared by many grid points (one plasticity base run serves
every probe) become one job.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.data.presence import CPU_DATASET, missing_data, require_data
from harness.errors import UserError
from harness.launch.command_line import TRAINING_COMMANDS, option_names
from harness.launch.gpus import Placement
from harness.launch.planning import plan_invocation
from harness.launch.sweep_agent import agent_command, harness_argv
from harness.launch.sweep_file import MAX_POINTS, Sweep, grid_points, render
from harness.store import rundir

log = logging.getLogger("harness.launch.sweep")

RUNS_DIR_FLAG = "--runs-dir"


# ---------------------------------------------------------------------------------------------------------
# Jobs: one per distinct run directory, in dependency order


@dataclass(frozen=True)
class Job:
    run_dir: Path
    argv: tuple[str, ...]  # after the program: `plasticity --probe_epoch=10 ... --stage base`
    needs: tuple[Path, ...]
    log_path: Path
    env: tuple[tuple[str, str], ...] = ()
    data: Any = None  # the run's data section (DataConfig): its dataset is checked before the sweep starts
    processes: int = 1  # on this machine (--nproc-per-node): one GPU each when the sweep places runs
    placement: Placement | None = None  # set by the runner as the job starts, never by planning

    @property
    def name(self) -> str:
        return self.run_dir.name


def plan_jobs(
    sweep: Sweep,
    *,
    runs_dir: Path | None = None,
    extra_args: Sequence[str] = (),
    max_points: int = MAX_POINTS,
) -> list[Job]:
    """Every run the sweep stands for, once each, dependencies before the runs that need them.

    `runs_dir` overrides the sweep's own `runs_dir` parameter (the last `--runs-dir` given wins); a grid of
    over `max_points` points is refused before anything is planned.
    """
    check_boolean_flags(sweep)
    jobs: dict[Path, Job] = {}
    depth: dict[Path, int] = {}
    for index, point in enumerate(grid_points(sweep, max_points)):
        command = harness_argv(agent_command(sweep, point), sweep.path)
        if index == 0:
            check_parameter_names(sweep, command.argv[:1])
        argv = [*command.argv, *extra_args]
        if runs_dir is not None:
            argv.append(f"{RUNS_DIR_FLAG}={runs_dir}")
        try:
            planned = plan_invocation(argv)
        except UserError as error:
            raise UserError(f"{sweep.path}: grid point {format_point(point)}: {error}") from None
        for run in planned:
            if run.run_dir in jobs:
                continue
            depth[run.run_dir] = 1 + max((depth[need] for need in run.needs), default=-1)
            jobs[run.run_dir] = Job(
                run_dir=run.run_dir,
                argv=run.argv,
                needs=run.needs,
                log_path=log_path(run.run_dir, sweep.name),
                env=tuple(sorted(command.env.items())),
                data=run.data,
                processes=run.processes,
            )
    # Stable: within a depth, grid order. All base runs first lets independent work start early.
    return sorted(jobs.values(), key=lambda job: depth[job.run_dir])


def check_boolean_flags(sweep: Sweep) -> None:
    """The harness CLI's booleans are `--flag/--no-flag`, which reject the `--flag=True` that ${args} writes."""
    if "${args}" not in sweep.command:
        return
    for name, values in sweep.parameters.items():
        if any(isinstance(value, bool) for value in values):
            raise UserError(
                f"{sweep.path}: parameters.{name}: ${{args}} passes booleans as --{name}=True/False, which "
                "the harness CLI rejects; use ${args_no_boolean_flags} in command"
            )


def check_parameter_names(sweep: Sweep, command: Sequence[str]) -> None:
    """Every parameter must be an option of the command: the agent writes it as `--<name>=<value>`, so a
    name such as `runs-dir=/x --seed` would otherwise set an option the grid does not show."""
    if not command or command[0] not in TRAINING_COMMANDS:
        return  # plan_invocation says what is wrong with the command itself
    known = option_names(command[0])
    for name in sweep.parameters:
        if f"--{name}" not in known:
            close = difflib.get_close_matches(f"--{name}", sorted(known), n=1)
            hint = f" (did you mean {close[0].removeprefix('--')}?)" if close else ""
            raise UserError(
                f"{sweep.path}: parameters.{name}: not an option of harness {command[0]}{hint}; a parameter "
                f"is an option's name without its dashes, as `harness {command[0]} --help` lists them"
            )


def log_path(run_dir: Path, sweep_name: str) -> Path:
    """`<runs_dir>/.sweeps/<sweep>/<run_id>.log` (run directories are `<runs_dir>/<group>/<run_id>`)."""
    return run_dir.parent.parent / ".sweeps" / sweep_name / f"{run_dir.name}.log"


def format_point(point: Mapping[str, Any]) -> str:
    return " ".join(f"{name}={render(value)}" for name, value in point.items())


def warn_damaged(jobs: Sequence[Job]) -> None:
    """One warning per planned run whose status or summary is damaged: the sweep runs it again."""
    for job in jobs:
        damage = rundir.completion_damage(job.run_dir)
        if damage is not None:
            log.warning(
                "run %s is damaged (%s); it is run again and resumes from its last checkpoint",
                job.run_dir.name,
                damage,
            )


def cpu_counterpart(sweep: Sweep) -> Path | None:
    """The CPU study's version of a sweep file (`plasticity.yaml` -> `plasticity-mnist1d.yaml`,
    `granet-cifar10.yaml` -> `granet-mnist1d.yaml`), when it lies beside it."""
    path = Path(sweep.path)
    for stem in (path.stem, path.stem.split("-")[0]):
        candidate = path.with_name(f"{stem}-{CPU_DATASET}.yaml")
        if candidate != path and candidate.is_file():
            return candidate
    return None


def check_data(sweep: Sweep, jobs: Sequence[Job], *, dry_run: bool) -> None:
    """Before any run starts: every dataset the sweep's unfinished runs need is on disk (or can be
    downloaded). Raises UserError for the first one missing, naming the command to use instead; a dry run
    only warns (it starts nothing)."""
    instead = cpu_counterpart(sweep)
    command = (
        f"harness sweep run {instead}"
        if instead is not None
        else f"the sweep's runs with --dataset {CPU_DATASET}"
    )
    seen: set[tuple[str, str]] = set()
    for job in jobs:
        key = (job.data.dataset, str(job.data.data_dir)) if job.data is not None else None
        if key is None or key in seen or rundir.is_completed(job.run_dir):
            continue
        seen.add(key)
        if dry_run:
            reason = missing_data(job.data)
            if reason is not None:
                log.warning("%s", reason)
            continue
        try:
            require_data(job.data, command)
        except UserError as error:
            raise UserError(f"{sweep.path}: nothing started: {error}") from None

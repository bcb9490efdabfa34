"""`harness sweep run | submit | status FILE` as library calls: a typed request in, an exit code out.

`run` executes the grid locally (`harness.launch.sweep`), `submit` hands it to SLURM as job arrays and
`status` reports on a submission (`harness.launch.slurm`). All three plan the same runs from the same
file and the same run-shaping options (`SweepRequest`), so they agree on every run directory.
"""

from __future__ import annotations

import runpy
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from harness.launch.sweep_file import MAX_POINTS


@dataclass(frozen=True)
class SweepRequest:
    """A sweep file and the options that shape each of its runs' command lines."""

    file: Path
    runs_dir: str | None = None  # as given: an empty one must reach the config's check, not become "."
    nproc_per_node: int = 1
    wandb: str | None = None
    max_points: int = MAX_POINTS  # grid points planned at most (a larger grid is refused before planning)

    def extra_args(self) -> list[str]:
        """Options appended to every grid point's command line."""
        # Every run of the sweep on N processes (a grid parameter `nproc-per-node` does the same per point).
        extra = [f"--nproc-per-node={self.nproc_per_node}"] if self.nproc_per_node != 1 else []
        # Where runs mirror is not part of a run id, so this changes no result (CPU studies save ~seconds a run).
        return extra + ([f"--wandb={self.wandb}"] if self.wandb is not None else [])


@dataclass(frozen=True)
class SlurmRequest:
    """How `sweep submit` asks SLURM for each task (None: the submitter's default)."""

    cluster: str | None = None
    partition: str | None = None
    gpus_per_task: int | None = None
    cpus_per_task: int | None = None
    time: str | None = None
    array_parallelism: int | None = None
    slurm_args: tuple[str, ...] = field(default=())


def run(
    request: SweepRequest,
    *,
    workers: int = 1,
    dry_run: bool = False,
    only: Sequence[str] = (),
    fork: bool = True,
    out: TextIO | None = None,
    gpus: str = "auto",
) -> int:
    """Every grid point locally, `workers` at a time, placed on the GPUs `gpus` names (auto | none | a list
    such as 0,1: `harness.launch.gpus`); with `fork`, each run is forked from this process
    (`harness.launch.prewarm`) where the platform allows, else it is a fresh interpreter."""
    from harness.launch.sweep import run_sweep

    return run_sweep(
        request.file,
        workers=workers,
        runs_dir=request.runs_dir,
        dry_run=dry_run,
        extra_args=request.extra_args(),
        only=only,
        max_points=request.max_points,
        out=out,
        launch=forked_jobs(workers) if fork and not dry_run else None,
        gpus=gpus,
    )


def harness_program() -> None:
    """What a forked job runs: `python -m harness.cli` with the job's argv, as the subprocess launcher
    starts it, but in the forked copy of this process (its imports already done)."""
    runpy.run_module("harness.cli", run_name="__main__", alter_sys=True)


def forked_jobs(workers: int, entry: Callable[[], Any] = harness_program) -> Any:
    """Jobs forked from this process once it has imported the training code (harness/launch/prewarm.py: ~6 s
    less per run), or None where fork is not available (a fresh interpreter per job)."""
    from harness.launch import prewarm
    from harness.launch.supervisor import child_environment

    if not prewarm.available():
        return None
    return prewarm.forking_launcher(entry, lambda job: child_environment(workers, job))


def submit(
    request: SweepRequest, slurm: SlurmRequest, *, dry_run: bool = False, out: TextIO | None = None
) -> int:
    """The runs that are not complete as one SLURM job array per dependency level (or, dry, the plan)."""
    from harness.launch.slurm import slurm_options, submit_sweep

    options = slurm_options(
        slurm_args=slurm.slurm_args,
        cluster=slurm.cluster,
        partition=slurm.partition,
        gpus_per_task=slurm.gpus_per_task,
        cpus_per_task=slurm.cpus_per_task,
        time=slurm.time,
        array_parallelism=slurm.array_parallelism,
    )
    return submit_sweep(
        request.file,
        options,
        runs_dir=request.runs_dir,
        extra_args=request.extra_args(),
        dry_run=dry_run,
        out=out,
        max_points=request.max_points,
    )


def status(request: SweepRequest, out: TextIO | None = None) -> int:
    """Queued / running / completed / failed of a submitted sweep, from the run store and squeue."""
    from harness.launch.slurm import format_status, status_exit_code, sweep_status

    out = sys.stdout if out is None else out
    report = sweep_status(
        request.file,
        runs_dir=request.runs_dir,
        extra_args=request.extra_args(),
        max_points=request.max_points,
    )
    out.write(format_status(report))
    return status_exit_code(report)

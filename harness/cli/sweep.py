"""`harness sweep run | submit | status FILE`: a sweep file run locally, submitted to SLURM, or reported on.

Each command turns its options into `harness.launch.sweep_commands` requests and calls one function there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from harness.cli.common import call, setup_logging
from harness.launch.command_line import SHARED_OPTIONS, Verbose, option
from harness.launch.sweep_commands import SlurmRequest, SweepRequest
from harness.launch.sweep_file import MAX_POINTS

app = typer.Typer(no_args_is_help=True, help="Run a sweep file locally, submit it to SLURM, or report on it.")

File = Annotated[Path, typer.Argument(help="a sweep file in W&B's format (method: grid)")]
RunsDir = SHARED_OPTIONS["runs_dir"][0]  # a string, as for `run`: "" must reach the config's check
NprocPerNode = SHARED_OPTIONS["nproc_per_node"][0]
Wandb = Annotated[
    str | None,
    option("--wandb", help="W&B mirror of every run: offline | online | disabled (wins over the file)"),
]
MaxPoints = Annotated[
    int,
    option("--max-points", help=f"refuse a grid of more points, before planning (default {MAX_POINTS})"),
]
DryRun = Annotated[bool, option("--dry-run", help="list what would run and what is complete, then exit")]


@app.command("run")
def run_sweep(
    file: File,
    workers: Annotated[int, option("--workers", help="runs in parallel")] = 1,
    runs_dir: RunsDir = None,
    dry_run: DryRun = False,
    nproc_per_node: NprocPerNode = 1,
    wandb: Wandb = None,
    only: Annotated[
        list[str] | None,
        option("--only", help="keep grid points with parameter=value (repeatable), e.g. --only seed=0"),
    ] = None,
    max_points: MaxPoints = MAX_POINTS,
    gpus: Annotated[
        str,
        option(
            "--gpus",
            help="auto (CUDA_VISIBLE_DEVICES, else nvidia-smi -L) | none | a list such as 0,1: each run on the "
            "least occupied of these GPUs, ceil(workers/GPUs) at most per GPU, sharing its memory",
        ),
    ] = "auto",
    verbose: Verbose = False,
) -> None:
    """Run every grid point of a sweep file on this machine: dependencies first, completed runs skipped."""
    from harness.launch import sweep_commands

    setup_logging(verbose)
    request = SweepRequest(file, runs_dir, nproc_per_node, wandb, max_points)
    call(lambda: sweep_commands.run(request, workers=workers, dry_run=dry_run, only=only or (), gpus=gpus))


@app.command("submit")
def submit_sweep(
    file: File,
    runs_dir: RunsDir = None,
    dry_run: Annotated[
        bool, option("--dry-run", help="print the job arrays that would be submitted, then exit")
    ] = False,
    nproc_per_node: NprocPerNode = 1,
    wandb: Wandb = None,
    cluster: Annotated[
        str | None, option("--cluster", help="slurm (default) | local (submitit, this machine)")
    ] = None,
    partition: Annotated[str | None, option("--partition", help="the partition")] = None,
    gpus_per_task: Annotated[
        int | None, option("--gpus-per-task", help="GPUs of each task (one run)")
    ] = None,
    cpus_per_task: Annotated[int | None, option("--cpus-per-task", help="CPUs of each task")] = None,
    time_limit: Annotated[
        str | None, option("--time", help="each task's limit, SLURM syntax (default 60 min)")
    ] = None,
    array_parallelism: Annotated[
        int | None, option("--array-parallelism", help="tasks of an array running at once")
    ] = None,
    slurm_args: Annotated[
        list[str] | None, option("--slurm-arg", help="another sbatch option KEY=VALUE (repeatable)")
    ] = None,
    max_points: MaxPoints = MAX_POINTS,
    verbose: Verbose = False,
) -> None:
    """Submit the sweep's runs that are not complete to SLURM: one job array per dependency level (submitit)."""
    from harness.launch import sweep_commands

    setup_logging(verbose)
    request = SweepRequest(file, runs_dir, nproc_per_node, wandb, max_points)
    slurm = SlurmRequest(
        cluster,
        partition,
        gpus_per_task,
        cpus_per_task,
        time_limit,
        array_parallelism,
        tuple(slurm_args or ()),
    )
    call(lambda: sweep_commands.submit(request, slurm, dry_run=dry_run))


@app.command("status")
def sweep_status(
    file: File,
    runs_dir: RunsDir = None,
    nproc_per_node: NprocPerNode = 1,
    max_points: MaxPoints = MAX_POINTS,
    verbose: Verbose = False,
) -> None:
    """Queued / running / completed / failed runs of a submitted sweep, from the run store and squeue."""
    from harness.launch import sweep_commands

    setup_logging(verbose)
    request = SweepRequest(file, runs_dir, nproc_per_node, max_points=max_points)
    call(lambda: sweep_commands.status(request))

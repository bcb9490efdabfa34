"""`harness runs`, `claims`, `figures` and `wandb`: commands that read the run store (through `analysis`
and `harness.store.wandb_offline`, imported only when the command runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from harness.cli.common import call, setup_logging
from harness.launch.command_line import Verbose, option

Roots = Annotated[list[Path] | None, typer.Argument(help="run directories, groups or runs roots")]


def figures(
    roots: Roots = None,
    out: Annotated[Path, option("--out", help="directory for the figures, tables and index.md")] = Path(
        "figures"
    ),
    wandb_project: Annotated[
        str | None, option("--wandb", help="read runs from a W&B project ENTITY/PROJECT instead")
    ] = None,
    dynamics_run: Annotated[
        str | None, option("--dynamics-run", help="group/run-id of the run for the training-dynamics figure")
    ] = None,
    verbose: Verbose = False,
) -> None:
    """Write every figure and table the runs support (PNG + PDF) and an index.md listing them."""
    from analysis import commands

    setup_logging(verbose)
    call(lambda: commands.figures(roots, out, wandb_project=wandb_project, dynamics_run=dynamics_run))


def claims(
    roots: Roots = None,
    out: Annotated[
        Path | None, option("--out", help="write the report to this file (default: print it)")
    ] = None,
    verbose: Verbose = False,
) -> None:
    """Check the paper's claims against the runs: one row per claim with a computed verdict (Markdown)."""
    from analysis import commands

    setup_logging(verbose)
    call(lambda: commands.claims(roots, out))


def runs(
    roots: Annotated[list[Path] | None, typer.Argument(help="runs roots or groups (default: runs)")] = None,
    where: Annotated[
        list[str] | None,
        option(
            "--where",
            help="keep runs with key=value (repeatable), e.g. method=granet, s_i=0.5, optim.epochs=30",
        ),
    ] = None,
    output_format: Annotated[
        str, option("--format", help="table (default), markdown, csv or json (for scripts)")
    ] = "table",
    as_json: Annotated[bool, option("--json", help="the same as --format json")] = False,
    columns: Annotated[
        str | None,
        option("--columns", help="comma-separated columns, e.g. run,method,sparsity,seed,acc_pre,plasticity"),
    ] = None,
) -> None:
    """List runs: method, arch, dataset, sparsity, s_i, seed, status, epochs, accuracies, wall time; probes
    and controls also criterion, pruning rate, regeneration, probe epoch, acc_pre/post/continue/control and
    plasticity."""
    from analysis import commands
    from harness.errors import UserError

    def listing() -> int:
        if as_json and output_format not in ("table", "json"):
            raise UserError(f"--json: is --format json; drop one of --json and --format {output_format}")
        return commands.runs(
            roots, where, output_format="json" if as_json else output_format, columns=columns
        )

    call(listing)


def wandb_offline(
    run_dir: Annotated[
        Path, typer.Argument(help="a run directory with a W&B offline mirror (wandb/offline-run-*)")
    ],
    relocate: Annotated[
        bool, option("--relocate", help="point the mask artifacts at this directory's masks/ (after a move)")
    ] = False,
    drop_damaged: Annotated[
        bool,
        option(
            "--drop-damaged", help="with --relocate: rewrite a damaged log, dropping what follows the damage"
        ),
    ] = False,
) -> None:
    """Show what a run's W&B offline mirror holds and what `wandb sync` would upload (no server needed)."""
    from harness.store import wandb_offline as offline

    setup_logging(False)
    call(lambda: offline.offline_command(run_dir, relocate_artifacts=relocate, drop_damaged=drop_damaged))

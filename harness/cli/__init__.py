"""The `harness` command: a thin table of sub-commands over the library (no logic lives here).

The training commands (`run`, `plasticity`) live in `harness.cli.training`, process launching in
`harness.launch.torchrun`, options shared by every command in `harness.cli.common`. Every option has a dashed and an
underscored spelling (`--init-sparsity` and `--init_sparsity`) because W&B sweep agents pass parameter
names exactly as the sweep file writes them.

It stays near 500 lines because it is the table of every command with its options spelled out for Typer:
declarations, not logic.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from harness.cli.common import Verbose, option, setup_logging, user_errors
from harness.cli.training import NprocPerNode, RunsDir, plasticity, run
from harness.errors import UserError


class OneLineUsageErrors(typer.core.TyperGroup):
    """Command-line mistakes (an unknown option, a missing value) as one line on stderr and exit code 2,
    like every other user error, instead of click's usage box."""

    def make_context(self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any) -> Any:
        with one_line_usage_errors():
            return super().make_context(info_name, args, parent=parent, **extra)

    def invoke(self, ctx: Any) -> Any:
        with one_line_usage_errors():
            return super().invoke(ctx)


# Typer bundles its own click: its errors derive from typer.TyperException, not from the `click` package's.
USAGE_ERROR_EXIT_CODE = 2


@contextmanager
def one_line_usage_errors() -> Iterator[None]:
    try:
        yield
    except typer.TyperException as error:
        if getattr(error, "exit_code", None) != USAGE_ERROR_EXIT_CODE:
            raise
        typer.echo(f"error: {describe_usage_error(error)}", err=True)
        raise typer.Exit(USAGE_ERROR_EXIT_CODE) from None


def describe_usage_error(error: Any) -> str:
    """`harness run: no such option --lrr (did you mean --lr?)`."""
    names: list[str] = []
    context = getattr(error, "ctx", None)
    while context is not None:
        names.append(context.info_name if context.parent is not None else "harness")
        context = context.parent
    where = " ".join(reversed(names)) or "harness"
    if hasattr(error, "possibilities") and hasattr(error, "option_name"):  # an unknown option
        near = list(error.possibilities or [])  # closest first
        hint = f" (did you mean {near[0]}?)" if near else ""
        return f"{where}: no such option {error.option_name}{hint}"
    message = " ".join(error.format_message().split())
    return f"{where}: {message[:1].lower()}{message[1:]}"


app = typer.Typer(
    cls=OneLineUsageErrors,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Sparse-training research harness: GraNet, the pruning-plasticity study and its baselines.",
)
log = logging.getLogger("harness")


@app.callback()
def harness() -> None:
    """Sparse-training research harness: GraNet, the pruning-plasticity study and its baselines."""


app.command()(run)
app.command()(plasticity)


@app.command()
def sweep(
    file: Annotated[Path, typer.Argument(help="a sweep file in W&B's format (method: grid)")],
    workers: Annotated[int, option("--workers", help="runs in parallel")] = 1,
    runs_dir: RunsDir = None,
    dry_run: Annotated[
        bool, option("--dry-run", help="list what would run and what is complete, then exit")
    ] = False,
    nproc_per_node: NprocPerNode = 1,
    wandb: Annotated[
        str | None,
        option("--wandb", help="W&B mirror of every run: offline | online | disabled (wins over the file)"),
    ] = None,
    only: Annotated[
        list[str] | None,
        option("--only", help="keep grid points with parameter=value (repeatable), e.g. --only seed=0"),
    ] = None,
    slurm: Annotated[
        bool, option("--slurm", help="submit to SLURM: one job array per dependency level (submitit)")
    ] = False,
    status: Annotated[
        bool, option("--status", help="queued / running / completed / failed, from the run store and squeue")
    ] = False,
    cluster: Annotated[
        str | None, option("--cluster", help="with --slurm: slurm (default) | local (submitit, this machine)")
    ] = None,
    partition: Annotated[str | None, option("--partition", help="with --slurm: the partition")] = None,
    gpus_per_task: Annotated[
        int | None, option("--gpus-per-task", help="with --slurm: GPUs of each task (one run)")
    ] = None,
    cpus_per_task: Annotated[
        int | None, option("--cpus-per-task", help="with --slurm: CPUs of each task")
    ] = None,
    time_limit: Annotated[
        str | None, option("--time", help="with --slurm: each task's limit, SLURM syntax (default 60 min)")
    ] = None,
    array_parallelism: Annotated[
        int | None, option("--array-parallelism", help="with --slurm: tasks of an array running at once")
    ] = None,
    slurm_args: Annotated[
        list[str] | None,
        option("--slurm-arg", help="with --slurm: another sbatch option KEY=VALUE (repeatable)"),
    ] = None,
    verbose: Verbose = False,
) -> None:
    """Run every grid point of a sweep file locally or, with --slurm, as SLURM job arrays: dependencies first,
    completed runs skipped."""
    from harness.launch.sweep import run_sweep

    setup_logging(verbose)
    # Every run of the sweep on N processes (a grid parameter `nproc-per-node` does the same per point).
    extra_args = [f"--nproc-per-node={nproc_per_node}"] if nproc_per_node != 1 else []
    # Where runs mirror is not part of a run id, so this changes no result (CPU studies save ~seconds a run).
    extra_args += [f"--wandb={wandb}"] if wandb is not None else []
    slurm_flags = {
        "cluster": cluster,
        "partition": partition,
        "gpus_per_task": gpus_per_task,
        "cpus_per_task": cpus_per_task,
        "time": time_limit,
        "array_parallelism": array_parallelism,
    }
    with user_errors():
        if slurm or status or slurm_args or any(value is not None for value in slurm_flags.values()):
            from harness.launch.slurm import slurm_command

            if only:
                raise UserError(
                    "--only: not available with --slurm or --status yet; cut the sweep file instead"
                )
            code = slurm_command(
                file,
                submit=slurm,
                status=status,
                dry_run=dry_run,
                workers=workers,
                runs_dir=runs_dir,
                extra_args=extra_args,
                flags=slurm_flags,
                slurm_args=slurm_args or [],
            )
        else:
            code = run_sweep(
                file,
                workers=workers,
                runs_dir=runs_dir,
                dry_run=dry_run,
                extra_args=extra_args,
                only=only or (),
                launch=None if dry_run else forked_jobs(workers),
            )
    raise typer.Exit(code)


def forked_jobs(workers: int) -> Any:
    """Jobs forked from this process once it has imported the training code (harness/launch/prewarm.py: ~6 s
    less per run), or None where fork is not available (a fresh interpreter per job)."""
    from harness.launch import prewarm
    from harness.launch.supervisor import child_environment

    if not prewarm.available():
        return None
    return prewarm.forking_launcher(main, lambda job: child_environment(workers, job))


@app.command()
def figures(
    roots: Annotated[list[Path] | None, typer.Argument(help="run directories, groups or runs roots")] = None,
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

    from analysis import load_curves, load_runs
    from analysis.figures import write_figures

    setup_logging(verbose)
    with user_errors():
        if wandb_project is not None and roots:
            raise UserError("figures: give run roots or --wandb, not both")
        if wandb_project is not None:
            import wandb as wandb_module

            api = wandb_module.Api()
            runs = load_runs(wandb_project=wandb_project, api=api)
            loader = functools.partial(load_curves, api=api)
        else:
            runs = load_runs(roots or [Path("runs")])
            loader = load_curves
        if runs.empty:
            raise UserError(f"figures: no completed runs under {', '.join(map(str, roots or ['runs']))}")
        report = write_figures(runs, out, curves_loader=loader, dynamics_run=dynamics_run)
    for name, paths in report.written.items():
        typer.echo(f"wrote {name}: {', '.join(str(path) for path in paths)}")
    for name, reason in report.skipped.items():
        typer.echo(f"skipped {name}: {reason}")
    typer.echo(f"wrote claims: {report.claims}")
    typer.echo(str(report.index))


@app.command()
def claims(
    roots: Annotated[list[Path] | None, typer.Argument(help="run directories, groups or runs roots")] = None,
    out: Annotated[
        Path | None, option("--out", help="write the report to this file (default: print it)")
    ] = None,
    verbose: Verbose = False,
) -> None:
    """Check the paper's claims against the runs: one row per claim with a computed verdict (Markdown)."""
    from analysis import load_runs
    from analysis.claims import evaluate_claims, to_markdown, write_claims

    setup_logging(verbose)
    with user_errors():
        if out is not None and out.is_dir():
            raise UserError(f"--out {out}: is a directory; give the report's file name, e.g. {out}/claims.md")
        runs = load_runs(roots or [Path("runs")])
        if runs.empty:
            raise UserError(f"claims: no completed runs under {', '.join(map(str, roots or ['runs']))}")
        if out is None:
            typer.echo(to_markdown(evaluate_claims(runs), runs), nl=False)
            return
        try:
            path = write_claims(runs, out)
        except OSError as error:
            raise UserError(f"--out {out}: cannot write the report ({error.strerror})") from None
    typer.echo(str(path))


@app.command()
def runs(
    roots: Annotated[list[Path] | None, typer.Argument(help="runs roots or groups (default: runs)")] = None,
    where: Annotated[
        list[str] | None,
        option(
            "--where",
            help="keep runs with key=value (repeatable), e.g. method=granet, s_i=0.5, optim.epochs=30",
        ),
    ] = None,
    as_json: Annotated[bool, option("--json", help="print JSON for scripts instead of the table")] = False,
) -> None:
    """List runs: method, arch, dataset, sparsity, s_i, seed, status, epochs, accuracies, wall time."""
    from analysis.listing import format_table, list_runs, to_json

    with user_errors():
        table = list_runs(roots or [Path("runs")], where)
    typer.echo(to_json(table) if as_json else format_table(table))


@app.command("wandb")
def wandb_offline(
    run_dir: Annotated[
        Path, typer.Argument(help="a run directory with a W&B offline mirror (wandb/offline-run-*)")
    ],
    relocate: Annotated[
        bool, option("--relocate", help="point the mask artifacts at this directory's masks/ (after a move)")
    ] = False,
) -> None:
    """Show what a run's W&B offline mirror holds and what `wandb sync` would upload (no server needed)."""
    from harness.store import wandb_offline as offline

    setup_logging(False)
    with user_errors():
        if relocate:
            typer.echo(f"relocated {offline.relocate(run_dir)} artifact entries to {run_dir.resolve()}")
        typer.echo(offline.describe(run_dir))


@app.command()
def bench(
    archs: Annotated[list[str] | None, typer.Argument(help="architectures (default: resnet20 vgg19)")] = None,
    batch_size: Annotated[int, option("--batch-size", help="CIFAR-shaped batch")] = 128,
    repetitions: Annotated[
        int | None,
        option("--repetitions", help="timed repetitions, medians reported (default 5; 20 with --inference)"),
    ] = None,
    inference: Annotated[
        bool, option("--inference", help="time exported sparse inference against dense PyTorch instead")
    ] = False,
    arch_options: Annotated[
        list[str] | None, option("--arch", help="--inference: architecture (repeatable)")
    ] = None,
    datasets: Annotated[
        list[str] | None, option("--dataset", help="--inference: input shape cifar10 | mnist1d (repeatable)")
    ] = None,
    sparsities: Annotated[
        list[float] | None,
        option("--sparsity", help="--inference: sparsity of the random ERK mask (repeatable)"),
    ] = None,
    batch_sizes: Annotated[
        str, option("--batch-sizes", help="--inference: comma-separated batch sizes")
    ] = "1,64",
    threads: Annotated[int, option("--threads", help="--inference: intra-op threads")] = 1,
    json_out: Annotated[
        Path | None, option("--json", help="--inference: write the results as JSON here")
    ] = None,
    markdown_out: Annotated[
        Path | None, option("--markdown", help="--inference: write the markdown table here")
    ] = None,
    width: Annotated[float, option("--width", help="--inference: channel width factor of the models")] = 1.0,
) -> None:
    """Time a masked vs a dense training step and one mask update vs one step, side by side; with
    --inference, exported sparse models vs dense PyTorch (speed-up, file sizes, logit difference)."""
    from harness.inference.bench import format_rows, run_benchmarks

    setup_logging(False)
    if inference:
        with user_errors():
            bench_inference(
                [*(archs or []), *(arch_options or [])] or ["vgg19", "resnet20"],
                datasets or ["cifar10"],
                sparsities or [0.95],
                parse_batch_sizes(batch_sizes),
                20 if repetitions is None else repetitions,
                threads,
                width,
                json_out,
                markdown_out,
            )
        return
    with user_errors():
        rows = run_benchmarks(
            tuple(archs or ("resnet20", "vgg19")), batch_size=batch_size, repetitions=repetitions or 5
        )
    typer.echo(format_rows(rows))


def parse_batch_sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise UserError(f"--batch-sizes: {text!r} is not a comma-separated list of positive integers")
    return sizes


def bench_inference(
    archs: list[str],
    datasets: list[str],
    sparsities: list[float],
    batch_sizes: list[int],
    repetitions: int,
    threads: int,
    width: float,
    json_out: Path | None,
    markdown_out: Path | None,
) -> None:
    import json

    from harness.inference.bench import format_inference_markdown, inference_report, run_inference_benchmarks
    from harness.models.registry import MODELS
    from harness.store.rundir import atomic_write_text

    for arch in archs:
        if arch not in MODELS.builtins:
            raise UserError(f"--arch: unknown architecture {arch!r}; valid: {', '.join(MODELS.builtins)}")
    for path in (json_out, markdown_out):
        if path is not None and path.parent.exists() and not path.parent.is_dir():
            raise UserError(f"{path}: its parent is not a directory")
    rows = run_inference_benchmarks(
        archs,
        datasets,
        sparsities,
        batch_sizes=batch_sizes,
        repetitions=repetitions,
        threads=threads,
        width=width,
    )
    table = format_inference_markdown(rows)
    typer.echo(table)
    if json_out is not None:
        atomic_write_text(json_out, json.dumps(inference_report(rows), indent=2) + "\n")
        typer.echo(f"wrote {json_out}")
    if markdown_out is not None:
        atomic_write_text(markdown_out, table + "\n")
        typer.echo(f"wrote {markdown_out}")


@app.command("export")
def export_command(
    run_dir: Annotated[Path | None, typer.Argument(help="a completed run directory")] = None,
    out: Annotated[
        Path | None,
        option("--out", help="the export file (default RUN_DIR/export.pt, or ARCH-DATASET-sS.export.pt)"),
    ] = None,
    arch: Annotated[
        str | None, option("--arch", help="without RUN_DIR: architecture of a random ERK model")
    ] = None,
    sparsity: Annotated[
        float | None, option("--sparsity", help="without RUN_DIR: sparsity of the random ERK mask")
    ] = None,
    dataset: Annotated[
        str, option("--dataset", help="without RUN_DIR: input shape cifar10 | cifar100 | mnist1d | synthetic")
    ] = "cifar10",
    width: Annotated[float, option("--width", help="without RUN_DIR: channel width factor")] = 1.0,
    seed: Annotated[int, option("--seed", help="without RUN_DIR: seed of the weights and the mask")] = 0,
    batch_sizes: Annotated[
        str, option("--batch-sizes", help="batch sizes the per-layer choice is timed at")
    ] = "1,64",
    layers: Annotated[str, option("--layers", help="auto (timed per layer) | dense | sparse")] = "auto",
    repetitions: Annotated[int, option("--repetitions", help="timed repetitions per layer (medians)")] = 7,
    threads: Annotated[int, option("--threads", help="intra-op threads while timing")] = 1,
    show: Annotated[
        Path | None, option("--show", help="instead: load an export file, run it once, print its choices")
    ] = None,
    verbose: Verbose = False,
) -> None:
    """Export a run (or a random ERK model) to a compressed CPU inference file; prints the per-layer choice
    and the file's path last."""
    from harness.inference import export as exporter

    setup_logging(verbose)
    if show is not None:
        with user_errors():
            payload = exporter.check_export(show)
        typer.echo(exporter.describe_choices(payload))
        typer.echo(str(show))
        return
    with user_errors():
        sizes = parse_batch_sizes(batch_sizes)
        if layers not in exporter.LAYER_CHOICES:
            raise UserError(f"--layers: {layers!r} is not one of {', '.join(exporter.LAYER_CHOICES)}")
        if run_dir is not None and (arch is not None or sparsity is not None):
            raise UserError("export: give RUN_DIR or --arch with --sparsity, not both")
        if run_dir is None and (arch is None or sparsity is None):
            raise UserError("export: give RUN_DIR, or --arch and --sparsity for a random ERK model")
        target = out or exporter.default_out(run_dir, arch or "", dataset, sparsity)
        if target.exists() and target.is_dir():
            raise UserError(f"--out: {target} is a directory")
        if run_dir is not None:
            model, masks, facts = exporter.run_model(run_dir)
            arch_name, dataset_name, input_shape = facts["arch"], facts["dataset"], facts["input_shape"]
            source = {key: value for key, value in facts.items() if key != "input_shape"}
        else:
            from harness.models.registry import MODELS

            if arch not in MODELS.builtins:
                raise UserError(f"--arch: unknown architecture {arch!r}; valid: {', '.join(MODELS.builtins)}")
            model, masks, input_shape = exporter.random_masked_model(
                arch, dataset, sparsity, seed=seed, width=width
            )
            arch_name, dataset_name = arch, dataset
            source = {"random_erk": True, "sparsity": sparsity, "seed": seed, "width": width}
        payload = exporter.export_model(
            model,
            masks,
            arch=arch_name,
            dataset=dataset_name,
            input_shape=input_shape,
            batch_sizes=sizes,
            layers=layers,
            repetitions=repetitions,
            threads=threads,
            source=source,
        )
        size = exporter.save_export(target, payload)
    typer.echo(exporter.describe_choices(payload))
    typer.echo(f"{size} bytes")
    typer.echo(str(target))


TRAINING_COMMANDS = ("run", "plasticity")


def main() -> None:
    if sys.argv[1:2] and sys.argv[1] in TRAINING_COMMANDS:
        # First thing, before torch is imported: a stop during start-up must end in exit code 3 (resumable).
        from harness.engine.signals import defer_stop_signals
        from harness.launch.torchrun import die_with_torchrun

        defer_stop_signals()
        die_with_torchrun()
    app()


if __name__ == "__main__":
    main()

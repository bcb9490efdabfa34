"""The training commands, `harness run` and `harness plasticity`, and what runs a command line stands for.

`harness.cli` registers the two commands on its app; the sweep runner asks `plan_invocation` which run
directories a command line will produce, parsing it with these same commands (so flags, defaults and
spellings cannot drift apart), without running anything.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from harness import config as configuration
from harness.cli.common import Verbose, option, setup_logging, user_errors
from harness.data.registry import DATASETS
from harness.errors import UserError
from harness.launch.planning import STAGES, plasticity_configs, run_config, world_size_of
from harness.launch.torchrun import launch_if_needed
from harness.models.registry import MODELS
from harness.names import choices
from harness.sparse.methods.registry import METHODS

log = logging.getLogger("harness")

# Options shared by every command that trains ------------------------------------------------------------
Arch = Annotated[str, option("--arch", help=f"{choices(MODELS.builtins)} | MODULE:FUNCTION (a plug-in)")]
Dataset = Annotated[
    str, option("--dataset", help=f"{choices(DATASETS.builtins)} | MODULE:FUNCTION (a plug-in)")
]
# Paths as strings: typer would turn "" into Path("") == "." and hide an empty value from the config's check.
DataDir = Annotated[str | None, option("--data-dir", help="where datasets live (default: data)")]
Epochs = Annotated[
    int | None, option("--epochs", help="run length; LR decays and pruning end rescale with it")
]
BatchSize = Annotated[int | None, option("--batch-size", help="global batch size (divided among processes)")]
LearningRate = Annotated[float | None, option("--lr", help="peak learning rate")]
Seed = Annotated[int | None, option("--seed", help="random seed (part of the run id)")]
# `--final-sparsity` too: a W&B sweep parameter named `sparsity` would clash with the config section.
Sparsity = Annotated[
    float | None, option("--sparsity", "--final-sparsity", help="final sparsity s_f in [0, 1)")
]
InitSparsity = Annotated[float | None, option("--init-sparsity", help="GraNet's initial sparsity s_i")]
UpdateFrequency = Annotated[int | None, option("--update-frequency", help="steps between mask updates (dT)")]
RunsDir = Annotated[str | None, option("--runs-dir", help="root of the run store (default: runs)")]
Group = Annotated[str | None, option("--group", help="sub-directory of the run store (and W&B group)")]
Wandb = Annotated[str | None, option("--wandb", help="offline (default) | online | disabled")]
Device = Annotated[str | None, option("--device", help="auto | cpu | cuda")]
Threads = Annotated[
    int | None, option("--threads", help="intra-op CPU threads per process (part of the run id; default 1)")
]
Assignments = Annotated[
    list[str] | None, option("--set", help="any config value: section.key=value (repeatable)")
]
DryRun = Annotated[bool, option("--dry-run", help="print the resolved config and run directory, then exit")]
NprocPerNode = Annotated[int, option("--nproc-per-node", help="processes on this machine (torchrun)")]
Nnodes = Annotated[int, option("--nnodes", help="machines in the job (torchrun)")]
NodeRank = Annotated[int, option("--node-rank", help="this machine's rank (torchrun, multi-node)")]
RdzvEndpoint = Annotated[
    str | None, option("--rdzv-endpoint", help="host:port of the rendezvous (multi-node)")
]
MaxRestarts = Annotated[int, option("--max-restarts", help="torchrun restarts of a failed job")]


@functools.cache
def click_group() -> Any:
    """The training commands as a click group, built once (building it costs ~25 ms, and sweeps plan
    thousands of runs)."""
    app = typer.Typer()
    app.command()(run)
    app.command()(plasticity)
    return typer.main.get_command(app)


@dataclass(frozen=True)
class PlannedRun:
    """One run directory a command line produces, the argv that produces exactly it, and what it needs first."""

    run_dir: Path
    argv: tuple[str, ...]
    needs: tuple[Path, ...] = ()


def plan_invocation(argv: list[str]) -> list[PlannedRun]:
    """The runs `harness <argv>` would produce, in dependency order. Raises UserError for bad arguments."""
    import click

    group = click_group()
    if not argv or argv[0] not in ("run", "plasticity"):
        raise UserError(f"sweep command: expected 'run' or 'plasticity' after the program, got {argv[:1]}")
    command = group.get_command(click.Context(group), argv[0])
    try:
        params = command.make_context(argv[0], list(argv[1:])).params
    except (click.ClickException, typer.TyperException) as error:
        raise UserError(f"{' '.join(argv)}: {' '.join(error.format_message().split())}") from None
    world_size = world_size_of(params)
    if argv[0] == "run":
        return [PlannedRun(configuration.run_directory(run_config(params), world_size), tuple(argv))]
    runs: list[PlannedRun] = []
    for stage, config in zip(STAGES, plasticity_configs(params), strict=False):
        stage_argv = tuple(argv) if stage == "probe" else (*argv, "--stage", stage)
        needs = (runs[-1].run_dir,) if runs else ()
        runs.append(PlannedRun(configuration.run_directory(config, world_size), stage_argv, needs))
    return runs


# The method registry's names (harness.names: without importing the registry itself).
METHOD_HELP = choices(METHODS)


def run(
    method: Annotated[str | None, typer.Argument(help=METHOD_HELP)] = None,
    method_option: Annotated[
        str | None, typer.Option("--method", help="the method, as an option (for sweeps)")
    ] = None,
    arch: Arch = "resnet20",
    dataset: Dataset = "cifar10",
    data_dir: DataDir = None,
    epochs: Epochs = None,
    batch_size: BatchSize = None,
    lr: LearningRate = None,
    seed: Seed = None,
    sparsity: Sparsity = None,
    init_sparsity: InitSparsity = None,
    update_frequency: UpdateFrequency = None,
    runs_dir: RunsDir = None,
    group: Group = None,
    wandb: Wandb = None,
    device: Device = None,
    threads: Threads = None,
    assignments: Assignments = None,
    dry_run: DryRun = False,
    nproc_per_node: NprocPerNode = 1,
    nnodes: Nnodes = 1,
    node_rank: NodeRank = 0,
    rdzv_endpoint: RdzvEndpoint = None,
    max_restarts: MaxRestarts = 0,
    verbose: Verbose = False,
) -> None:
    """Train one model with one sparsity method; prints the run directory last."""
    params = locals()
    setup_logging(verbose)
    with user_errors():
        config = run_config(params)
        if dry_run:
            warn_if_data_missing(config)
            typer.echo(configuration.dump_yaml(config), nl=False)
            typer.echo(str(configuration.run_directory(config, world_size_of(params))))
            return
        launch_if_needed(params, config.optim.batch_size)
        execute(config.run.device, lambda dist: train_or_skip(config, dist))


def plasticity(
    probe_epoch: Annotated[int, option("--probe-epoch", help="epoch of the base run at which to prune")],
    pruning_rate: Annotated[
        float, option("--pruning-rate", help="fraction of the remaining weights to prune")
    ],
    criterion: Annotated[str, option("--criterion", help="global | layerwise | filter")] = "global",
    regeneration: Annotated[
        bool, typer.Option("--regeneration/--no-regeneration", help="regrow as many weights by gradient")
    ] = False,
    continue_epochs: Annotated[
        int | None, option("--continue-epochs", help="epochs of training after pruning (default: to the end)")
    ] = None,
    pretrained_sparsity: Annotated[
        float, option("--pretrained-sparsity", help="sparsity of the base run's fixed ERK mask (0 = dense)")
    ] = 0.0,
    probe_every: Annotated[
        int | None,
        option("--probe-every", help="epochs between the base run's kept checkpoints (default: epochs/16)"),
    ] = None,
    recalibrate_bn: Annotated[
        bool,
        typer.Option(
            "--recalibrate-bn/--no-recalibrate-bn",
            "--recalibrate_bn/--no_recalibrate_bn",  # the spelling a W&B sweep agent passes
            help="measure accuracies with BatchNorm statistics recomputed over the training set",
        ),
    ] = False,
    average_last: Annotated[
        int,
        option(
            "--average-last",
            help="acc_continue = mean test accuracy over the continuation's last N epochs (default 1: the final)",
        ),
    ] = 1,
    stage: Annotated[str, option("--stage", help="stop after: base | control | probe")] = "probe",
    arch: Arch = "resnet20",
    dataset: Dataset = "cifar10",
    data_dir: DataDir = None,
    epochs: Epochs = None,
    batch_size: BatchSize = None,
    lr: LearningRate = None,
    seed: Seed = None,
    runs_dir: RunsDir = None,
    group: Group = None,
    wandb: Wandb = None,
    device: Device = None,
    threads: Threads = None,
    assignments: Assignments = None,
    dry_run: DryRun = False,
    nproc_per_node: NprocPerNode = 1,
    nnodes: Nnodes = 1,
    node_rank: NodeRank = 0,
    rdzv_endpoint: RdzvEndpoint = None,
    max_restarts: MaxRestarts = 0,
    verbose: Verbose = False,
) -> None:
    """One probe of the pruning-plasticity study (training its base run and control first if needed)."""
    params = locals()
    setup_logging(verbose)
    with user_errors():
        configs = plasticity_configs(params)
        if dry_run:
            warn_if_data_missing(configs[-1])
            typer.echo(configuration.dump_yaml(configs[-1]), nl=False)
            for config in configs:
                typer.echo(str(configuration.run_directory(config, world_size_of(params))))
            return
        launch_if_needed(params, configs[-1].optim.batch_size)
        execute(configs[-1].run.device, lambda dist: run_plasticity(configs, dist))


def warn_if_data_missing(config: configuration.Config) -> None:
    """A dry run creates nothing, but says (one line on stderr) when the real run would not find its data."""
    from harness.data.datasets import missing_data

    reason = missing_data(config.data)
    if reason is not None:
        typer.echo(f"warning: {reason}", err=True)


def run_plasticity(configs: list[configuration.Config], dist: Any) -> Path:
    from harness.engine.lifecycle import run_training
    from harness.store.tracking import outside_sweep
    from harness.studies.probe import run_probe

    path = None
    for index, config in enumerate(configs):
        # Under a W&B sweep agent the last run is what the agent launched this command for; the runs it needs
        # first (base, control) are mirrored as ordinary runs of the project, outside the sweep.
        with contextlib.nullcontext() if index == len(configs) - 1 else outside_sweep():
            result = run_training(config, dist) if config.plasticity is None else run_probe(config, dist)
        if result.skipped:
            log.info("already completed: %s", result.run_dir)
        path = result.run_dir
    assert path is not None
    return path


def train_or_skip(config: configuration.Config, dist: Any) -> Path:
    from harness.engine.lifecycle import run_training

    result = run_training(config, dist)
    if result.skipped:
        log.info("already completed: %s", result.run_dir)
    return result.run_dir


def execute(device: str, work: Any) -> None:
    """Run `work(dist)` in this process (one rank of a torchrun job, or alone) and print its result path.

    Exit codes: 0 done, 2 user error, 3 stopped by a signal (resumable), 1 a failed run.
    """
    from harness.engine.distributed import MaskMismatchError, dist_info_from_env, init_distributed, teardown
    from harness.engine.loop import Interrupted, NonFiniteError
    from harness.store.rundir import StorageFullError

    dist = dist_info_from_env(device)
    init_distributed(dist)
    try:
        path = work(dist)
    except Interrupted as stopped:
        log.warning("%s", stopped)
        # The traceback's frames still hold the model and its DDP wrapper, which must be gone before
        # teardown (see harness.engine.distributed.teardown).
        traceback.clear_frames(stopped.__traceback__)
        teardown(dist)
        raise typer.Exit(3) from None
    # Any other failure, a UserError included, leaves without teardown: it may have happened on this rank
    # only, and teardown's barrier would wait for peers that never arrive. torchrun stops the peers.
    except (MaskMismatchError, NonFiniteError, StorageFullError) as failure:
        # A failed run with a clear cause: one line, no traceback; peers are stopped by torchrun.
        typer.echo(f"error: {failure}", err=True)
        raise typer.Exit(1) from None
    teardown(dist)
    if dist.is_main:
        typer.echo(str(path))

"""The `harness` command: a thin table of sub-commands over the library (no logic lives here).

Every option has a dashed and an underscored spelling (`--init-sparsity` and `--init_sparsity`)
because W&B sweep agents pass parameter names exactly as the sweep file writes them.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import subprocess
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from harness import config as configuration
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


def option(*names: str, help: str, **kwargs: Any) -> Any:
    """A Typer option under every given name plus the underscored spelling of each dashed one."""
    spellings = list(names)
    spellings += [name.replace("-", "_").replace("__", "--", 1) for name in names if "-" in name[2:]]
    return typer.Option(*spellings, help=help, **kwargs)


# Options shared by every command that trains ------------------------------------------------------------
Arch = Annotated[str, option("--arch", help="resnet20 | resnet32 | resnet56 | vgg19 | resnet50")]
Dataset = Annotated[str, option("--dataset", help="cifar10 | cifar100 | imagenet | mnist1d | synthetic")]
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

# Named flags win over --set, which wins over the recipe.
FLAG_FIELDS = {
    "data_dir": ("data", "data_dir"),
    "epochs": ("optim", "epochs"),
    "batch_size": ("optim", "batch_size"),
    "lr": ("optim", "lr"),
    "seed": ("run", "seed"),
    "sparsity": ("sparsity", "sparsity"),
    "init_sparsity": ("sparsity", "init_sparsity"),
    "update_frequency": ("sparsity", "update_frequency"),
    "runs_dir": ("tracking", "runs_dir"),
    "group": ("tracking", "group"),
    "wandb": ("tracking", "wandb"),
    "device": ("run", "device"),
    "threads": ("run", "threads"),
}


def overrides_from(flags: dict[str, Any], assignments: list[str] | None) -> dict[str, Any]:
    overrides = configuration.parse_assignments(assignments or [])
    for name, value in flags.items():
        if value is not None:
            section, key = FLAG_FIELDS[name]
            overrides.setdefault(section, {})[key] = str(value) if isinstance(value, Path) else value
    return overrides


@contextmanager
def user_errors() -> Iterator[None]:
    """A user's mistake is one line on stderr and exit code 2; never a traceback."""
    try:
        yield
    except UserError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None


def setup_logging(verbose: bool = False) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    rank = os.environ.get("RANK")
    prefix = f"[rank {rank}] " if rank is not None and os.environ.get("WORLD_SIZE", "1") != "1" else ""
    logging.basicConfig(
        level=level, format=f"%(asctime)s {prefix}%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    for noisy in ("wandb", "urllib3", "matplotlib", "PIL", "fontTools"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def launcher_argv(
    nproc_per_node: int, nnodes: int, node_rank: int, rdzv_endpoint: str | None, max_restarts: int
) -> list[str] | None:
    """The torchrun command that re-executes this one on N processes, or None to run in this process."""
    if "RANK" in os.environ or (nproc_per_node == 1 and nnodes == 1):
        return None
    from harness.distributed import torchrun_command

    if nnodes > 1 and not rdzv_endpoint:
        raise UserError("--rdzv-endpoint: required with --nnodes > 1 (host:port of the rendezvous)")
    argv, environment = torchrun_command(
        strip_launcher_options(sys.argv[1:]),
        nproc_per_node=nproc_per_node,
        nnodes=nnodes,
        node_rank=node_rank,
        rdzv_endpoint=rdzv_endpoint,
        max_restarts=max_restarts,
    )
    return argv, {**environment, **threads_per_process(nproc_per_node, os.environ)}


THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def threads_per_process(nproc_per_node: int, environ: dict[str, str] | os._Environ) -> dict[str, str]:
    """Thread counts for each of the N processes on this machine.

    A thread count set for this command (a sweep worker's share of the cores, SLURM's cpus-per-task) is
    the budget of the whole command, so it is divided among the processes: inherited unchanged, N
    processes would each run that many threads and oversubscribe the cores (measured here: 2 ranks with
    2 threads each on 2 cores train ~8x slower). Unset, torchrun's own default (1) applies. PyTorch's
    intra-op pool is then set by each process from `run.threads`, which the results depend on.
    """
    threads: dict[str, str] = {}
    for name in THREAD_VARIABLES:
        raw = environ.get(name)
        if raw is None or nproc_per_node == 1:
            continue
        if not raw.strip().isdigit() or int(raw) < 1:
            raise UserError(f"{name}={raw!r}: must be a positive integer")
        threads[name] = str(max(1, int(raw) // nproc_per_node))
    return threads


LAUNCHER_OPTIONS = {"--nproc-per-node", "--nnodes", "--node-rank", "--rdzv-endpoint", "--max-restarts"}


def strip_launcher_options(argv: list[str]) -> list[str]:
    """The command line without the launcher's own options (the children must not relaunch)."""
    kept: list[str] = []
    skip_next = False
    for token in argv:
        if skip_next:
            skip_next = False
            continue
        name = token.split("=", 1)[0].replace("_", "-")
        if name in LAUNCHER_OPTIONS:
            skip_next = "=" not in token
            continue
        kept.append(token)
    return kept


def relaunch(command: tuple[list[str], dict[str, str]]) -> None:
    from harness.signals import stop_requested
    from harness.sweep import die_with_parent

    argv, env = command
    if stop_requested():  # stopped while starting up: nothing has run, and the same command starts afresh
        log.warning("stopped before launching torchrun; the same command starts the run")
        raise typer.Exit(3)
    log.info("launching: %s", " ".join(argv))
    # If this launcher is killed outright, torchrun gets SIGTERM (its workers checkpoint) instead of
    # training on as an orphan that a re-run would race with.
    process = subprocess.Popen(argv, env={**os.environ, **env}, preexec_fn=die_with_parent())
    raise typer.Exit(wait_passing_on_stop(process))


def wait_passing_on_stop(process: subprocess.Popen) -> int:
    """Wait for the torchrun job; a SIGTERM sent to this launcher (by a sweep runner, a scheduler, `kill`)
    is passed on once; torchrun passes it to the workers, which checkpoint and stop. Ctrl-C is not passed
    on: the terminal delivers it to torchrun too (same process group), and a second signal would cut
    torchrun's shutdown short.

    Returns torchrun's exit code, or 3 (stopped, resumable) when a stop signal ended the job.
    """
    stops: list[int] = []

    def pass_on(signum: int, frame: Any) -> None:
        if not stops:
            process.send_signal(signum)
        stops.append(signum)

    def note(signum: int, frame: Any) -> None:
        stops.append(signum)

    from harness.signals import stop_requested

    previous = {
        signal.SIGTERM: signal.signal(signal.SIGTERM, pass_on),
        signal.SIGINT: signal.signal(signal.SIGINT, note),
    }
    if stop_requested():  # arrived between the start of torchrun and the line above
        pass_on(signal.SIGTERM, None)
    try:
        code = process.wait()
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    return 3 if stops and code != 0 else code


# ---------------------------------------------------------------------------------------------------------
# From a command's parameters to the run configs it stands for. The sweep runner uses the same functions
# (through `plan_invocation`) to know which run directories a command line will produce, without running it.


def world_size_of(params: dict[str, Any]) -> int:
    if "WORLD_SIZE" in os.environ:
        return int(os.environ["WORLD_SIZE"])
    return params.get("nproc_per_node", 1) * params.get("nnodes", 1)


def run_config(params: dict[str, Any]) -> configuration.Config:
    method, method_option = params.get("method"), params.get("method_option")
    chosen = method_option or method
    if chosen is None:
        raise UserError("method: missing; give it as the first argument or with --method (e.g. granet)")
    if method and method_option and method != method_option:
        raise UserError(f"method: given twice with different values ({method!r} and {method_option!r})")
    flags = {name: params.get(name) for name in FLAG_FIELDS}
    return configuration.resolve(
        chosen,
        dataset=params["dataset"],
        arch=params["arch"],
        overrides=overrides_from(flags, params.get("assignments")),
    )


STAGES = ("base", "control", "probe")


def plasticity_configs(params: dict[str, Any]) -> list[configuration.Config]:
    """[base, control, probe] (without the probe when the rate is 0), cut at `--stage`."""
    from harness import plasticity

    flags = {name: params.get(name) for name in FLAG_FIELDS if name in params}
    flags["group"] = flags.get("group") or plasticity.GROUP
    recipe = configuration.resolve(
        "dense",
        dataset=params["dataset"],
        arch=params["arch"],
        overrides=overrides_from(flags, params.get("assignments")),
    )
    study = plasticity.Study(
        probe_epoch=params["probe_epoch"],
        pruning_rate=params["pruning_rate"],
        criterion=params["criterion"],
        regeneration=params["regeneration"],
        continue_epochs=params["continue_epochs"],
        pretrained_sparsity=params["pretrained_sparsity"],
        probe_every=params["probe_every"],
        recalibrate_bn=params["recalibrate_bn"],
    )
    if params["stage"] not in STAGES:
        raise UserError(f"--stage: {params['stage']!r} is not one of {', '.join(STAGES)}")
    configs = plasticity.plan(recipe, study, world_size_of(params))
    return configs[: STAGES.index(params["stage"]) + 1]


@functools.cache
def click_group() -> Any:
    """The CLI as a click group, built once (building it costs ~25 ms, and sweeps plan thousands of runs)."""
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


# ---------------------------------------------------------------------------------------------------------
# Commands


Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")]
# The registry's names, written out so that the CLI starts without importing torch (a test pins them).
METHOD_HELP = (
    "dense | static | gmp | gmp-layerwise | granet | rigl | set | snip | grasp | synflow | mest | acdc"
)


@app.command()
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


@app.command()
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
    from harness.data import missing_data

    reason = missing_data(config.data)
    if reason is not None:
        typer.echo(f"warning: {reason}", err=True)


def run_plasticity(configs: list[configuration.Config], dist: Any) -> Path:
    from harness.plasticity import run_probe
    from harness.train import run_training

    path = None
    for index, config in enumerate(configs):
        target = index == len(configs) - 1  # what a W&B sweep agent launched this command for
        if config.plasticity is None:
            result = run_training(config, dist, sweep_run=target)
        else:
            result = run_probe(config, dist, sweep_run=target)
        if result.skipped:
            log.info("already completed: %s", result.run_dir)
        path = result.run_dir
    assert path is not None
    return path


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
    from harness.sweep import run_sweep

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
            from harness.slurm import slurm_command

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
    """Jobs forked from this process once it has imported the training code (harness/prewarm.py: ~3.5 s
    less per run), or None where fork is not available (a fresh interpreter per job)."""
    from harness import prewarm
    from harness.sweep import child_environment

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
    from harness import wandb_offline as offline

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
    from harness.bench import format_rows, run_benchmarks

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

    from harness.bench import format_inference_markdown, inference_report, run_inference_benchmarks
    from harness.checkpoint import atomic_write_text
    from harness.config import ARCHS

    for arch in archs:
        if arch not in ARCHS:
            raise UserError(f"--arch: unknown architecture {arch!r}; valid: {', '.join(ARCHS)}")
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
    from harness import export as exporter

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
            from harness.config import ARCHS

            if arch not in ARCHS:
                raise UserError(f"--arch: unknown architecture {arch!r}; valid: {', '.join(ARCHS)}")
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


def launch_if_needed(params: dict[str, Any], batch_size: int) -> None:
    command = launcher_argv(
        params["nproc_per_node"],
        params["nnodes"],
        params["node_rank"],
        params["rdzv_endpoint"],
        params["max_restarts"],
    )
    if command is not None:
        # Checked here too, so the mistake is one line now rather than one per rank after torchrun starts.
        world_size = params["nproc_per_node"] * params["nnodes"]
        if batch_size % world_size:
            raise UserError(
                f"optim.batch_size: the global batch size {batch_size} must be divisible by the "
                f"number of processes ({world_size})"
            )
        relaunch(command)


def train_or_skip(config: configuration.Config, dist: Any) -> Path:
    from harness.train import run_training

    result = run_training(config, dist)
    if result.skipped:
        log.info("already completed: %s", result.run_dir)
    return result.run_dir


def execute(device: str, work: Any) -> None:
    """Run `work(dist)` in this process (one rank of a torchrun job, or alone) and print its result path.

    Exit codes: 0 done, 2 user error, 3 stopped by a signal (resumable), 1 a failed run.
    """
    from harness.distributed import MaskMismatchError, dist_info_from_env, init_distributed, teardown
    from harness.rundir import StorageFullError
    from harness.train import Interrupted, NonFiniteError

    dist = dist_info_from_env(device)
    init_distributed(dist)
    try:
        path = work(dist)
    except Interrupted as stopped:
        log.warning("%s", stopped)
        # The traceback's frames still hold the model and its DDP wrapper, which must be gone before
        # teardown (see harness.distributed.teardown).
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


TRAINING_COMMANDS = ("run", "plasticity")


def main() -> None:
    if sys.argv[1:2] and sys.argv[1] in TRAINING_COMMANDS:
        # First thing, before torch is imported: a stop during start-up must end in exit code 3 (resumable).
        from harness.distributed import die_with_torchrun
        from harness.signals import defer_stop_signals

        defer_stop_signals()
        die_with_torchrun()
    app()


if __name__ == "__main__":
    main()

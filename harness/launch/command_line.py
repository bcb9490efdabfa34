"""The grammar of a training command line (`harness run`, `harness plasticity`) and the typed requests it
parses into.

The options are declared once, here: `SHARED_OPTIONS` serve both commands, and each command adds its own.
The CLI registers `run_request` and `probe_request` as its commands (their signatures are the options),
and the sweep planner parses a grid point's argv with `parse_training_argv`, through the same declarations,
so flags, defaults and spellings cannot drift apart and the planner does not depend on the CLI.

Every option has a dashed and an underscored spelling (`--init-sparsity` and `--init_sparsity`) because
W&B sweep agents pass parameter names exactly as the sweep file writes them.

Nothing here imports torch or the config: `harness run --help` and a sweep's planning start from it.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from harness.errors import UserError
from harness.registry.datasets import DATASETS
from harness.registry.models import MODELS
from harness.sparse.methods.registry import METHODS

if TYPE_CHECKING:
    from harness.studies.plan import Study


def choices(names: Iterable[str]) -> str:
    """`a | b | c`: the valid values in a command's help."""
    return " | ".join(names)


def option(*names: str, help: str, **kwargs: Any) -> Any:
    """A Typer option under every given name plus the underscored spelling of each dashed one."""
    spellings = list(names)
    spellings += [name.replace("-", "_").replace("__", "--", 1) for name in names if "-" in name[2:]]
    return typer.Option(*spellings, help=help, **kwargs)


# ---------------------------------------------------------------------------------------------------------
# Typed requests


@dataclass(frozen=True)
class Launch:
    """How many processes run the command (torchrun options)."""

    nproc_per_node: int = 1
    nnodes: int = 1
    node_rank: int = 0
    rdzv_endpoint: str | None = None
    max_restarts: int = 0

    @property
    def world_size(self) -> int:
        """The processes of the job: torchrun's WORLD_SIZE inside one of its workers, else as asked."""
        if "WORLD_SIZE" in os.environ:
            return int(os.environ["WORLD_SIZE"])
        return self.nproc_per_node * self.nnodes


@dataclass(frozen=True)
class Training:
    """What every training command is given: the recipe's coordinates, named overrides, where runs go."""

    arch: str | None = None  # None: the config file's, else resnet20
    dataset: str | None = None  # None: the config file's, else cifar10
    config_file: str | None = None
    from_run: str | None = None
    data_dir: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    seed: int | None = None
    runs_dir: str | None = None
    group: str | None = None
    wandb: str | None = None
    device: str | None = None
    threads: int | None = None
    assignments: tuple[str, ...] = ()
    dry_run: bool = False
    launch: Launch = Launch()
    verbose: bool = False


@dataclass(frozen=True)
class RunRequest:
    """`harness run`: one model trained with one sparsity method."""

    method: str | None = None
    method_option: str | None = None
    sparsity: float | None = None
    init_sparsity: float | None = None
    update_frequency: int | None = None
    training: Training = Training()


@dataclass(frozen=True)
class ProbeRequest:
    """`harness plasticity`: one probe of the pruning-plasticity study (its base run and control first).
    The probe is the study's own `Study`, not a copy of its fields."""

    study: Study
    stage: str = "probe"
    training: Training = Training()


TrainingRequest = RunRequest | ProbeRequest

# ---------------------------------------------------------------------------------------------------------
# The options every training command takes (declared once)

Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")]
# Paths as strings: typer would turn "" into Path("") == "." and hide an empty value from the config's check.
SHARED_OPTIONS: dict[str, tuple[Any, Any]] = {  # name: (annotation, default)
    # arch and dataset default to None so that a --config / --from file's own values can stand.
    "arch": (
        Annotated[
            str | None,
            option(
                "--arch", help=f"{choices(MODELS.builtins)} | MODULE:FUNCTION (a plug-in); default resnet20"
            ),
        ],
        None,
    ),
    "dataset": (
        Annotated[
            str | None,
            option(
                "--dataset",
                help=f"{choices(DATASETS.builtins)} | MODULE:FUNCTION (a plug-in); default cifar10",
            ),
        ],
        None,
    ),
    "config_file": (
        Annotated[
            str | None,
            option(
                "--config",
                help="a config YAML (full or partial, e.g. a run's config.yaml) under the flags and --set",
            ),
        ],
        None,
    ),
    "from_run": (
        Annotated[
            str | None,
            option("--from", help="a finished run's directory: its config.yaml, under the flags and --set"),
        ],
        None,
    ),
    "data_dir": (
        Annotated[str | None, option("--data-dir", help="where datasets live (default: data)")],
        None,
    ),
    "epochs": (
        Annotated[
            int | None, option("--epochs", help="run length; LR decays and pruning end rescale with it")
        ],
        None,
    ),
    "batch_size": (
        Annotated[int | None, option("--batch-size", help="global batch size (divided among processes)")],
        None,
    ),
    "lr": (Annotated[float | None, option("--lr", help="peak learning rate")], None),
    "seed": (Annotated[int | None, option("--seed", help="random seed (part of the run id)")], None),
    "runs_dir": (
        Annotated[str | None, option("--runs-dir", help="root of the run store (default: runs)")],
        None,
    ),
    "group": (
        Annotated[str | None, option("--group", help="sub-directory of the run store (and W&B group)")],
        None,
    ),
    "wandb": (Annotated[str | None, option("--wandb", help="offline (default) | online | disabled")], None),
    "device": (Annotated[str | None, option("--device", help="auto | cpu | cuda")], None),
    "threads": (
        Annotated[
            int | None,
            option("--threads", help="intra-op CPU threads per process (part of the run id; default 1)"),
        ],
        None,
    ),
    "assignments": (
        Annotated[list[str] | None, option("--set", help="any config value: section.key=value (repeatable)")],
        None,
    ),
    "dry_run": (
        Annotated[bool, option("--dry-run", help="print the resolved config and run directory, then exit")],
        False,
    ),
    "nproc_per_node": (
        Annotated[int, option("--nproc-per-node", help="processes on this machine (torchrun)")],
        1,
    ),
    "nnodes": (Annotated[int, option("--nnodes", help="machines in the job (torchrun)")], 1),
    "node_rank": (
        Annotated[int, option("--node-rank", help="this machine's rank (torchrun, multi-node)")],
        0,
    ),
    "rdzv_endpoint": (
        Annotated[str | None, option("--rdzv-endpoint", help="host:port of the rendezvous (multi-node)")],
        None,
    ),
    "max_restarts": (Annotated[int, option("--max-restarts", help="torchrun restarts of a failed job")], 0),
    "verbose": (Verbose, False),
}
LAUNCH_FIELDS = ("nproc_per_node", "nnodes", "node_rank", "rdzv_endpoint", "max_restarts")

Request = TypeVar("Request")


def with_shared_options(build: Callable[..., Request]) -> Callable[..., Request]:
    """`build(own options..., training=Training)` as a function of its own options followed by every shared
    one, so that Typer (the CLI, the planner's parser) sees one flat list of options."""
    own = [p for p in inspect.signature(build, eval_str=True).parameters.values() if p.name != "training"]
    shared = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
        for name, (annotation, default) in SHARED_OPTIONS.items()
    ]

    @functools.wraps(build)
    def flat(**options: Any) -> Request:
        values = {name: options.pop(name, default) for name, (_, default) in SHARED_OPTIONS.items()}
        launch = Launch(**{name: values.pop(name) for name in LAUNCH_FIELDS})
        values["assignments"] = tuple(values["assignments"] or ())
        return build(**options, training=Training(**values, launch=launch))

    flat.__signature__ = inspect.Signature([*own, *shared])  # type: ignore[attr-defined]
    del flat.__wrapped__  # inspect.signature must read __signature__, not follow the wrapped function
    flat.__annotations__ = {p.name: p.annotation for p in flat.__signature__.parameters.values()}
    return flat


@with_shared_options
def run_request(
    method: Annotated[
        str | None, typer.Argument(help=f"{choices(METHODS)} | MODULE:CLASS (a plug-in)")
    ] = None,
    method_option: Annotated[
        str | None, typer.Option("--method", help="the method, as an option (for sweeps)")
    ] = None,
    # `--final-sparsity` too: a W&B sweep parameter named `sparsity` would clash with the config section.
    sparsity: Annotated[
        float | None, option("--sparsity", "--final-sparsity", help="final sparsity s_f in [0, 1)")
    ] = None,
    init_sparsity: Annotated[
        float | None, option("--init-sparsity", help="GraNet's initial sparsity s_i")
    ] = None,
    update_frequency: Annotated[
        int | None, option("--update-frequency", help="steps between mask updates (dT)")
    ] = None,
    *,
    training: Training,
) -> RunRequest:
    """Train one model with one sparsity method; prints the run directory last."""
    return RunRequest(method, method_option, sparsity, init_sparsity, update_frequency, training)


@with_shared_options
def probe_request(
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
    *,
    training: Training,
) -> ProbeRequest:
    """One probe of the pruning-plasticity study (training its base run and control first if needed)."""
    # Here, not at the top: the study's plan imports the config, which help and usage errors never need.
    from harness.studies.plan import Study

    study = Study(
        probe_epoch,
        pruning_rate,
        criterion,
        regeneration,
        continue_epochs,
        pretrained_sparsity,
        probe_every,
        recalibrate_bn,
        average_last,
    )
    return ProbeRequest(study, stage, training)


TRAINING_COMMANDS: dict[str, Callable[..., TrainingRequest]] = {
    "run": run_request,
    "plasticity": probe_request,
}


# ---------------------------------------------------------------------------------------------------------
# Parsing a command line without running it (the sweep planner)


@functools.cache
def training_parser() -> Any:
    """The training commands as a click group, built once (building it costs ~25 ms, and sweeps plan
    thousands of runs)."""
    app = typer.Typer()
    for name, build in TRAINING_COMMANDS.items():
        app.command(name)(build)
    return typer.main.get_command(app)


def option_names(command: str) -> frozenset[str]:
    """Every spelling of every option of a training command (`--seed`, `--no-regeneration`, ...); empty for
    another command."""
    import click

    if command not in TRAINING_COMMANDS:
        return frozenset()
    group = training_parser()
    parsed = group.get_command(click.Context(group), command)
    return frozenset(spelling for param in parsed.params for spelling in (*param.opts, *param.secondary_opts))


def check_set_form(argv: list[str] | tuple[str, ...]) -> None:
    """`--set optim.lr 0.05` (a space for the `=`) parses as `--set optim.lr` and a stray argument `0.05`,
    which the parser would call an unexpected extra argument: raise UserError showing the `=` form instead."""
    words = list(argv)
    for index, word in enumerate(words):
        if word == "--set":
            assignment, following = words[index + 1 : index + 2], words[index + 2 : index + 3]
        elif word.startswith("--set="):
            assignment, following = [word.removeprefix("--set=")], words[index + 1 : index + 2]
        else:
            continue
        if assignment and following and "=" not in assignment[0] and not following[0].startswith("-"):
            raise UserError(
                f"--set {assignment[0]} {following[0]}: a setting is one argument, section.key=value; "
                f"write --set {assignment[0]}={following[0]}"
            )


def parse_training_argv(argv: list[str] | tuple[str, ...]) -> TrainingRequest:
    """The request `harness <argv>` stands for (`argv` starts with `run` or `plasticity`).

    Raises UserError naming the command line for anything its parser rejects.
    """
    import click

    if not argv or argv[0] not in TRAINING_COMMANDS:
        raise UserError(
            f"sweep command: expected 'run' or 'plasticity' after the program, got {list(argv[:1])}"
        )
    check_set_form(argv)
    group = training_parser()
    command = group.get_command(click.Context(group), argv[0])
    try:
        params = command.make_context(argv[0], list(argv[1:])).params
    except (click.ClickException, typer.TyperException) as error:
        raise UserError(f"{' '.join(argv)}: {' '.join(error.format_message().split())}") from None
    return TRAINING_COMMANDS[argv[0]](**params)

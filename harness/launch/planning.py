"""From a training command's typed request to the run configs it stands for, and the runs a command line
produces.

`harness run` and `harness plasticity` resolve their configs here (`run_config`, `plasticity_configs`); the
sweep runner asks `plan_invocation` which run directories a command line will produce, without running it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import config as configuration
from harness.errors import UserError
from harness.launch.command_line import ProbeRequest, RunRequest, Training, parse_training_argv
from harness.store import rundir
from harness.studies import plan as plasticity

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


def overrides_from(flags: dict[str, Any], assignments: tuple[str, ...]) -> dict[str, Any]:
    overrides = configuration.parse_assignments(list(assignments))
    for name, value in flags.items():
        if value is not None:
            section, key = FLAG_FIELDS[name]
            overrides.setdefault(section, {})[key] = str(value) if isinstance(value, Path) else value
    return overrides


def named_flags(*holders: Any) -> dict[str, Any]:
    """The FLAG_FIELDS values the given requests hold (a command without a flag leaves it out)."""
    return {
        name: getattr(holder, name) for holder in holders for name in FLAG_FIELDS if hasattr(holder, name)
    }


DEFAULT_DATASET, DEFAULT_ARCH = "cifar10", "resnet20"


@dataclass(frozen=True)
class Layers:
    """Where a command's config starts: the dataset and arch that pick its recipe, and a config file's
    values (`--config FILE` or `--from RUN_DIR`), which sit above the recipe and below flags and --set."""

    dataset: str
    arch: str
    base: dict[str, Any]

    def section_value(self, section: str, key: str) -> Any:
        return (self.base.get(section) or {}).get(key)


def config_layers(training: Training) -> Layers:
    """The command's config file (if any), read with the run store's safe reader, and its recipe's names.
    Raises UserError for both options at once, an unreadable or damaged file."""
    if training.config_file is not None and training.from_run is not None:
        raise UserError("--config and --from: give one of them (--from RUN_DIR reads RUN_DIR/config.yaml)")
    base: dict[str, Any] = {}
    if training.config_file is not None or training.from_run is not None:
        path = (
            Path(training.config_file)
            if training.config_file is not None
            else rundir.config_path(Path(str(training.from_run)))
        )
        option = "--config" if training.config_file is not None else "--from"
        if not path.is_file():
            raise UserError(f"{option}: {path} is not a file; give a config YAML (a run's config.yaml)")
        try:
            # `plasticity: null` (a run that is not a probe) is no section at all.
            read = rundir.read_config_file(path)
            base = {section: dict(value) for section, value in read.items() if value is not None}
        except rundir.DamagedFile as damage:
            raise UserError(f"{option}: {damage}") from None
    data, model = base.get("data") or {}, base.get("model") or {}
    return Layers(
        dataset=training.dataset or data.get("dataset") or DEFAULT_DATASET,
        arch=training.arch or model.get("arch") or DEFAULT_ARCH,
        base=base,
    )


def run_config(request: RunRequest) -> configuration.Config:
    training = request.training
    layers = config_layers(training)
    if layers.base.get("plasticity") is not None:
        raise UserError(
            "plasticity: the config file is a probe's (it has a plasticity section); "
            "`harness run` trains one model, `harness plasticity` runs probes"
        )
    method, method_option = request.method, request.method_option
    chosen = method_option or method or layers.section_value("sparsity", "method")
    if chosen is None:
        raise UserError("method: missing; give it as the first argument or with --method (e.g. granet)")
    if method and method_option and method != method_option:
        raise UserError(f"method: given twice with different values ({method!r} and {method_option!r})")
    return configuration.resolve(
        chosen,
        dataset=layers.dataset,
        arch=layers.arch,
        overrides=overrides_from(named_flags(request, training), training.assignments),
        base=layers.base,
    )


STAGES = ("base", "control", "probe")


def plasticity_configs(request: ProbeRequest) -> list[configuration.Config]:
    """[base, control, probe] (without the probe when the rate is 0), cut at `--stage`."""
    training: Training = request.training
    flags = named_flags(training)
    flags["group"] = flags.get("group") or plasticity.GROUP
    layers = config_layers(training)
    # A probe's file holds its study and its stage's method; the study comes from this command's options.
    base = {name: values for name, values in layers.base.items() if name not in ("plasticity", "sparsity")}
    recipe = configuration.resolve(
        "dense",
        dataset=layers.dataset,
        arch=layers.arch,
        overrides=overrides_from(flags, training.assignments),
        base=base,
    )
    if request.stage not in STAGES:
        raise UserError(f"--stage: {request.stage!r} is not one of {', '.join(STAGES)}")
    configs = plasticity.plan(recipe, request.study, training.launch.world_size)
    return configs[: STAGES.index(request.stage) + 1]


@dataclass(frozen=True)
class PlannedRun:
    """One run directory a command line produces, the argv that produces exactly it, and what it needs first."""

    run_dir: Path
    argv: tuple[str, ...]
    needs: tuple[Path, ...] = ()
    data: configuration.DataConfig | None = None  # where its dataset must be (a sweep checks before starting)
    processes: int = 1  # on this machine (--nproc-per-node)


def plan_invocation(argv: list[str]) -> list[PlannedRun]:
    """The runs `harness <argv>` would produce, in dependency order. Raises UserError for bad arguments."""
    request = parse_training_argv(argv)
    world_size = request.training.launch.world_size
    processes = request.training.launch.nproc_per_node
    if isinstance(request, RunRequest):
        config = run_config(request)
        run_dir = configuration.run_directory(config, world_size)
        return [PlannedRun(run_dir, tuple(argv), data=config.data, processes=processes)]
    runs: list[PlannedRun] = []
    for stage, config in zip(STAGES, plasticity_configs(request), strict=False):
        stage_argv = tuple(argv) if stage == "probe" else (*argv, "--stage", stage)
        needs = (runs[-1].run_dir,) if runs else ()
        run_dir = configuration.run_directory(config, world_size)
        runs.append(PlannedRun(run_dir, stage_argv, needs, data=config.data, processes=processes))
    return runs

"""From a training command's parameters to the run configs it stands for.

`harness run` and `harness plasticity` resolve their configs here; the sweep runner uses the same functions
(through `harness.cli.training.plan_invocation`) to know which run directories a command line will produce,
without running it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from harness import config as configuration
from harness.errors import UserError
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


def overrides_from(flags: dict[str, Any], assignments: list[str] | None) -> dict[str, Any]:
    overrides = configuration.parse_assignments(assignments or [])
    for name, value in flags.items():
        if value is not None:
            section, key = FLAG_FIELDS[name]
            overrides.setdefault(section, {})[key] = str(value) if isinstance(value, Path) else value
    return overrides


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
        average_last=params["average_last"],
    )
    if params["stage"] not in STAGES:
        raise UserError(f"--stage: {params['stage']!r} is not one of {', '.join(STAGES)}")
    configs = plasticity.plan(recipe, study, world_size_of(params))
    return configs[: STAGES.index(params["stage"]) + 1]

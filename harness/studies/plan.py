"""The pruning-plasticity study (SPEC section 7), planned: base runs, probes and their unpruned controls as
run configs. Torch-free, so that planning a sweep or printing a dry run imports no training code; running a
probe is `harness.studies.probe`'s.

A probe is an ordinary run directory whose config carries a `plasticity` section. It starts from a
checkpoint the base run kept at the probe epoch (weights, optimizer state, LR schedule position, masks,
RNG), measures test accuracy (acc_pre), prunes a fraction of the remaining weights, optionally regrows
as many per layer by gradient (zero-cost neuroregeneration), measures again (acc_post), and continues
training on the base run's LR schedule for k epochs (acc_continue). The control continues the same
checkpoint unpruned for the same k epochs (acc_control), so recovery can be told apart from extra training.

    base (dense, or a fixed ERK mask at the pre-trained sparsity; keeps a checkpoint every `probe_every`)
      -> control(t, k)                           one per probe epoch and continuation length
      -> probe(t, p, criterion, regeneration, k) many
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harness.config import Config, deep_merge, run_id, validate
from harness.errors import UserError

GROUP = "plasticity"


@dataclass(frozen=True)
class Study:
    """One point of the study grid, before it is turned into run configs."""

    probe_epoch: int
    pruning_rate: float
    criterion: str = "global"
    regeneration: bool = False
    continue_epochs: int | None = None  # None = to the end of the base schedule
    pretrained_sparsity: float = 0.0
    probe_every: int | None = None  # None = the recipe's epochs / 16 (every 10 epochs of 160)
    recalibrate_bn: bool = False  # measure with BatchNorm statistics recomputed (PlasticityConfig)
    average_last: int = 1  # acc_continue = the mean over the continuation's last epochs (PlasticityConfig)


def default_probe_every(epochs: int) -> int:
    return max(1, round(epochs / 16))


def probe_epochs(epochs: int, every: int) -> tuple[int, ...]:
    return tuple(range(0, epochs + 1, every))


def base_config(recipe: Config, study: Study) -> Config:
    """Dense, or a fixed ERK mask at the pre-trained sparsity, keeping every probe epoch's checkpoint."""
    # Checked here, not by the config: a bad value would otherwise surface as another field's error
    # (sparsity.sparsity), a garbled list of kept epochs, or, for probe_every 0, the default in silence.
    if study.probe_every is not None and study.probe_every < 1:
        raise UserError(f"probe_every: must be a positive number of epochs (got {study.probe_every})")
    if not 0.0 <= study.pretrained_sparsity < 1.0:
        raise UserError(f"pretrained_sparsity: must be in [0, 1) (got {study.pretrained_sparsity})")
    epochs = recipe.optim.epochs
    every = study.probe_every or default_probe_every(epochs)
    kept = probe_epochs(epochs, every)
    if study.probe_epoch not in kept:
        raise UserError(
            f"probe_epoch: {study.probe_epoch} is not a checkpoint of the base run, which keeps epochs "
            f"{', '.join(map(str, kept))} (every {every}; change it with probe_every)"
        )
    method = "dense" if study.pretrained_sparsity == 0 else "static"
    overrides: dict[str, Any] = {
        "sparsity": {"method": method, "sparsity": study.pretrained_sparsity, "init_sparsity": 0.0},
        "tracking": {"job_type": "base"},
        "run": {"keep_checkpoints": list(kept), "stop_after_epochs": None},
        "plasticity": None,
    }
    return validate(deep_merge(recipe.to_dict(), overrides))


def probe_config(base: Config, study: Study, world_size: int = 1) -> Config:
    epochs = base.optim.epochs
    until = (
        epochs if study.continue_epochs is None else min(study.probe_epoch + study.continue_epochs, epochs)
    )
    if study.average_last > until - study.probe_epoch:
        raise UserError(
            f"average_last: {study.average_last} epochs is more than the continuation from epoch "
            f"{study.probe_epoch} has ({until - study.probe_epoch})"
        )
    plasticity = {
        "base_run": f"{base.tracking.group}/{run_id(base, world_size)}",
        "probe_epoch": study.probe_epoch,
        "pruning_rate": study.pruning_rate,
        "criterion": study.criterion,
        "regeneration": study.regeneration,
        "continue_epochs": until - study.probe_epoch,
        "recalibrate_bn": study.recalibrate_bn,
        "average_last": study.average_last,
    }
    overrides = {
        "tracking": {"job_type": "probe"},
        "run": {"keep_checkpoints": [], "stop_after_epochs": until},
        "plasticity": plasticity,
    }
    return validate(deep_merge(base.to_dict(), overrides))


def control_of(config: Config) -> Config:
    """The unpruned control of a probe: the same checkpoint and continuation, nothing pruned."""
    overrides = {
        "tracking": {"job_type": "control"},
        "plasticity": {"pruning_rate": 0.0, "criterion": "global", "regeneration": False},
    }
    return validate(deep_merge(config.to_dict(), overrides))


def plan(recipe: Config, study: Study, world_size: int = 1) -> list[Config]:
    """The runs one probe needs, in order: base, control, probe (a rate of 0 is the control itself)."""
    base = base_config(recipe, study)
    probe = probe_config(base, study, world_size)
    return [base, control_of(probe), probe] if study.pruning_rate > 0 else [base, control_of(probe)]

"""The pruning-plasticity study (SPEC section 7): base runs, probes and their unpruned controls.

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

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness.config import Config, PlasticityConfig, deep_merge, validate
from harness.engine.distributed import DistInfo, all_reduce_sum
from harness.engine.lifecycle import RunResult, last_epoch, log_mask_update, run_id_and_dir, run_training
from harness.engine.loop import evaluate
from harness.engine.session import Best, ProbeRecord, Session
from harness.errors import UserError
from harness.models.batchnorm import recomputed_statistics
from harness.sparse import prune_fraction, regrow
from harness.store import checkpoint as checkpoints
from harness.store import rundir
from harness.store.tracking import Tracker

log = logging.getLogger(__name__)

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
    base_id, _ = run_id_and_dir(base, world_size)
    plasticity = {
        "base_run": f"{base.tracking.group}/{base_id}",
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


def plan(recipe: Config, study: Study, world_size: int = 1) -> list[Config]:
    """The runs one probe needs, in order: base, control, probe (a rate of 0 is the control itself)."""
    base = base_config(recipe, study)
    probe = probe_config(base, study, world_size)
    return [base, control_of(probe), probe] if study.pruning_rate > 0 else [base, control_of(probe)]


# ---------------------------------------------------------------------------------------------------------
# Running a probe


def run_probe(config: Config, dist: DistInfo) -> RunResult:
    """Run a probe or control whose base (and, for a probe, control) have completed."""
    probe = config.plasticity
    if probe is None:
        raise ValueError("run_probe needs a config with a plasticity section")
    runs_dir = Path(config.tracking.runs_dir)
    base_dir = runs_dir / probe.base_run
    checkpoint = checkpoints.checkpoint_dir(base_dir) / checkpoints.epoch_checkpoint_name(probe.probe_epoch)
    if not checkpoint.exists():
        raise UserError(f"{checkpoint}: the base run has no checkpoint for probe epoch {probe.probe_epoch}")
    control: Control | None = None
    if probe.pruning_rate > 0:
        _, control_dir = run_id_and_dir(control_of(config), dist.world_size)
        control_summary = rundir.read_summary(control_dir)
        if "acc_continue" not in control_summary:
            raise UserError(f"{control_dir}: the control run of this probe has not completed")
        control = Control(control_summary["acc_continue"], str(control_dir.relative_to(runs_dir)))

    def prepare(session: Session, tracker: Tracker) -> None:
        prune_and_measure(session, tracker, checkpoint, probe, control)

    return run_training(config, dist, prepare=prepare, epoch_end=measure_continuation, finish=add_outcome)


@dataclass(frozen=True)
class Control:
    """A probe's completed control run: its accuracy after the same continuation unpruned, and where it is."""

    acc_continue: float
    run: str  # group/run-id


def measure_continuation(session: Session) -> None:
    """At the end of each of the continuation's last `average_last` epochs (before that epoch's checkpoint,
    so a resumed probe has them), its test accuracy, measured as acc_pre was. Nothing for average_last 1:
    the final accuracy is read by add_outcome, as it always was."""
    probe = session.probe
    assert probe is not None, "a probe's session holds its record from prune_and_measure on"
    if probe.average_last == 1 or session.epoch <= last_epoch(session.config) - probe.average_last:
        return
    if probe.recalibrate_bn:
        accuracy = measure(session, True)[0]
    else:  # the epoch's own test accuracy, just measured by the loop with the running statistics
        assert session.last_epoch is not None
        accuracy = session.last_epoch["test/acc"]
    session.probe = dataclasses.replace(probe, acc_continue_epochs=(*probe.acc_continue_epochs, accuracy))


def add_outcome(session: Session, summary: dict[str, Any]) -> None:
    """acc_continue is the probe's final test accuracy, or the mean over its last `average_last` epochs;
    plasticity = acc_continue - acc_pre."""
    probe = session.probe
    assert probe is not None, "a probe's session holds its record from prune_and_measure on"
    summary.update(probe.as_dict())
    if probe.average_last > 1:
        measured = probe.acc_continue_epochs
        assert len(measured) == probe.average_last, f"{len(measured)} of {probe.average_last} epochs measured"
        summary["acc_continue"] = sum(measured) / len(measured)
    elif probe.recalibrate_bn:
        summary["acc_continue"] = measure(session, True)[0]
    else:
        summary["acc_continue"] = summary["test_acc"]
    # What the probe trained at, not the base method's target (0 for a dense base).
    summary["sparsity"] = 1.0 - summary["density"]
    summary["plasticity"] = summary["acc_continue"] - summary["acc_pre"]
    if summary["pruning_rate"] == 0:
        summary["acc_control"] = summary["acc_continue"]


def control_of(config: Config) -> Config:
    """The unpruned control of a probe: the same checkpoint and continuation, nothing pruned."""
    overrides = {
        "tracking": {"job_type": "control"},
        "plasticity": {"pruning_rate": 0.0, "criterion": "global", "regeneration": False},
    }
    return validate(deep_merge(config.to_dict(), overrides))


def prune_and_measure(
    session: Session, tracker: Tracker, checkpoint: Path, probe: PlasticityConfig, control: Control | None
) -> None:
    """Load the base checkpoint, measure, prune, optionally regrow, measure; record it all in the session."""
    state = checkpoints.load_checkpoint(checkpoint)
    session.load_state_dict(state)
    # The probe's own history starts here: its FLOPs and wall time count only what it trains itself.
    session.flops.total = session.flops.dense_total = 0.0
    session.elapsed = 0.0
    session.best = Best()
    acc_pre, _ = measure(session, probe.recalibrate_bn)
    before = session.masks.active_counts()
    pruned = prune_fraction(session.masks, probe.pruning_rate, probe.criterion, session.optimizer)
    grown = [0] * len(before)
    if probe.regeneration and probe.pruning_rate > 0:
        regrowth_gradient(session)
        grown = regrow(session.masks, pruned, probe.criterion, session.optimizer)
        session.optimizer.zero_grad(set_to_none=True)
    session.flops.masks_changed(session.current_flops())
    session.batchnorm.masks_changed()
    acc_post, loss_post = measure(session, probe.recalibrate_bn)
    # Until the continuation trains an epoch, the probe's latest numbers are those right after pruning.
    session.last_epoch = {
        "test/acc": acc_post,
        "test/loss": loss_post,
        "val/acc": None,
        "train/loss": None,
    }
    record_masks(session, tracker, pruned.weights, grown)
    record = ProbeRecord(
        probe_epoch=probe.probe_epoch,
        pruning_rate=probe.pruning_rate,
        criterion=probe.criterion,
        regeneration=probe.regeneration,
        continue_epochs=probe.continue_epochs,
        pretrained_sparsity=session.config.sparsity.sparsity
        if session.config.sparsity.method == "static"
        else 0.0,
        acc_pre=acc_pre,
        acc_post=acc_post,
        base_run=probe.base_run,
        acc_control=None if control is None else control.acc_continue,
        control_run=None if control is None else control.run,
        recalibrate_bn=probe.recalibrate_bn,
        average_last=probe.average_last,
    )
    tracker.log({"kind": "probe", "step": session.step, "epoch": session.epoch, **record.as_dict()})
    session.probe = record


def measure(session: Session, recalibrate: bool) -> tuple[float, float]:
    """Test accuracy and loss, with BatchNorm statistics recomputed over the training set if asked.

    The recomputation reads the current epoch's training batches on a forked RNG and puts the running
    statistics back afterwards, so a probe trains exactly as it would without it."""
    if not recalibrate:
        accuracy, loss = evaluate(session, "test")
        return accuracy, loss
    device = session.device
    inputs = (batch.to(device) for batch, _ in session.loaders.train.iterate(session.epoch))
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        with recomputed_statistics(session.model, inputs):
            accuracy, loss = evaluate(session, "test")
    return accuracy, loss


def regrowth_gradient(session: Session) -> None:
    """The dense gradient of one training mini-batch, without side effects on the run.

    The global RNG is forked and BatchNorm statistics restored, so a probe with regeneration and one
    without see exactly the same data and model afterwards: they differ only in the regrowth itself.
    """
    model = session.model
    buffers = {name: buffer.clone() for name, buffer in model.named_buffers()}
    with torch.random.fork_rng(devices=[]):
        inputs, targets = next(iter(session.loaders.train.iterate(session.epoch)))
        model.train()
        session.optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(inputs.to(session.device)), targets.to(session.device))
        loss.backward()
    average_gradients(session)
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            buffer.copy_(buffers[name])


def average_gradients(session: Session) -> None:
    """Under DDP, the gradient of the whole global batch on every rank (identical bits everywhere, so every
    rank regrows the same weights); the bare model's backward above saw only this rank's share."""
    if not session.dist.is_distributed:
        return
    gradients = [parameter.grad for parameter in session.model.parameters() if parameter.grad is not None]
    flat = torch.cat([gradient.reshape(-1) for gradient in gradients])
    all_reduce_sum(session.dist, flat).div_(session.dist.world_size)
    offset = 0
    for gradient in gradients:
        gradient.copy_(flat[offset : offset + gradient.numel()].view_as(gradient))
        offset += gradient.numel()


def record_masks(session: Session, tracker: Tracker, pruned: list[int], grown: list[int]) -> None:
    """The probe's pruning (and regrowth) as a mask-update event, built as the method builds its own."""
    event = session.method.external_event(session.step, pruned=pruned, grown=grown)
    log_mask_update(tracker, session.masks, event, epoch=session.epoch)

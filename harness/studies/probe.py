"""Running a plasticity probe (or its control) as a client of the engine: `ProbeExtension` plugs the study
into an ordinary run (`harness.engine.lifecycle.run_training`) through the engine's hooks.

The probe starts from the checkpoint its base run kept at the probe epoch, measures acc_pre, prunes,
optionally regrows, measures acc_post, then continues training as any run does; `ProbeRecord` holds what
it measured, writes the `probe` line, travels in the run's checkpoints (entry "probe" of their `extra`,
where it always was) so that a probe resumed mid-continuation ends bit-identically, and goes into the
summary with the outcome (acc_continue, plasticity). Planning the study is `harness.studies.plan`'s.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness.config import Config, PlasticityConfig, run_directory
from harness.engine.batchnorm import recomputed_statistics
from harness.engine.console import summary_line, wall_clock
from harness.engine.distributed import DistInfo, all_reduce_sum
from harness.engine.extension import RunExtension, log_mask_update
from harness.engine.lifecycle import RunResult, last_epoch, run_training
from harness.engine.loop import evaluate
from harness.engine.session import Best, Session
from harness.errors import UserError
from harness.sparse import prune_fraction, regrow
from harness.store import checkpoint as checkpoints
from harness.store import rundir
from harness.store.tracking import Tracker
from harness.studies.plan import control_of

CHECKPOINT_ENTRY = "probe"  # the record's name in a checkpoint's `extra`


@dataclass(frozen=True)
class ProbeRecord:
    """What a plasticity probe measured around its pruning: it goes into the probe's `probe` line and
    summary, and travels in the run's checkpoints so that a resumed probe still has it."""

    probe_epoch: int
    pruning_rate: float
    criterion: str
    regeneration: bool
    continue_epochs: int
    pretrained_sparsity: float
    acc_pre: float
    acc_post: float
    base_run: str
    acc_control: float | None = None  # a probe with a pruning rate above 0: its control's acc_continue
    control_run: str | None = None
    # Accuracies read with BatchNorm statistics recomputed (PlasticityConfig.recalibrate_bn).
    recalibrate_bn: bool = False
    # acc_continue averages the continuation's last `average_last` epochs (PlasticityConfig.average_last),
    # whose accuracies collect here as they are measured; both only where average_last > 1.
    average_last: int = 1
    acc_continue_epochs: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        # A checkpoint's record comes back from torch.load with a list.
        object.__setattr__(self, "acc_continue_epochs", tuple(self.acc_continue_epochs))

    def as_dict(self) -> dict[str, Any]:
        """The record's keys in the run store's order; the control's only where there is one, the averaged
        epochs only where there are several."""
        record = dataclasses.asdict(self)
        if self.average_last == 1:
            del record["average_last"], record["acc_continue_epochs"]
        else:
            record["acc_continue_epochs"] = list(self.acc_continue_epochs)
        return {
            key: value for key, value in record.items() if key not in OPTIONAL_PROBE_KEYS or value is not None
        }


OPTIONAL_PROBE_KEYS = ("acc_control", "control_run")


@dataclass(frozen=True)
class Control:
    """A probe's completed control run: its accuracy after the same continuation unpruned, and where it is."""

    acc_continue: float
    run: str  # group/run-id


def run_probe(config: Config, dist: DistInfo) -> RunResult:
    """Run a probe or control whose base (and, for a probe, control) have completed."""
    probe = config.plasticity
    if probe is None:
        raise ValueError("run_probe needs a config with a plasticity section")
    runs_dir = Path(config.tracking.runs_dir)
    base_dir = runs_dir / probe.base_run
    checkpoint = rundir.checkpoint_dir(base_dir) / rundir.epoch_checkpoint_name(probe.probe_epoch)
    if not checkpoint.exists():
        raise UserError(f"{checkpoint}: the base run has no checkpoint for probe epoch {probe.probe_epoch}")
    control: Control | None = None
    if probe.pruning_rate > 0:
        control_dir = run_directory(control_of(config), dist.world_size)
        control_summary = rundir.read_summary(control_dir)
        if "acc_continue" not in control_summary:
            raise UserError(f"{control_dir}: the control run of this probe has not completed")
        control = Control(control_summary["acc_continue"], str(control_dir.relative_to(runs_dir)))
    return run_training(config, dist, extension=ProbeExtension(checkpoint, probe, control))


class ProbeExtension(RunExtension):
    """The study's hooks into a probe's run; `record` is what it measured, from `start` (or `resume`) on."""

    def __init__(self, checkpoint: Path, settings: PlasticityConfig, control: Control | None) -> None:
        self.checkpoint = checkpoint
        self.settings = settings
        self.control = control
        self.record: ProbeRecord | None = None

    def start(self, session: Session, tracker: Tracker) -> None:
        self.record = prune_and_measure(session, tracker, self.checkpoint, self.settings, self.control)

    def checkpoint_state(self) -> dict[str, Any]:
        return {} if self.record is None else {CHECKPOINT_ENTRY: self.record.as_dict()}

    def resume(self, extra: dict[str, Any]) -> None:
        if CHECKPOINT_ENTRY not in extra:
            # A probe's first checkpoint follows its start, which made the record: without one, not a probe's.
            raise ValueError(f"the checkpoint has no {CHECKPOINT_ENTRY!r} entry: it is not a probe's")
        self.record = ProbeRecord(**extra[CHECKPOINT_ENTRY])

    def after_evaluation(self, session: Session) -> None:
        self.record = measure_continuation(session, self.measured())

    def add_to_summary(self, session: Session, summary: dict[str, Any]) -> None:
        add_outcome(session, self.measured(), summary)

    def summary_line(self, summary: dict[str, Any]) -> str:
        return probe_summary_line(summary)

    def measured(self) -> ProbeRecord:
        assert self.record is not None, "a probe holds its record from its start or resume on"
        return self.record


def measure_continuation(session: Session, record: ProbeRecord) -> ProbeRecord:
    """At the end of each of the continuation's last `average_last` epochs (before that epoch's checkpoint,
    so a resumed probe has them), its test accuracy, measured as acc_pre was. Nothing for average_last 1:
    the final accuracy is read by add_outcome, as it always was."""
    if record.average_last == 1 or session.epoch <= last_epoch(session.config) - record.average_last:
        return record
    if record.recalibrate_bn:
        accuracy = measure(session, True)[0]
    else:  # the epoch's own test accuracy, just measured by the loop with the running statistics
        assert session.last_epoch is not None
        accuracy = session.last_epoch["test/acc"]
    return dataclasses.replace(record, acc_continue_epochs=(*record.acc_continue_epochs, accuracy))


def add_outcome(session: Session, record: ProbeRecord, summary: dict[str, Any]) -> None:
    """acc_continue is the probe's final test accuracy, or the mean over its last `average_last` epochs;
    plasticity = acc_continue - acc_pre."""
    summary.update(record.as_dict())
    if record.average_last > 1:
        measured = record.acc_continue_epochs
        assert len(measured) == record.average_last, (
            f"{len(measured)} of {record.average_last} epochs measured"
        )
        summary["acc_continue"] = sum(measured) / len(measured)
    elif record.recalibrate_bn:
        summary["acc_continue"] = measure(session, True)[0]
    else:
        summary["acc_continue"] = summary["test_acc"]
    # What the probe trained at, not the base method's target (0 for a dense base).
    summary["sparsity"] = 1.0 - summary["density"]
    summary["plasticity"] = summary["acc_continue"] - summary["acc_pre"]
    if summary["pruning_rate"] == 0:
        summary["acc_control"] = summary["acc_continue"]


def probe_summary_line(summary: dict[str, Any]) -> str:
    """A probe's closing line: what it pruned (and regrew) and how it recovered. A control (nothing pruned)
    ends as any run does."""
    rate = summary["pruning_rate"]
    if rate == 0:
        return summary_line(summary)
    what = f"pruned {rate:.0%} of the remaining weights ({summary['criterion']})"
    if summary["regeneration"]:
        what += ", regrew as many by gradient"
    parts = [
        what,
        f"acc_pre {summary['acc_pre']:.4f}",
        f"acc_post {summary['acc_post']:.4f}",
        f"acc_continue {summary['acc_continue']:.4f}",
        f"plasticity {summary['plasticity']:+.4f}",
    ]
    name = summary["run_id"]
    return f"{name}: " + " | ".join(parts) + f" | density {summary['density']:.4f} | {wall_clock(summary)}"


def prune_and_measure(
    session: Session, tracker: Tracker, checkpoint: Path, probe: PlasticityConfig, control: Control | None
) -> ProbeRecord:
    """Load the base checkpoint, measure, prune, optionally regrow, measure; log it and return the record."""
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
    return record


def measure(session: Session, recalibrate: bool) -> tuple[float, float]:
    """Test accuracy and loss, with BatchNorm statistics recomputed over the training set if asked.

    The recomputation reads the current epoch's training batches on a forked RNG and puts the running
    statistics back afterwards, so a probe trains exactly as it would without it."""
    if not recalibrate:
        accuracy, loss = evaluate(session, "test")
        return accuracy, loss
    device = session.device
    layout = session.input_format  # the model's (run.memory_format), as the training batches get it
    inputs = (
        batch.to(device, memory_format=layout) for batch, _ in session.loaders.train.iterate(session.epoch)
    )
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
        inputs = inputs.to(session.device, memory_format=session.input_format)
        loss = nn.functional.cross_entropy(model(inputs), targets.to(session.device))
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

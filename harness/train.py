"""Training: a `Session` holds everything live, `fit` is the loop, `run_training` runs one run directory.

The loop is deliberately one function: forward, backward, a finiteness guard, optimizer.step(), the LR
schedule, the sparsity method right after the step, logging, and the end-of-epoch evaluation and
checkpoint. Everything it needs is built once by `build_session` from the config's sections.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from harness import checkpoint as checkpoints
from harness import config as configuration
from harness import rundir
from harness.batchnorm import RevivalGuard, batchnorm_after
from harness.config import Config, OptimConfig, SparsityConfig
from harness.console import Console, summary_line
from harness.data import Loaders, build_datasets, build_loaders
from harness.distributed import DistInfo, all_reduce_sum, barrier, broadcast_tensors, check_identical
from harness.errors import UserError
from harness.flops import InferenceFlops, TrainingFlops, inference_flops, output_positions
from harness.models import build_model
from harness.signals import stop_requested
from harness.sparse import Hyperparameters, MaskSet, MaskUpdate, ScoringInputs, SparsityMethod, build_method
from harness.tracking import Tracker, open_tracker

log = logging.getLogger(__name__)


class NonFiniteError(RuntimeError):
    """The loss or a gradient became NaN/inf; the run stops before the optimizer step."""


class Interrupted(Exception):
    """SIGTERM/SIGINT arrived: a checkpoint was written and the run can be resumed."""


# ---------------------------------------------------------------------------------------------------------
# Building blocks, each from its own config section


def build_optimizer(model: nn.Module, optim: OptimConfig) -> torch.optim.Optimizer:
    decayed = [p for p in model.parameters() if optim.decay_norm_and_bias or p.dim() > 1]
    undecayed = [p for p in model.parameters() if not optim.decay_norm_and_bias and p.dim() <= 1]
    groups = [{"params": decayed, "weight_decay": optim.weight_decay}]
    if undecayed:
        groups.append({"params": undecayed, "weight_decay": 0.0})
    if optim.optimizer == "adam":
        return torch.optim.Adam(groups, lr=optim.lr)
    return torch.optim.SGD(groups, lr=optim.lr, momentum=optim.momentum, nesterov=optim.nesterov)


def epoch_step(fraction: float, epochs: int, steps_per_epoch: int) -> int:
    """A point given as a fraction of the run, in optimizer steps, on an epoch boundary when it is one."""
    return round(fraction * epochs * steps_per_epoch)


def lr_factor(step: int, *, warmup_steps: int, milestones: list[int], decay: float) -> float:
    """Linear warm-up, then x`decay` at every milestone passed (the paper's step schedule)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return decay ** sum(step >= milestone for milestone in milestones)


def build_scheduler(
    optimizer: torch.optim.Optimizer, optim: OptimConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    milestones = [epoch_step(point, optim.epochs, steps_per_epoch) for point in optim.lr_decay_at]
    warmup_steps = epoch_step(optim.warmup, optim.epochs, steps_per_epoch)

    def factor(step: int) -> float:
        return lr_factor(step, warmup_steps=warmup_steps, milestones=milestones, decay=optim.lr_decay_factor)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def sparsity_hyperparameters(
    sparsity: SparsityConfig, *, epochs: int, steps_per_epoch: int, seed: int
) -> Hyperparameters:
    """The sparse core's settings from the config section, field by field by iteration (one schema:
    a field added to both is carried over without touching this), points in time converted to steps."""
    values: dict[str, Any] = {}
    for spec in dataclasses.fields(Hyperparameters):
        if spec.name in Hyperparameters.RUN_FIELDS:
            continue
        value = getattr(sparsity, spec.name)
        values[spec.name] = epoch_step(value, epochs, steps_per_epoch) if spec.metadata.get("time") else value
    return Hyperparameters(total_steps=epochs * steps_per_epoch, seed=seed, **values)


# ---------------------------------------------------------------------------------------------------------
# The session: everything live, and its checkpoint


@dataclass
class Best:
    """Selection on the validation split only (never the test set)."""

    val_acc: float | None = None
    epoch: int | None = None
    test_acc: float | None = None

    def update(self, epoch: int, val_acc: float | None, test_acc: float) -> None:
        if val_acc is not None and (self.val_acc is None or val_acc > self.val_acc):
            self.val_acc, self.epoch, self.test_acc = val_acc, epoch, test_acc


@dataclass
class Session:
    config: Config
    dist: DistInfo
    device: torch.device
    loaders: Loaders
    model: nn.Module  # the bare model; `network` is what the loop calls (DDP-wrapped when distributed)
    network: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    masks: MaskSet
    method: SparsityMethod
    positions: dict[str, int]
    flops: TrainingFlops
    batchnorm: RevivalGuard  # resets the statistics of BatchNorm channels that mask updates revive
    steps_per_epoch: int
    epoch: int = 0  # completed epochs
    step: int = 0  # optimizer steps taken
    best: Best = field(default_factory=Best)
    elapsed: float = 0.0  # wall time of earlier sessions of this run
    # Running sums of the epoch in progress (loss * samples, correct, samples), kept on the device so the
    # step path never waits for the host; checkpointed so a mid-epoch resume logs the same numbers.
    totals: Tensor = field(default_factory=lambda: torch.zeros(3, dtype=torch.float64))
    extra: dict[str, Any] = field(default_factory=dict)
    input_shape: tuple[int, ...] = ()  # one sample's, for a method's data-free scoring pass

    @property
    def total_steps(self) -> int:
        return self.config.optim.epochs * self.steps_per_epoch

    def at_final_density(self) -> bool:
        """Whether the method's schedule has reached the run's final density. Best-validation selection
        compares only such models: a gradual method's best epoch would otherwise be a denser network
        from before t_e (seen: GraNet at 98% on MNIST-1D, best validation at epoch 8 at 35% density)."""
        return self.method.target_density(self.step) <= self.method.target_density(self.total_steps)

    def current_flops(self) -> InferenceFlops:
        return inference_flops(self.model, self.masks, self.positions)

    def state_dict(self, *, rng: Any, elapsed: float, totals: Tensor) -> dict[str, Any]:
        """Everything to resume from: `rng` holds every rank's generators, `elapsed` the wall time so far,
        `totals` the running sums of the epoch in progress over all ranks."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "sparsifier": self.method.state_dict(),
            "flops": self.flops.state_dict(),
            "rng": rng,
            "epoch": self.epoch,
            "step": self.step,
            "best": {"val_acc": self.best.val_acc, "epoch": self.best.epoch, "test_acc": self.best.test_acc},
            "elapsed": elapsed,
            "totals": totals.detach().cpu(),
            "extra": self.extra,
        }

    def load_state_dict(self, state: dict[str, Any], *, rng: bool = True) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.method.load_state_dict(state["sparsifier"])
        self.flops.load_state_dict(state["flops"])
        self.flops.masks_changed(self.current_flops())
        self.batchnorm.sync()
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.best = Best(**state["best"])
        self.elapsed = float(state["elapsed"])
        # The checkpoint holds the sums over all ranks: rank 0 carries them on, the others restart from 0.
        totals = state["totals"].to(self.device)
        self.totals = totals if self.dist.is_main else torch.zeros_like(totals)
        self.extra = dict(state.get("extra", {}))
        if rng:
            checkpoints.restore_rng_state(pick_rank_state(state["rng"], self.dist.rank))


def pick_rank_state(rng: Any, rank: int) -> Any:
    """Checkpoints hold one RNG state per rank (a list); this rank's, or the only one."""
    if isinstance(rng, list):
        return rng[rank] if rank < len(rng) else rng[0]
    return rng


def build_session(config: Config, dist: DistInfo) -> Session:
    device = dist.device  # chosen once from run.device by dist_info_from_env
    # Rank 0 first: a download or a dataset generation must not run on every rank into the same folder.
    if not dist.is_main:
        barrier(dist)
    datasets = build_datasets(config.data)
    if dist.is_main:
        barrier(dist)
    if config.optim.batch_size > len(datasets.train):  # one batch would be the whole set, padded by repeats
        raise UserError(
            f"optim.batch_size: {config.optim.batch_size} is larger than the training set "
            f"({len(datasets.train)} samples after the validation split); use at most {len(datasets.train)}"
        )
    loaders = build_loaders(
        datasets,
        global_batch_size=config.optim.batch_size,
        rank=dist.rank,
        world_size=dist.world_size,
        seed=config.run.seed,
        num_workers=config.data.num_workers,
        pin_memory=device.type == "cuda",
    )
    steps_per_epoch = len(loaders.train)
    # Identical model and masks on every rank: both are drawn from the run seed before anything else.
    torch.manual_seed(config.run.seed)
    spec = datasets.spec
    model = build_model(
        config.model.arch,
        num_classes=spec.num_classes,
        in_channels=spec.in_channels,
        spatial_dims=spec.spatial_dims,
        width=config.model.width,
        imagenet=config.data.dataset == "imagenet",
    ).to(device)
    optimizer = build_optimizer(model, config.optim)
    scheduler = build_scheduler(optimizer, config.optim, steps_per_epoch)
    sparsity = config.sparsity
    masks = MaskSet.for_model(
        model, dense_first_layer=sparsity.dense_first_layer, dense_classifier=sparsity.dense_classifier
    )
    hyper = sparsity_hyperparameters(
        sparsity, epochs=config.optim.epochs, steps_per_epoch=steps_per_epoch, seed=config.run.seed
    )
    method = build_method(sparsity.method, masks, optimizer, hyper)
    positions = output_positions(model, spec.input_shape)
    # Augmentation draws differ per rank (each rank sees different samples anyway).
    torch.manual_seed(config.run.seed * 1_000_003 + 7919 * (dist.rank + 1))
    network: nn.Module = model
    if dist.is_distributed:
        device_ids = [device.index] if device.type == "cuda" else None
        network = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    session = Session(
        config=config,
        dist=dist,
        device=device,
        loaders=loaders,
        model=model,
        network=network,
        optimizer=optimizer,
        scheduler=scheduler,
        masks=masks,
        method=method,
        positions=positions,
        flops=TrainingFlops(inference_flops(model, masks, positions)),
        batchnorm=RevivalGuard(masks, batchnorm_after(model, spec.input_shape)),
        steps_per_epoch=steps_per_epoch,
        input_shape=tuple(spec.input_shape),
    )
    session.totals = session.totals.to(device)
    return session


def score_before_training(session: Session) -> None:
    """The method's scoring pass before step 0, for methods that have one (pruning at initialisation).

    It reads the first mini-batches of epoch 0, on a forked RNG so that the run after it draws exactly
    what it would draw without it; with several ranks each scores its own shard and rank 0's masks win.
    Its sample-passes are counted in training FLOPs (dense: the network is dense while it scores).
    """
    method = session.method
    if not method.needs_scoring:
        return
    device = session.device

    def batches(count: int) -> Iterator[tuple[Tensor, Tensor]]:
        for index, (inputs, targets) in enumerate(session.loaders.train.iterate(0)):
            if index >= count:
                return
            yield inputs.to(device), targets.to(device)

    criterion = nn.CrossEntropyLoss(label_smoothing=session.config.optim.label_smoothing)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        sample_passes = method.prepare(
            ScoringInputs(
                model=session.model,
                batches=batches,
                input_shape=session.input_shape,
                loss=lambda logits, targets: criterion(logits.float(), targets),
            )
        )
    if session.dist.is_distributed:
        broadcast_tensors(session.dist, session.masks.masks)
        session.masks.set(session.masks.masks)
        session.masks.apply(session.optimizer)
    session.flops.scoring(sample_passes * session.dist.world_size)
    session.flops.masks_changed(session.current_flops())
    session.batchnorm.masks_changed()


# ---------------------------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def evaluate(session: Session, split: str) -> tuple[float, float] | tuple[None, None]:
    """(accuracy, mean loss) over the whole split, summed exactly over ranks."""
    loader = session.loaders.val if split == "val" else session.loaders.test
    if loader is None:
        return None, None
    model = session.model
    if session.dist.is_distributed:
        # BatchNorm statistics drift apart during an epoch (each rank normalises its own batches; DDP
        # re-syncs them only at the next forward): evaluate every shard with rank 0's, as the checkpoint does.
        broadcast_tensors(session.dist, list(model.buffers()))
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=session.device)
    for inputs, targets in loader.iterate():
        inputs, targets = (
            inputs.to(session.device, non_blocking=True),
            targets.to(session.device, non_blocking=True),
        )
        logits = model(inputs)
        sums[0] += nn.functional.cross_entropy(logits.float(), targets, reduction="sum")
        sums[1] += (logits.argmax(dim=1) == targets).sum()
        sums[2] += targets.numel()
    model.train(was_training)
    all_reduce_sum(session.dist, sums)
    loss, correct, count = sums.tolist()
    return correct / count, loss / count


# ---------------------------------------------------------------------------------------------------------
# The loop


class Hooks:
    """What the loop reports to, so it never touches files or W&B itself. The base ignores everything."""

    def log(self, record: dict[str, Any]) -> None:
        pass

    def mask_update(self, session: Session, update: MaskUpdate) -> None:
        pass

    def epoch_end(self, session: Session) -> None:
        pass

    def mask_check(self, session: Session) -> None:
        pass

    def stop_requested(self) -> bool:
        return False


def fit(session: Session, hooks: Hooks, *, until_epoch: int) -> None:
    """Train from `session.epoch`/`session.step` up to `until_epoch` completed epochs."""
    config, network, optimizer = session.config, session.network, session.optimizer
    criterion = nn.CrossEntropyLoss(label_smoothing=config.optim.label_smoothing)
    log_every = config.tracking.log_every
    check_every = config.run.mask_check_every
    world_size = session.dist.world_size
    parameters = [parameter for parameter in session.model.parameters() if parameter.requires_grad]
    network.train()
    while session.epoch < until_epoch:
        epoch = session.epoch
        started = time.perf_counter()
        first_batch = session.step - epoch * session.steps_per_epoch
        for inputs, targets in session.loaders.train.iterate(epoch, first_batch):
            inputs = inputs.to(session.device, non_blocking=True)
            targets = targets.to(session.device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            with autocast(session.device):
                logits = network(inputs)
                loss = criterion(logits.float(), targets)
            loss.backward()
            check_finite(loss, parameters, session.step + 1)
            lr = optimizer.param_groups[0]["lr"]  # the rate this step uses; the scheduler moves it on
            optimizer.step()
            session.scheduler.step()
            session.step += 1
            update = session.method.step()
            samples = targets.numel() * world_size
            session.flops.step(samples)
            if update is not None:
                if update.dense_gradient:
                    session.flops.dense_gradient(samples)
                session.flops.masks_changed(session.current_flops())
                session.batchnorm.masks_changed()
                hooks.mask_update(session, update)
            elif check_every and session.step % check_every == 0:
                hooks.mask_check(session)  # a mask update checks on its own
            batch = torch.stack(
                [
                    loss.detach().double() * targets.numel(),
                    (logits.argmax(1) == targets).sum().double(),
                    torch.tensor(targets.numel(), dtype=torch.float64, device=session.device),
                ]
            )
            session.totals += batch
            if session.step % log_every == 0:
                hooks.log(
                    {
                        "kind": "train",
                        "step": session.step,
                        "epoch": session.step / session.steps_per_epoch,
                        "train/loss": float(loss.detach()),
                        "lr": lr,
                    }
                )
            if hooks.stop_requested():
                raise Interrupted(f"stopped at step {session.step}")
        session.epoch = epoch + 1
        totals = session.totals.clone()
        all_reduce_sum(session.dist, totals)
        loss_sum, correct, count = totals.tolist()
        session.totals.zero_()
        val_acc, _ = evaluate(session, "val")
        test_acc, test_loss = evaluate(session, "test")
        if session.at_final_density():
            session.best.update(session.epoch, val_acc, test_acc)
        record = {
            "kind": "epoch",
            "step": session.step,
            "epoch": session.epoch,
            "train/loss": loss_sum / max(count, 1),
            "train/acc": correct / max(count, 1),
            "val/acc": val_acc,
            "test/acc": test_acc,
            "test/loss": test_loss,
            "lr": lr_at(session.scheduler, session.step - 1),
            "density": session.masks.density(),
            "time/epoch_s": time.perf_counter() - started,
        }
        session.extra["last_epoch"] = {key: value for key, value in record.items() if key != "kind"}
        hooks.log(record)
        hooks.epoch_end(session)


def lr_at(scheduler: torch.optim.lr_scheduler.LambdaLR, step: int) -> float:
    """The learning rate optimizer step `step` (0-based) used, in the first parameter group."""
    return scheduler.base_lrs[0] * scheduler.lr_lambdas[0](max(step, 0))


def check_finite(loss: Tensor, parameters: list[Tensor], step: int) -> None:
    """One host sync per step: stop before optimizer.step() if the loss or any gradient is NaN/inf."""
    grads = [parameter.grad for parameter in parameters if parameter.grad is not None]
    total = loss.detach().float()
    if grads:
        total = total + torch.stack(torch._foreach_norm(grads)).sum()
    if not bool(torch.isfinite(total)):
        kind = "loss" if not bool(torch.isfinite(loss)) else "gradient"
        raise NonFiniteError(f"non-finite {kind} at step {step}; stopping before the optimizer step")


@contextmanager
def autocast(device: torch.device) -> Iterator[None]:
    """bf16 autocast on GPUs; full precision on the CPU (where it would only be slower)."""
    if device.type == "cuda":
        with torch.autocast("cuda", dtype=torch.bfloat16):
            yield
    else:
        yield


# ---------------------------------------------------------------------------------------------------------
# One run directory, start to finish


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any]
    skipped: bool = False  # already completed: nothing was done


class StopFlag:
    """SIGTERM/SIGINT set a flag; the loop finishes its step and checkpoints outside the handler."""

    def __init__(self, dist: DistInfo, every: int) -> None:
        self.dist = dist
        self.every = every
        self.requested = stop_requested()  # a stop that arrived during start-up (harness.signals)
        self.calls = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def __call__(self) -> bool:
        """Whether to stop now. Under DDP all ranks must stop at the same step, so the flag is agreed on
        by an all-reduce, every `every` steps (one small collective, not one per step)."""
        if not self.dist.is_distributed:
            return self.requested
        self.calls += 1
        if self.calls % self.every:
            return False
        return self.agreed()

    def agreed(self) -> bool:
        """Whether any rank was asked to stop; every rank must call this at the same point."""
        if not self.dist.is_distributed:
            return self.requested
        flag = torch.tensor([1.0 if self.requested else 0.0], device=self.dist.device)
        all_reduce_sum(self.dist, flag)
        return bool(flag.item() > 0)


def run_id_and_dir(config: Config, world_size: int) -> tuple[str, Path]:
    run_dir = configuration.run_directory(config, world_size)
    return run_dir.name, run_dir


def completed_summary(run_dir: Path, *, warn: bool = True) -> dict[str, Any] | None:
    """The summary of a completed run, or None when the run is to be started or resumed.

    A damaged status, config or summary makes the run unfinished (one warning with `warn`): it resumes
    from its last checkpoint, which at the end of a run rewrites all three with the same content.
    """
    try:
        if rundir.read_status(run_dir) != "completed":
            return None
        if rundir.config_path(run_dir).exists():
            rundir.read_config(run_dir)
        return rundir.read_summary(run_dir)
    except rundir.DamagedFile as damage:
        if warn:
            log.warning(
                "run %s is damaged (%s); treating it as unfinished: it resumes from its last checkpoint",
                run_dir.name,
                damage,
            )
        return None


def gather_rng(dist: DistInfo) -> list[dict[str, Any]]:
    """Every rank's RNG state, so a resumed DDP run continues each rank's augmentation stream exactly."""
    state = checkpoints.capture_rng_state()
    if not dist.is_distributed:
        return [state]
    gathered: list[Any] = [None] * dist.world_size
    torch.distributed.all_gather_object(gathered, state)
    return gathered


class RunHooks(Hooks):
    """Connects the loop to a run directory: tracker records, mask snapshots, checkpoints, DDP mask checks."""

    def __init__(
        self,
        session: Session,
        tracker: Tracker,
        run_dir: Path,
        console: Console | None,
        started: float | None = None,
    ):
        self.session = session
        self.tracker = tracker
        self.run_dir = run_dir
        self.console = console
        # time.perf_counter() when this process began the run: checkpoints count its wall time from here.
        self.started = time.perf_counter() if started is None else started
        self.stop: Callable[[], bool] = lambda: False
        # Every checkpoint says whose it is, so a resume can refuse another run's (see check_identity).
        self.identity = {
            "run_id": run_dir.name,
            "config_hash": configuration.config_hash(session.config, session.dist.world_size),
        }

    def log(self, record: dict[str, Any]) -> None:
        self.tracker.log(record)
        if self.console is not None:
            self.console.record(record)

    def stop_requested(self) -> bool:
        return self.stop()

    def mask_update(self, session: Session, update: MaskUpdate) -> None:
        check_masks(session, session.step)
        self.tracker.log(
            {
                "kind": "mask_update",
                "step": update.step,
                "epoch": update.step / session.steps_per_epoch,
                **update.record(),
            }
        )
        self.tracker.log_masks(update.step, session.masks.as_dict())

    def epoch_end(self, session: Session) -> None:
        self.checkpoint()

    def mask_check(self, session: Session) -> None:
        # Between updates masks change only by a bug or a bit flip; catching it early saves the run's rest.
        check_masks(session, session.step)

    def checkpoint(self) -> Path:
        session = self.session
        check_masks(session, session.step)
        state = session.state_dict(
            rng=gather_rng(session.dist),
            # This process's time included: a run killed without warning (SIGKILL, a lost node) resumes
            # from this checkpoint, and its summary would otherwise leave out the time before.
            elapsed=session.elapsed + time.perf_counter() - self.started,
            # Every rank's sums, so a mid-epoch resume logs what an uninterrupted run does.
            totals=all_reduce_sum(session.dist, session.totals.clone()),
        )
        state.update(self.identity)
        path = checkpoints.checkpoint_dir(self.run_dir) / checkpoints.LAST
        if session.dist.is_main:
            checkpoints.save_checkpoint(path, state)
            if (
                session.epoch in session.config.run.keep_checkpoints
                and session.step == session.epoch * session.steps_per_epoch
            ):
                checkpoints.keep_copy(path, session.epoch)
        return path


CHECKSUM_LOG_VARIABLE = "HARNESS_CHECKSUM_LOG"


def check_masks(session: Session, step: int) -> None:
    """Stop the run (MaskMismatchError on every rank) unless all ranks hold exactly the same masks."""
    log_directory = os.environ.get(CHECKSUM_LOG_VARIABLE)
    if not session.dist.is_distributed and not log_directory:
        return
    checksums = session.masks.checksums()
    if log_directory:
        append_checksums(Path(log_directory), session, step, checksums)
    check_identical(session.dist, checksums, session.masks.names, what="mask", step=step)


def append_checksums(directory: Path, session: Session, step: int, checksums: Tensor) -> None:
    """Debug aid: every rank appends the checksums it compares to <directory>/rank<k>.jsonl (before the
    comparison, so a mismatching run leaves the evidence), to verify agreement from outside the job."""
    directory.mkdir(parents=True, exist_ok=True)
    named = dict(zip(session.masks.names, checksums.tolist(), strict=True))
    record = {"step": step, "rank": session.dist.rank, "checksums": named}
    with open(directory / f"rank{session.dist.rank}.jsonl", "a") as handle:
        handle.write(json.dumps(record) + "\n")


def check_resume_point(session: Session) -> None:
    """Every rank must start from the same step: each reads the run directory rank 0 writes."""
    check_identical(
        session.dist,
        torch.tensor([session.step]),
        ["optimizer steps"],
        what="the resume point (is the runs directory on a file system every node shares?)",
        step=session.step,
    )


def run_training(
    config: Config,
    dist: DistInfo,
    *,
    prepare: Callable[[Session, Tracker], None] | None = None,
    finish: Callable[[Session, dict[str, Any]], None] | None = None,
    sweep_run: bool = True,
) -> RunResult:
    """Run (or resume, or skip if completed) the run directory that `config` addresses.

    `prepare` runs once on a fresh start, after the session is built and before training, and `finish`
    may add to the summary; the plasticity study uses them to load a base checkpoint, prune, and report.
    `sweep_run=False` marks a run the command needs first (a probe's base or control): under a W&B sweep
    agent it is mirrored outside the sweep.
    """
    run_id, run_dir = run_id_and_dir(config, dist.world_size)
    done = completed_summary(run_dir, warn=False)
    if done is not None:
        return RunResult(run_dir, done, skipped=True)
    # Before anything is computed: the thread count is part of the run (see RunConfig.threads), so the
    # environment (OMP_NUM_THREADS, a sweep worker's share, torchrun's default) must not decide it.
    torch.set_num_threads(config.run.threads)
    started = time.perf_counter()
    session = build_session(config, dist)  # validates data and config before any directory is created
    with run_lock(run_dir, dist):
        done = completed_summary(run_dir)  # finished by the process we waited for?
        if done is not None:
            return RunResult(run_dir, done, skipped=True)
        rundir.refuse_planted_symlinks(run_dir)
        resume_path = checkpoints.latest_checkpoint(run_dir)
        if resume_path is not None:
            state = checkpoints.load_checkpoint(resume_path)
            checkpoints.check_identity(
                resume_path, state, run_id, configuration.config_hash(config, dist.world_size)
            )
            session.load_state_dict(state)
            log.info("resuming %s from epoch %d, step %d", run_id, session.epoch, session.step)
        check_resume_point(session)
        tracker = open_tracker(
            run_dir,
            config.to_dict(),
            tracking=config.tracking,
            run_id=run_id,
            tags=[config.sparsity.method, config.model.arch, config.data.dataset],
            is_main=dist.is_main,
            resume_step=session.step if resume_path is not None else None,
            sweep_run=sweep_run,
        )
        console = (
            Console(run_id, total_steps=session.total_steps, start_step=session.step)
            if dist.is_main
            else None
        )
        hooks = RunHooks(session, tracker, run_dir, console, started)
        try:
            with StopFlag(dist, config.tracking.log_every) as stop:
                hooks.stop = stop
                if resume_path is None:
                    start(session, tracker, hooks, prepare)
                if stop.agreed():  # asked to stop while starting up: checkpoint before the first step
                    raise Interrupted(f"stopped before training, at step {session.step}")
                fit(session, hooks, until_epoch=last_epoch(config))
            summary = summarize(session, run_id, session.elapsed + time.perf_counter() - started)
            if finish is not None:
                finish(session, summary)
        except Interrupted:
            hooks.checkpoint()
            log.warning("interrupted at step %d; checkpoint written, the same command resumes", session.step)
            raise
        except BaseException:
            tracker.finish("failed")
            raise
        finally:
            if console is not None:
                console.close()
        tracker.finish("completed", summary)
        if dist.is_main:
            log.info("%s", summary_line(summary))
    # Rank 0 has written the summary and status: no rank may read this run's files (e.g. a plasticity
    # probe reading its control's summary) before that.
    barrier(dist)
    return RunResult(run_dir, summary)


def last_epoch(config: Config) -> int:
    stop = config.run.stop_after_epochs
    return config.optim.epochs if stop is None else min(stop, config.optim.epochs)


@contextmanager
def run_lock(run_dir: Path, dist: DistInfo) -> Iterator[None]:
    """One process per run directory: others (a second sweep worker, a W&B agent) wait, then skip or resume."""
    handle = None
    if dist.is_main:
        try:
            run_dir.parent.mkdir(parents=True, exist_ok=True)
            # Beside the run directory, never deleted: unlinking a lock file lets two waiters lock different inodes.
            handle = open(rundir.lock_path(run_dir), "w")
        except OSError as error:
            raise UserError(f"{run_dir}: cannot create the run directory ({error.strerror})") from None
    try:
        wait_for_lock(handle, run_dir, dist)
        yield
    finally:
        if handle is not None:
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()


LOCK_POLL_S = 1.0


def wait_for_lock(handle: Any, run_dir: Path, dist: DistInfo) -> None:
    """Rank 0 takes the run lock, however long another process holds it; the other ranks wait with it.

    Under DDP a blocking wait on rank 0 would leave the others in their next collective, which fails after
    the process-group timeout; so rank 0 tries once a second and tells every rank, in a broadcast that never
    waits longer than that second, whether it has the lock.
    """
    waiting_logged = False
    while True:
        acquired = False
        if handle is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                acquired = True
            except BlockingIOError:
                if not waiting_logged:
                    log.info("waiting for another process running %s", run_dir)
                    waiting_logged = True
                if not dist.is_distributed:
                    fcntl.flock(handle, fcntl.LOCK_EX)
                    acquired = True
        if not dist.is_distributed:
            return
        flag = torch.tensor([1.0 if acquired else 0.0])
        broadcast_tensors(dist, [flag])
        if flag.item() > 0:
            return
        if dist.is_main:
            time.sleep(LOCK_POLL_S)


def start(
    session: Session, tracker: Tracker, hooks: RunHooks, prepare: Callable[[Session, Tracker], None] | None
) -> None:
    """A fresh run: the initial masks as the step-0 event, the epoch-0 checkpoint if it is to be kept."""
    score_before_training(session)
    if prepare is not None:
        prepare(session, tracker)  # logs its own mask event
    else:
        initial = session.method.initial_record()
        tracker.log({"kind": "mask_update", "step": 0, "epoch": 0, **initial.record()})
        tracker.log_masks(0, session.masks.as_dict())
    check_masks(session, session.step)
    if session.epoch in session.config.run.keep_checkpoints:
        hooks.checkpoint()


def summarize(session: Session, run_id: str, wall_time: float) -> dict[str, Any]:
    config = session.config
    last = session.extra.get("last_epoch", {})
    inference = session.current_flops()
    return {
        "run_id": run_id,
        "group": config.tracking.group,
        "job_type": config.tracking.job_type,
        "method": config.sparsity.method,
        "arch": config.model.arch,
        "dataset": config.data.dataset,
        "seed": config.run.seed,
        "epochs": session.epoch,
        "steps": session.step,
        "world_size": session.dist.world_size,
        "sparsity": 1.0 - session.method.target_density(session.total_steps),
        "init_sparsity": 1.0 - session.method.initial_density(),
        "density": session.masks.density(),
        "test_acc": last.get("test/acc"),
        "test_loss": last.get("test/loss"),
        "val_acc": last.get("val/acc"),
        "train_loss": last.get("train/loss"),
        "best_val_epoch": session.best.epoch,
        "best_val_acc": session.best.val_acc,
        "test_acc_at_best_val": session.best.test_acc,
        "masked_weights": session.masks.total,
        "active_weights": sum(session.masks.active_counts()),
        "inference_flops": inference.sparse,
        "inference_flops_dense": inference.dense,
        "inference_flops_rel": inference.relative,
        "train_flops": session.flops.total,
        "train_flops_dense": session.flops.dense_total,
        "train_flops_rel": session.flops.relative,
        "wall_time_s": wall_time,
        "device": str(session.device),
        "torch_version": torch.__version__,
    }

"""Training: `build_session` builds a `Session` (harness.engine.session) from the config, `fit` is the loop
(`harness.engine.lifecycle` runs a whole run directory around it).

The loop is deliberately short: `train_step` is one optimizer step (forward, backward, a finiteness guard,
optimizer.step(), the LR schedule, the sparsity method right after the step), `fit` runs it over the epochs
with the logging, the end-of-epoch evaluation and the checkpoint. Everything they need is built once by
`build_session` from the config's sections, including the fast-step options (run.memory_format,
run.compile: the compiled region is the network's forward and backward only; masks are applied eagerly).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from harness.config import Config, OptimConfig
from harness.config.sections import channels_last_error
from harness.data.datasets import DataSpec, build_datasets
from harness.data.loaders import build_loaders
from harness.engine.batchnorm import RevivalGuard, batchnorm_after
from harness.engine.distributed import DistInfo, all_reduce_sum, barrier, broadcast_tensors
from harness.engine.flops import TrainingFlops, inference_flops, output_positions
from harness.engine.session import Session
from harness.errors import UserError
from harness.models.build import build_model
from harness.sparse import MaskSet, MaskUpdate, ScoringInputs, build_method

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


# ---------------------------------------------------------------------------------------------------------
# The session, built from the config's sections


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
    input_format = memory_format(config.run.memory_format, device, datasets.spec, config.data.dataset)
    loaders = build_loaders(
        datasets,
        global_batch_size=config.optim.batch_size,
        rank=dist.rank,
        world_size=dist.world_size,
        seed=config.run.seed,
        num_workers=config.data.num_workers,
        pin_memory=device.type == "cuda",
        device=device,
    )
    steps_per_epoch = len(loaders.train)
    # Identical model and masks on every rank: both are drawn from the run seed before anything else.
    torch.manual_seed(config.run.seed)
    spec = datasets.spec
    model = build_model(
        config.model.arch,
        num_classes=spec.num_classes,
        input_shape=spec.input_shape,
        width=config.model.width,
        imagenet=config.data.dataset == "imagenet",
    ).to(device, memory_format=input_format)
    refuse_broken_cpu_kernels(model, device, input_format, compiled=config.run.compile)
    optimizer = build_optimizer(model, config.optim)
    scheduler = build_scheduler(optimizer, config.optim, steps_per_epoch)
    sparsity = config.sparsity
    masks = MaskSet.for_model(
        model, dense_first_layer=sparsity.dense_first_layer, dense_classifier=sparsity.dense_classifier
    )
    method = build_method(
        sparsity.method,
        masks,
        optimizer,
        sparsity.settings,
        total_steps=config.optim.epochs * steps_per_epoch,
        steps_per_epoch=steps_per_epoch,
        seed=config.run.seed,
    )
    positions = output_positions(model, spec.input_shape)
    # Augmentation draws differ per rank (each rank sees different samples anyway).
    torch.manual_seed(config.run.seed * 1_000_003 + 7919 * (dist.rank + 1))
    network: nn.Module = model
    if dist.is_distributed:
        device_ids = [device.index] if device.type == "cuda" else None
        network = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    if config.run.compile:
        network = compiled(network)
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
        input_format=input_format,
    )
    session.totals = session.totals.to(device)
    return session


def memory_format(choice: str, device: torch.device, spec: DataSpec, dataset: str) -> torch.memory_format:
    """The layout of the weights and of every input batch (RunConfig.memory_format): channels_last, or
    `preserve_format`, which leaves both exactly as every run before the option had them."""
    images = spec.spatial_dims == 2
    if choice == "channels_last" and not images:  # a plug-in dataset: the config could not know its shape
        raise UserError(f"run.memory_format: {channels_last_error(dataset, spec.spatial_dims)}")
    if choice == "channels_last" or (choice == "auto" and images and device.type == "cuda"):
        return torch.channels_last
    return torch.preserve_format


def refuse_broken_cpu_kernels(
    model: nn.Module, device: torch.device, input_format: torch.memory_format, *, compiled: bool
) -> None:
    """Refuse, before any run directory exists, a channels_last CPU step that oneDNN computes wrongly.

    oneDNN's 1x1 convolution with a stride, in channels_last (nhwc) layout and with fewer input channels
    than its vector block (8 with AVX2, 16 with AVX-512), writes past its workspace when it computes the
    weight gradient (oneDNN issue #6035, open): measured here (torch 2.14.1, AVX2) as weight gradients off
    by up to 14% of their largest entry with 2 threads, and heap corruption that aborts the process with 1.
    ResNet-20's shortcuts are such convolutions below width 0.5 (below 1 with AVX-512; the CIFAR networks at
    width 1 are not affected). channels_last asks for that layout, and inductor gives every CPU
    convolution it (its layout optimisation), so both are refused for such a network; 1-D convolutions
    and the contiguous eager step are not affected.
    """
    channels_last = input_format is torch.channels_last
    if device.type != "cpu" or not (channels_last or compiled):
        return
    block = 16 if "AVX512" in torch.backends.cpu.get_cpu_capability() else 8
    for name, module in model.named_modules():
        if (
            isinstance(module, nn.Conv2d)
            and module.kernel_size == (1, 1)
            and module.stride != (1, 1)
            and module.in_channels // module.groups < block
        ):
            field = "run.memory_format" if channels_last else "run.compile"
            raise UserError(
                f"{field}: {'channels_last' if channels_last else 'a compiled step'} on the CPU would use "
                f"oneDNN's channels_last kernels, whose weight gradient of a strided 1x1 convolution with "
                f"fewer than {block} input channels is wrong (oneDNN issue #6035): {name} has "
                f"{module.in_channels}; use a wider model (model.width) or leave {field} at its default"
            )


def compiled(network: nn.Module) -> nn.Module:
    """The training forward compiled (run.compile); the module it wraps, and so checkpoints, stay plain.

    `dynamic=False`: one static graph per batch shape, at most two (the full batches and an epoch's smaller
    last one), each compiled the same way whatever ran before it. With dynamo's default (automatic dynamic
    shapes) the graph a shape gets depends on the order the shapes arrived in: a run resumed right before
    an epoch's last batch meets the small batch first and then compiles a shape-generic graph for the full
    batches, which rounds differently from the static graph the uninterrupted run used (measured on
    ResNet-20-1D: all 65 gradients differ), so the resume would not be bit-identical
    (tests/test_fast_steps.py interrupts exactly there). Past dynamo's recompile limit it would silently run
    eager, numbers the run id does not name: failing is the honest outcome (each other architecture, width
    or batch size trained in the same process adds graphs; another instance of the same model reuses them).
    """
    torch._dynamo.config.fail_on_recompile_limit_hit = True
    return torch.compile(network, dynamic=False)


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
            yield inputs.to(device, memory_format=session.input_format), targets.to(device)

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
            inputs.to(session.device, non_blocking=True, memory_format=session.input_format),
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


class Step(NamedTuple):
    """What one optimizer step leaves for the loop to report."""

    loss: Tensor  # the batch's mean loss, on the device
    lr: float  # the learning rate this step used
    update: MaskUpdate | None  # the method's mask update, on update steps


def train_step(
    session: Session, criterion: nn.Module, parameters: list[Tensor], inputs: Tensor, targets: Tensor
) -> Step:
    """One optimizer step on one batch already on the device: forward, backward, the finiteness guard (the
    step's one host synchronisation), optimizer.step(), the LR schedule, the sparsity method right after
    the step, and the epoch's running sums. `fit` calls it for every batch; the benchmarks and the GPU check
    time and inspect exactly this."""
    optimizer = session.optimizer
    optimizer.zero_grad(set_to_none=True)
    with autocast(session.device):
        logits = session.network(inputs)
        loss = criterion(logits.float(), targets)
    loss.backward()
    check_finite(loss, parameters, session.step + 1)
    lr = optimizer.param_groups[0]["lr"]  # the rate this step uses; the scheduler moves it on
    optimizer.step()
    session.scheduler.step()
    session.step += 1
    update = session.method.step()
    samples = targets.numel() * session.dist.world_size
    session.flops.step(samples)
    if update is not None and update.dense_gradient:
        session.flops.dense_gradient(samples)
    count = targets.numel()
    session.totals += torch.stack(
        [
            loss.detach().double() * count,
            (logits.argmax(1) == targets).sum().double(),
            # Filled on the device: torch.tensor(count, device=...) would copy from the host and wait for it.
            torch.full((), count, dtype=torch.float64, device=session.device),
        ]
    )
    return Step(loss, lr, update)


def fit(session: Session, hooks: Hooks, *, until_epoch: int) -> None:
    """Train from `session.epoch`/`session.step` up to `until_epoch` completed epochs."""
    config, network = session.config, session.network
    criterion = nn.CrossEntropyLoss(label_smoothing=config.optim.label_smoothing)
    log_every = config.tracking.log_every
    check_every = config.run.mask_check_every
    parameters = [parameter for parameter in session.model.parameters() if parameter.requires_grad]
    network.train()
    while session.epoch < until_epoch:
        epoch = session.epoch
        started = time.perf_counter()
        first_batch = session.step - epoch * session.steps_per_epoch
        for inputs, targets in session.loaders.train.iterate(epoch, first_batch):
            inputs = inputs.to(session.device, non_blocking=True, memory_format=session.input_format)
            targets = targets.to(session.device, non_blocking=True)
            step = train_step(session, criterion, parameters, inputs, targets)
            if step.update is not None:
                session.flops.masks_changed(session.current_flops())
                session.batchnorm.masks_changed()
                hooks.mask_update(session, step.update)
            elif check_every and session.step % check_every == 0:
                hooks.mask_check(session)  # a mask update checks on its own
            if session.step % log_every == 0:
                hooks.log(
                    {
                        "kind": "train",
                        "step": session.step,
                        "epoch": session.step / session.steps_per_epoch,
                        "train/loss": float(step.loss.detach()),
                        "lr": step.lr,
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
        session.last_epoch = {key: value for key, value in record.items() if key != "kind"}
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

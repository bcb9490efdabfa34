"""The session: everything live during a run (model, optimizer, schedule, masks, method, counters), and its
checkpoint state. `harness.engine.loop.build_session` builds it from the config's sections; `harness.engine.loop.fit`
trains it; `harness.engine.lifecycle` saves and restores it with the run directory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from harness.config import Config
from harness.data.loaders import Loaders
from harness.engine.batchnorm import RevivalGuard
from harness.engine.distributed import DistInfo
from harness.engine.flops import InferenceFlops, TrainingFlops, inference_flops
from harness.sparse import MaskSet, SparsityMethod
from harness.store import checkpoint as checkpoints


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
    # The last epoch's `epoch` line without its kind (the summary's final numbers); None before the first.
    last_epoch: dict[str, Any] | None = None
    input_shape: tuple[int, ...] = ()  # one sample's, for a method's data-free scoring pass
    # The layout every input batch is converted to, the model's own (RunConfig.memory_format): channels_last,
    # or preserve_format, which leaves batches as the loaders give them.
    input_format: torch.memory_format = torch.preserve_format

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
            "extra": self.extra_state(),
        }

    def extra_state(self) -> dict[str, Any]:
        """The checkpoint's `extra` entry: the last epoch's numbers, once they exist. A run's extension
        (harness.engine.extension) adds its own entries beside them."""
        extra: dict[str, Any] = {}
        if self.last_epoch is not None:
            extra["last_epoch"] = self.last_epoch
        return extra

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
        extra = state.get("extra", {})
        self.last_epoch = extra.get("last_epoch")
        if rng:
            checkpoints.restore_rng_state(pick_rank_state(state["rng"], self.dist.rank))


def pick_rank_state(rng: Any, rank: int) -> Any:
    """Checkpoints hold one RNG state per rank (a list); this rank's, or the only one."""
    if isinstance(rng, list):
        return rng[rank] if rank < len(rng) else rng[0]
    return rng

"""The base every sparsity method is built on (SPEC section 6): the settings base, the mask machinery and
the records of what an update did.

Use in any training loop:

    masks = MaskSet.for_model(model)
    method = build_method("granet", masks, optimizer, {"sparsity": 0.9, "prune_end": 0.5}, total_steps=T)
    for inputs, targets in batches:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(inputs), targets).backward()
        optimizer.step()
        update = method.step()          # masks applied; a MaskUpdate on mask-update steps, else None

A method is one class: its `Settings` (a frozen pydantic model holding exactly the values it reads, points
in time as fractions of the run), its paper (`reference`), when it updates and what an update does. The
base owns mask application, optimizer-state zeroing, pruning, drop-and-grow and persistence, converts a
fraction of the run to optimizer steps (`step_of`, the one place that does), and lets a method override
the scores that drive the shared machinery: `prune_scores` (kept: the highest; default |w|),
`drop_scores` (dropped: the lowest; default |w|) and `growth_scores` (grown: the highest; default the
growth criterion). A method that scores before step 0 (pruning at initialisation) sets `needs_scoring`
and implements `prepare`, which the trainer calls once with a `ScoringInputs` (model, a mini-batch
callable, the input shape, the loss):

    cost = method.prepare(ScoringInputs(model, batches, input_shape))   # sample-passes, for FLOPs

This module imports neither torch nor the torch-based core at import time (see harness.sparse.lazy): the
config validates a run's settings with these classes in processes that never train.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from harness.sparse.distributions import layer_counts
from harness.sparse.lazy import lazy_module

if TYPE_CHECKING:
    import torch
    from torch import Tensor

    from harness.sparse import criteria
    from harness.sparse.masks import MaskSet
    from harness.sparse.scores import ScoringInputs
else:
    torch = lazy_module("torch")
    criteria = lazy_module("harness.sparse.criteria")

# Marks a setting that is a point in time: a fraction of the run in the settings, `step_of` gives its step.
TIME: Final = "time"
Growth = Literal["gradient", "momentum", "random"]  # harness.sparse.criteria.GROWTH_SCORES


class MethodSettings(BaseModel):
    """Base of a method's settings: the values it reads, in config units, immutable and validated once.

    Strict: a value of the wrong type (a boolean or a string where a number goes) is refused rather
    than coerced, as unknown names are; infinities and NaN are refused too.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, strict=True)


class SparseSettings(MethodSettings):
    sparsity: float = Field(0.9, ge=0, lt=1)  # final sparsity s_f


class RandomMaskSettings(SparseSettings):
    """A method whose masks start as random positions, counted per layer by a distribution."""

    distribution: Literal["erk", "er", "uniform"] = "erk"
    erk_power: float = Field(1.0, gt=0)


class RegenerationSettings(MethodSettings):
    """Drop-and-grow (`SparsityMethod.regenerate`): the rate, cosine-decayed from r_0 to its floor, the
    growth score and the rounding of the drop count."""

    regen_rate: float = Field(0.5, ge=0, le=1)  # r_0
    regen_rate_min: float = Field(0.005, ge=0, le=1)
    growth: Growth | None = None  # None = the method's own (default_growth)
    # Drop count per layer and event: "ceil" = ceil(r * n_l) (the authors' code: at least one weight of
    # every layer at every event, even when r * n_l is 0.1), "nearest" = r * n_l rounded half up.
    drop_rounding: Literal["ceil", "nearest"] = "ceil"

    @model_validator(mode="after")
    def _rate_floor(self) -> RegenerationSettings:
        if self.regen_rate_min > self.regen_rate:
            raise ValueError(
                f"regen_rate_min ({self.regen_rate_min}) must not exceed regen_rate ({self.regen_rate})"
            )
        return self


TimePoint = Annotated[float, TIME]  # a fraction of the run; bounds are given per field


@dataclass
class LayerUpdate:
    active: int  # after the update
    size: int
    pruned: int = 0  # removed by gradual / one-shot pruning
    dropped: int = 0  # removed by regeneration's drop
    grown: int = 0  # regrown


@dataclass
class MaskUpdate:
    """What one mask-update event did, for the trainer to log."""

    step: int
    target_density: float
    density: float
    regen_rate: float | None
    layers: dict[str, LayerUpdate] = field(default_factory=dict)
    checksum: int = 0
    dense_gradient: bool = False  # the event read the dense gradient (counted in training FLOPs)

    def record(self) -> dict[str, Any]:
        """Flat key/value record in the run store's `mask_update` format (without kind/step/epoch)."""
        record: dict[str, Any] = {"density": self.density, "target_density": self.target_density}
        if self.regen_rate is not None:
            record["regen/rate"] = self.regen_rate
        record["mask/checksum"] = self.checksum
        for name, layer in self.layers.items():
            record[f"layers/{name}/density"] = layer.active / layer.size
            record[f"layers/{name}/pruned"] = layer.pruned
            record[f"layers/{name}/dropped"] = layer.dropped
            record[f"layers/{name}/grown"] = layer.grown
        return record


def drop_count(rate: float, active: int, rounding: str) -> int:
    """Weights one layer drops at a regeneration event: ceil(r * n), or r * n rounded half up."""
    if rounding == "ceil":
        return math.ceil(rate * active)
    if rounding == "nearest":
        return math.floor(rate * active + 0.5)
    raise ValueError(f"drop_rounding: {rounding!r} is not ceil or nearest")


class SparsityMethod:
    """Base: dense start, never updates. Subclasses override `initial_density`, `is_update_step`, `update`.

    A subclass declares `name`, `reference` and, when it reads settings, `Settings` (a subclass of its
    parent's, so that a refinement of a method keeps every setting of the method it refines).
    """

    name: ClassVar[str] = "dense"
    reference: ClassVar[str] = ""
    Settings: ClassVar[type[MethodSettings]] = MethodSettings
    default_growth: ClassVar[str] = "gradient"
    # Scores before step 0: `prepare` must run before the first step (the trainer calls it on fresh runs).
    needs_scoring: ClassVar[bool] = False
    # Whether the method ever masks a weight: the mask-set options (dense_first_layer, dense_classifier)
    # mean nothing to one that does not.
    sparse: ClassVar[bool] = True

    def __init__(
        self,
        masks: MaskSet,
        optimizer: torch.optim.Optimizer | None,
        settings: MethodSettings | Mapping[str, Any] | None = None,
        *,
        total_steps: int,
        steps_per_epoch: int | None = None,
        seed: int = 0,
    ):
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        if steps_per_epoch is not None and (steps_per_epoch < 1 or total_steps % steps_per_epoch):
            raise ValueError(f"steps_per_epoch ({steps_per_epoch}) must divide total_steps ({total_steps})")
        self.settings: Any = self.validate_settings(settings)
        self.total_steps = total_steps
        self.steps_per_epoch = steps_per_epoch or total_steps
        self.seed = seed
        self.masks = masks
        self.optimizer = optimizer
        self.steps = 0
        self.prepared = not self.needs_scoring
        self.generator = torch.Generator().manual_seed(seed)
        # Only regenerating methods have a growth setting; the others keep the default, which they never use.
        self.growth = getattr(self.settings, "growth", None) or self.default_growth
        self.momentum = criteria.GradientMomentum(masks.weights) if self.growth == "momentum" else None
        self._initialize()

    @classmethod
    def validate_settings(cls, settings: MethodSettings | Mapping[str, Any] | None) -> MethodSettings:
        """`settings` as this method's `Settings`: a mapping is validated, an instance must be of the class."""
        if isinstance(settings, cls.Settings):
            return settings
        if isinstance(settings, MethodSettings):
            raise TypeError(
                f"{cls.name} takes {cls.Settings.__qualname__}, not {type(settings).__qualname__}"
            )
        return cls.Settings.model_validate(dict(settings or {}))

    def step_of(self, fraction: float) -> int:
        """A point of the run given as a fraction of it, in optimizer steps.

        Computed as fraction x epochs x steps per epoch, in that order, as the trainer computes its own
        points (LR decays): a fraction that falls on an epoch boundary lands on it, and the float product
        (which can differ in its last bit from fraction x total_steps, and so round the other way at .5)
        is the one every existing run was scheduled with. Without steps_per_epoch the run is one epoch.
        """
        epochs = self.total_steps // self.steps_per_epoch
        return round(fraction * epochs * self.steps_per_epoch)

    # ---------------------------------------------------------------------------------------------
    # The per-step entry point

    def step(self) -> MaskUpdate | None:
        """Call right after optimizer.step(): applies the masks, and updates them on update steps."""
        if not self.prepared:
            raise RuntimeError(f"{self.name} scores before training: call prepare(ScoringInputs(...)) first")
        self.steps += 1
        self.masks.apply(self.optimizer)
        if self.momentum is not None:
            self.momentum.observe()
        if self.is_update_step(self.steps):
            with torch.no_grad():
                return self.update(self.steps)
        return None

    # ---------------------------------------------------------------------------------------------
    # What a method decides

    def initial_density(self) -> float:
        return 1.0

    def is_update_step(self, t: int) -> bool:
        return False

    def update(self, t: int) -> MaskUpdate:
        raise NotImplementedError

    def target_density(self, t: int) -> float:
        return self.initial_density()

    def prepare(self, inputs: ScoringInputs) -> int:
        """The scoring pass before step 0; returns the sample-passes it spent (one dense forward and
        backward of one sample = 1). Methods without one spend nothing."""
        self.prepared = True
        return 0

    # ---------------------------------------------------------------------------------------------
    # The scores a method may override (one tensor per masked weight tensor, in mask-set order)

    def prune_scores(self) -> list[Tensor]:
        """Pruning keeps the highest: |w|."""
        return [weight.detach().abs() for weight in self.masks.weights]

    def drop_scores(self) -> list[Tensor]:
        """Regeneration drops the lowest active: |w|."""
        return [weight.detach().abs() for weight in self.masks.weights]

    def growth_scores(self) -> list[Tensor]:
        """Regeneration grows the highest inactive: the growth criterion (|g|, |momentum| or random)."""
        return criteria.growth_scores(
            self.growth,
            self.masks.weights,
            momentum=self.momentum.buffers if self.momentum else None,
            generator=self.generator,
        )

    def reads_dense_gradient(self) -> bool:
        """Whether a regeneration event reads the dense gradient (counted in training FLOPs)."""
        return self.growth == "gradient"

    # ---------------------------------------------------------------------------------------------
    # Shared operations

    def _initialize(self) -> None:
        """Initial masks: dense, or exactly round(d_l * n_l) uniformly random positions per layer."""
        density = self.initial_density()
        if density >= 1.0:
            return
        counts = layer_counts(self.masks.shapes, density, self.settings.distribution, self.settings.erk_power)
        masks = []
        for weight, count in zip(self.masks.weights, counts, strict=True):
            scores = torch.rand(weight.numel(), generator=self.generator)
            masks.append(criteria.top_k(scores, count).view(weight.shape))
        self.masks.set(masks)
        self.masks.apply(self.optimizer)

    def initial_record(self) -> MaskUpdate:
        """The masks before training, as an event at step 0 (logged and snapshotted by the trainer)."""
        counts = self.masks.active_counts()
        layers = {
            name: LayerUpdate(active=count, size=size)
            for name, count, size in zip(self.masks.names, counts, self.masks.numels, strict=True)
        }
        return self._event(0, self.initial_density(), None, layers, counts)

    def prune_to(self, density: float, *, layerwise: bool = False) -> list[int]:
        """Pruning by `prune_scores` to a density (exact count); returns the weights pruned per layer."""
        return self.keep_top(self.prune_scores(), density, layerwise=layerwise)

    def keep_top(self, scores: list[Tensor], density: float, *, layerwise: bool = False) -> list[int]:
        """Keep the round(density * n) active entries of highest score, over all tensors together or per
        tensor (exact counts, ties to lower indices); returns the weights removed per layer."""
        before = self.masks.active_counts()
        if layerwise:
            keeps = [
                min(round(density * numel), active)
                for numel, active in zip(self.masks.numels, before, strict=True)
            ]
            kept = criteria.layerwise_top(scores, self.masks.masks, keeps)
        else:
            keep = min(round(density * self.masks.total), sum(before))
            kept = criteria.global_top(scores, self.masks.masks, keep)
        self.masks.set(kept)
        self.masks.apply(self.optimizer)
        after = self.masks.active_counts()
        return [old - new for old, new in zip(before, after, strict=True)]

    def regenerate(self, rate: float) -> tuple[list[int], list[int]]:
        """Per layer: drop ceil(rate * n_l) (or, with drop_rounding "nearest", round(rate * n_l)) active weights
        of lowest drop score, grow as many by the growth score.

        Newly activated weights and their optimizer state start at exactly 0; a weight dropped and regrown
        in the same event is kept as it was. Active counts are unchanged.
        """
        growth = self.growth_scores()
        drops = self.drop_scores()
        new_masks, grown_masks, dropped_counts, grown_counts = [], [], [], []
        for weight, mask, drop, score, active in zip(
            self.masks.weights, self.masks.masks, drops, growth, self.masks.active_counts(), strict=True
        ):
            count = drop_count(rate, active, self.settings.drop_rounding)
            new_mask, dropped, grown = criteria.drop_and_grow(weight, mask, score, count, drop_score=drop)
            new_masks.append(new_mask)
            # Only newly activated positions start at 0. A weight dropped and regrown in the same event
            # keeps its value and state, as in the authors' code and RigL (reinit_when_same=False);
            # zeroing it would reset the smallest ceil(r * n) weights of every dense layer at every event.
            grown_masks.append(grown & ~mask.bool())
            dropped_counts.append(count)
            grown_counts.append(count)
        self.masks.set(new_masks)
        self.masks.apply(self.optimizer)
        self.masks.zero_positions(grown_masks, self.optimizer)
        return dropped_counts, grown_counts

    def _event(
        self,
        t: int,
        target_density: float,
        regen_rate: float | None,
        layers: dict[str, LayerUpdate],
        counts: list[int] | None = None,
    ) -> MaskUpdate:
        counts = self.masks.active_counts() if counts is None else counts
        return MaskUpdate(
            step=t,
            target_density=target_density,
            density=sum(counts) / self.masks.total,
            regen_rate=regen_rate,
            layers=layers,
            checksum=int(self.masks.checksums().sum()),
            dense_gradient=regen_rate is not None and self.reads_dense_gradient(),
        )

    def external_event(self, t: int, *, pruned: list[int], grown: list[int]) -> MaskUpdate:
        """The record of a mask change made from outside the schedule (a plasticity probe's pruning and
        regrowth), built as the method builds its own: its target is the density it left."""
        layers, counts = self._layers(pruned=pruned, grown=grown)
        return self._event(t, sum(counts) / self.masks.total, None, layers, counts)

    def _layers(
        self,
        pruned: list[int] | None = None,
        dropped: list[int] | None = None,
        grown: list[int] | None = None,
    ) -> tuple[dict[str, LayerUpdate], list[int]]:
        counts = self.masks.active_counts()
        zeros = [0] * len(counts)
        layers = {
            name: LayerUpdate(active=count, size=size, pruned=p, dropped=d, grown=g)
            for name, count, size, p, d, g in zip(
                self.masks.names,
                counts,
                self.masks.numels,
                pruned or zeros,
                dropped or zeros,
                grown or zeros,
                strict=True,
            )
        }
        return layers, counts

    # ---------------------------------------------------------------------------------------------
    # Persistence: masks, the step counter and the random generator are the whole state; schedules are
    # pure functions of the step, so a restored method makes the same decisions as one that never stopped.

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "method": self.name,
            "steps": self.steps,
            "masks": self.masks.state_dict(),
            "generator": self.generator.get_state(),
        }
        if self.momentum is not None:
            state["momentum"] = self.momentum.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["method"] != self.name:
            raise ValueError(f"state of method {state['method']!r} cannot be loaded into {self.name!r}")
        self.steps = int(state["steps"])
        self.masks.load_state_dict(state["masks"])
        self.generator.set_state(state["generator"])
        if self.momentum is not None:
            self.momentum.load_state_dict(state["momentum"])
        self.masks.apply(self.optimizer)
        self.prepared = True  # the restored masks are the scored ones

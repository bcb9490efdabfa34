"""The method zoo (SPEC section 6): each method is a small class on one shared base.

Use in any training loop:

    masks = MaskSet.for_model(model)
    method = build_method("granet", masks, optimizer, Hyperparameters(total_steps=T, sparsity=0.9, ...))
    for inputs, targets in batches:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(inputs), targets).backward()
        optimizer.step()
        update = method.step()          # masks applied; a MaskUpdate on mask-update steps, else None

The base class owns mask application, optimizer-state zeroing, pruning, drop-and-grow and persistence;
a method says only when it updates and what an update does, and may override the scores that drive the
shared machinery: `prune_scores` (kept: the highest; default |w|), `drop_scores` (dropped: the lowest;
default |w|) and `growth_scores` (grown: the highest; default the growth criterion). A method that
scores before step 0 (pruning at initialisation) sets `needs_scoring` and implements `prepare`, which the
trainer calls once with a `ScoringInputs` (model, a mini-batch callable, the input shape, the loss):

    cost = method.prepare(ScoringInputs(model, batches, input_shape))   # sample-passes, for FLOPs

Over 450 lines on purpose: the registry is the method zoo, and a reader compares methods by reading their
small classes side by side on the base they share; one file per method would scatter that comparison.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final

import torch
from torch import Tensor

from harness.sparse import criteria, scores
from harness.sparse.distributions import layer_counts
from harness.sparse.masks import MaskSet
from harness.sparse.schedules import CosineRate, CubicSparsity
from harness.sparse.scores import ScoringInputs

# Field metadata of a point in time: a step here, a fraction of the run in the config section.
TIME: Final = {"time": True}


@dataclass(frozen=True)
class Hyperparameters:
    """Everything a method may read, in optimizer steps. Each method documents the fields it uses.

    The one schema of sparsity settings: the config's sparsity section has exactly these fields (less
    RUN_FIELDS, which come from the run), and the trainer fills this from it by iterating over the
    fields, converting those marked TIME from fractions of the run to steps (a test pins the two).
    """

    RUN_FIELDS: ClassVar[frozenset[str]] = frozenset({"total_steps", "seed"})

    total_steps: int
    sparsity: float = 0.9  # final sparsity s_f
    init_sparsity: float = 0.0  # GraNet's s_i
    distribution: str = "erk"
    erk_power: float = 1.0
    update_frequency: int = 1000  # dT
    prune_start: int = field(default=0, metadata=TIME)  # t_0
    # t_e; None = half of the run (the paper's epoch 80 of 160)
    prune_end: int | None = field(default=None, metadata=TIME)
    regen_rate: float = 0.5  # r_0
    regen_rate_min: float = 0.005
    regen_until: str = "end"  # "end" (authors' code) or "prune_end"
    growth: str | None = None  # None = the method's own
    # RigL / SET: last step that may update the topology; None = the end
    update_until: int | None = field(default=None, metadata=TIME)
    # Drop count per layer and event: "ceil" = ceil(r * n_l) (the authors' code: at least one weight of
    # every layer at every event, even when r * n_l is 0.1), "nearest" = r * n_l rounded half up.
    drop_rounding: str = "ceil"
    scoring_batches: int = 1  # SNIP / GraSP: mini-batches of the scoring pass
    synflow_rounds: int = 100  # SynFlow: pruning rounds
    mest_lambda: float = 1.0  # MEST: drop score |w| + lambda * |g|
    # AC/DC: dense warm-up, length of each compressed or decompressed phase, final compressed phase;
    # None = 10%, 5% and 15% of the run.
    acdc_warmup: int | None = field(default=None, metadata=TIME)
    acdc_phase: int | None = field(default=None, metadata=TIME)
    acdc_final: int | None = field(default=None, metadata=TIME)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {self.total_steps}")
        if not 0.0 <= self.init_sparsity <= self.sparsity < 1.0:
            raise ValueError(
                f"need 0 <= init_sparsity <= sparsity < 1, got {self.init_sparsity}, {self.sparsity}"
            )
        if not 0.0 <= self.regen_rate_min <= self.regen_rate <= 1.0:
            raise ValueError(
                f"need 0 <= regen_rate_min <= regen_rate <= 1, got {self.regen_rate_min}, {self.regen_rate}"
            )
        if self.regen_until not in ("end", "prune_end"):
            raise ValueError(f"regen_until must be 'end' or 'prune_end', got {self.regen_until!r}")
        if self.drop_rounding not in ("ceil", "nearest"):
            raise ValueError(f"drop_rounding must be 'ceil' or 'nearest', got {self.drop_rounding!r}")
        if self.growth is not None and self.growth not in criteria.GROWTH_SCORES:
            raise ValueError(f"unknown growth {self.growth!r}; valid: {', '.join(criteria.GROWTH_SCORES)}")
        if self.scoring_batches < 1 or self.synflow_rounds < 1:
            raise ValueError(
                f"scoring_batches and synflow_rounds must be >= 1, got {self.scoring_batches}, {self.synflow_rounds}"
            )
        if self.mest_lambda < 0:
            raise ValueError(f"mest_lambda must be >= 0, got {self.mest_lambda}")

    @property
    def pruning_end(self) -> int:
        end = self.total_steps // 2 if self.prune_end is None else self.prune_end
        return min(max(end, 1, self.prune_start), self.total_steps)


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
    """Base: dense start, never updates. Subclasses override `initial_density`, `is_update_step`, `update`."""

    name: ClassVar[str] = "dense"
    reference: ClassVar[str] = ""
    default_growth: ClassVar[str] = "gradient"
    # The Hyperparameters fields the method reads: configs reset the others, so that runs differing
    # only in values a method ignores are the same run.
    reads: ClassVar[frozenset[str]] = frozenset()
    # Scores before step 0: `prepare` must run before the first step (the trainer calls it on fresh runs).
    needs_scoring: ClassVar[bool] = False

    def __init__(self, masks: MaskSet, optimizer: torch.optim.Optimizer | None, hyper: Hyperparameters):
        self.masks = masks
        self.optimizer = optimizer
        self.hyper = hyper
        self.steps = 0
        self.prepared = not self.needs_scoring
        self.generator = torch.Generator().manual_seed(hyper.seed)
        self.growth = hyper.growth or self.default_growth
        self.momentum = criteria.GradientMomentum(masks.weights) if self.growth == "momentum" else None
        self._initialize()

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
        counts = layer_counts(self.masks.shapes, density, self.hyper.distribution, self.hyper.erk_power)
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
            count = drop_count(rate, active, self.hyper.drop_rounding)
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


class Dense(SparsityMethod):
    """No sparsity: the reference every method is compared with."""

    name = "dense"


class Static(SparsityMethod):
    """A random mask at the final density, drawn per layer by the distribution (ERK by default), fixed."""

    name = "static"
    reads = frozenset({"sparsity", "distribution", "erk_power"})
    reference = "fixed random sparse mask (e.g. Mocanu et al. 2018, Evci et al. 2020 as baseline)"

    def initial_density(self) -> float:
        return 1.0 - self.hyper.sparsity


class GradualMagnitude(SparsityMethod):
    """GMP (Zhu & Gupta 2017): cubic schedule from s_i to s_f, global magnitude pruning at each event."""

    name = "gmp"
    reads = frozenset(
        {
            "sparsity",
            "init_sparsity",
            "distribution",
            "erk_power",
            "update_frequency",
            "prune_start",
            "prune_end",
        }
    )
    reference = "Zhu & Gupta, To prune, or not to prune, 2017"
    layerwise = False

    def __init__(self, masks: MaskSet, optimizer: torch.optim.Optimizer | None, hyper: Hyperparameters):
        self.schedule = CubicSparsity(
            initial=hyper.init_sparsity,
            final=hyper.sparsity,
            start=hyper.prune_start,
            end=hyper.pruning_end,
            every=hyper.update_frequency,
        )
        super().__init__(masks, optimizer, hyper)

    def initial_density(self) -> float:
        return 1.0 - self.hyper.init_sparsity

    def target_density(self, t: int) -> float:
        return 1.0 - self.schedule.sparsity(t)

    def is_update_step(self, t: int) -> bool:
        return self.schedule.is_event(t)

    def update(self, t: int) -> MaskUpdate:
        target = self.target_density(t)
        pruned = self.prune_to(target, layerwise=self.layerwise)
        layers, counts = self._layers(pruned=pruned)
        return self._event(t, target, None, layers, counts)


class GradualMagnitudeLayerwise(GradualMagnitude):
    """GMP keeping the top (1 - s(t)) fraction of every layer instead of a global threshold."""

    name = "gmp-layerwise"
    layerwise = True


class GraNet(GradualMagnitude):
    """GraNet (Liu et al. 2021): GMP's global pruning, then zero-cost neuroregeneration at every event.

    After t_e the topology keeps being regenerated every dT until the end of training (the authors'
    behaviour; `regen_until="prune_end"` stops at t_e instead). s_i = 0 starts dense; s_i > 0 starts
    from an ERK mask at density 1 - s_i.
    """

    name = "granet"
    reads = GradualMagnitude.reads | {
        "regen_rate",
        "regen_rate_min",
        "regen_until",
        "growth",
        "drop_rounding",
    }
    reference = (
        "Liu et al., Sparse Training via Boosting Pruning Plasticity with Neuroregeneration, NeurIPS 2021"
    )

    def __init__(self, masks: MaskSet, optimizer: torch.optim.Optimizer | None, hyper: Hyperparameters):
        self.rate = CosineRate(hyper.regen_rate, hyper.regen_rate_min, hyper.total_steps)
        super().__init__(masks, optimizer, hyper)

    def is_update_step(self, t: int) -> bool:
        if self.schedule.is_event(t):
            return True
        return (
            self.hyper.regen_until == "end"
            and self.schedule.end < t < self.hyper.total_steps
            and t % self.hyper.update_frequency == 0
        )

    def update(self, t: int) -> MaskUpdate:
        target = self.target_density(t)
        pruned = self.prune_to(target) if self.schedule.is_event(t) else None
        rate = self.rate(t)
        # Regrowing at the very last step would add weights that never train.
        dropped, grown = self.regenerate(rate) if t < self.hyper.total_steps else (None, None)
        layers, counts = self._layers(pruned=pruned, dropped=dropped, grown=grown)
        return self._event(t, target, rate, layers, counts)


class SET(SparsityMethod):
    """SET (Mocanu et al. 2018): fixed density from an ERK start; every dT drop by magnitude, grow at random."""

    name = "set"
    reads = frozenset(
        {
            "sparsity",
            "distribution",
            "erk_power",
            "update_frequency",
            "regen_rate",
            "regen_rate_min",
            "growth",
            "update_until",
            "drop_rounding",
        }
    )
    reference = "Mocanu et al., Scalable training of artificial neural networks with adaptive sparse connectivity, 2018"
    default_growth = "random"

    def __init__(self, masks: MaskSet, optimizer: torch.optim.Optimizer | None, hyper: Hyperparameters):
        self.last_update = hyper.total_steps if hyper.update_until is None else hyper.update_until
        self.rate = CosineRate(hyper.regen_rate, hyper.regen_rate_min, self.last_update)
        super().__init__(masks, optimizer, hyper)

    def initial_density(self) -> float:
        return 1.0 - self.hyper.sparsity

    def is_update_step(self, t: int) -> bool:
        # Never at the very last step: regrown weights would never train.
        return t % self.hyper.update_frequency == 0 and t <= self.last_update and t < self.hyper.total_steps

    def update(self, t: int) -> MaskUpdate:
        rate = self.rate(t)
        dropped, grown = self.regenerate(rate)
        layers, counts = self._layers(dropped=dropped, grown=grown)
        return self._event(t, self.initial_density(), rate, layers, counts)


class RigL(SET):
    """RigL (Evci et al. 2020): SET with regrowth by the largest dense-gradient magnitudes."""

    name = "rigl"
    reference = "Evci et al., Rigging the Lottery: Making All Tickets Winners, ICML 2020"
    default_growth = "gradient"


class MEST(SET):
    """MEST+EM (Yuan et al. 2021), without the soft memory bound and data-efficiency parts: SET's ERK start,
    schedule and random regrowth, but the drop removes the lowest |w| + lambda * |g| (the dense gradient of
    the last mini-batch), so weights that are small but still moving survive."""

    name = "mest"
    reads = SET.reads | {"mest_lambda"}
    reference = "Yuan et al., MEST: Accurate and Fast Memory-Economic Sparse Training Framework on the Edge, NeurIPS 2021"

    def drop_scores(self) -> list[Tensor]:
        missing = [
            name
            for name, weight in zip(self.masks.names, self.masks.weights, strict=True)
            if weight.grad is None
        ]
        if missing:
            raise RuntimeError(
                f"MEST's drop score needs the gradient of every masked tensor; none for {missing}"
            )
        return [
            weight.detach().abs() + self.hyper.mest_lambda * weight.grad.detach().abs()
            for weight in self.masks.weights
        ]

    def reads_dense_gradient(self) -> bool:
        return True


class ACDC(SparsityMethod):
    """AC/DC (Peste et al. 2021): a dense warm-up, then compressed phases (global magnitude top-k at the
    final density, fixed) alternating with decompressed (dense) ones, ending with a longer compressed phase.

    A phase change happens after the step at its boundary. Decompression re-activates every weight at
    the value 0 it was held at (its optimizer state is 0 as well), as in the paper.
    """

    name = "acdc"
    reads = frozenset({"sparsity", "acdc_warmup", "acdc_phase", "acdc_final"})
    reference = "Peste et al., AC/DC: Alternating Compressed/DeCompressed Training of Deep Neural Networks, NeurIPS 2021"

    def __init__(self, masks: MaskSet, optimizer: torch.optim.Optimizer | None, hyper: Hyperparameters):
        total = hyper.total_steps

        def steps(value: int | None, share: float) -> int:
            return round(share * total) if value is None else value

        self.warmup_end = max(1, steps(hyper.acdc_warmup, 0.1))
        self.phase = max(1, steps(hyper.acdc_phase, 0.05))
        self.final_start = max(self.warmup_end, total - steps(hyper.acdc_final, 0.15))
        super().__init__(masks, optimizer, hyper)

    def compressed(self, t: int) -> bool:
        """Whether the steps after step t train the compressed (sparse) network."""
        if t < self.warmup_end:
            return False
        if t >= self.final_start:
            return True
        return (t - self.warmup_end) // self.phase % 2 == 0

    def target_density(self, t: int) -> float:
        return 1.0 - self.hyper.sparsity if self.compressed(t) else 1.0

    def is_update_step(self, t: int) -> bool:
        return self.compressed(t) != self.compressed(t - 1)

    def update(self, t: int) -> MaskUpdate:
        target = self.target_density(t)
        if target < 1.0:
            pruned = self.prune_to(target)
            layers, counts = self._layers(pruned=pruned)
        else:
            before = self.masks.active_counts()
            self.masks.set([torch.ones_like(mask) for mask in self.masks.masks])
            grown = [numel - active for numel, active in zip(self.masks.numels, before, strict=True)]
            layers, counts = self._layers(grown=grown)
        return self._event(t, target, None, layers, counts)


class PruningAtInitialization(SparsityMethod):
    """Base of SNIP, GraSP and SynFlow: dense until `prepare` scores the network once before step 0 and
    keeps the final density by global top-k; the mask is then fixed for the whole run."""

    needs_scoring = True
    reads = frozenset({"sparsity"})

    def _initialize(self) -> None:
        """No random mask: the scoring pass decides the mask (dense until then)."""

    def initial_density(self) -> float:
        return 1.0 - self.hyper.sparsity

    def prepare(self, inputs: ScoringInputs) -> int:
        cost = self.score_and_prune(inputs)
        self.masks.apply(self.optimizer)
        self.prepared = True
        return cost

    def score_and_prune(self, inputs: ScoringInputs) -> int:
        raise NotImplementedError


class SNIP(PruningAtInitialization):
    """SNIP (Lee et al. 2019): keep the largest |g ⊙ w| at initialisation, g the mean loss gradient over
    `scoring_batches` mini-batches; single shot, global."""

    name = "snip"
    reads = PruningAtInitialization.reads | {"scoring_batches"}
    reference = "Lee et al., SNIP: Single-shot Network Pruning based on Connection Sensitivity, ICLR 2019"

    def score_and_prune(self, inputs: ScoringInputs) -> int:
        batches = inputs.batches(self.hyper.scoring_batches)
        saliency, cost = scores.snip(inputs.model, self.masks.weights, batches, inputs.loss)
        self.keep_top(saliency, self.initial_density())
        return cost


class GraSP(PruningAtInitialization):
    """GraSP (Wang et al. 2020): score -w ⊙ (H g) at initialisation and remove the highest scores (the
    weights whose removal reduces the gradient flow least, or increases it), keeping the lowest; global."""

    name = "grasp"
    reads = PruningAtInitialization.reads | {"scoring_batches"}
    reference = "Wang et al., Picking Winning Tickets Before Training by Preserving Gradient Flow, ICLR 2020"

    def score_and_prune(self, inputs: ScoringInputs) -> int:
        batches = inputs.batches(self.hyper.scoring_batches)
        saliency, cost = scores.grasp(inputs.model, self.masks.weights, batches, inputs.loss)
        self.keep_top([-score for score in saliency], self.initial_density())
        return cost


class SynFlow(PruningAtInitialization):
    """SynFlow (Tanaka et al. 2020): data-free; `synflow_rounds` rounds of global top-k by |dR/dθ ⊙ θ| on
    the absolute-valued network, the density following d^(k/n), so no layer is cut off before the others
    have paid their share (the layer-collapse argument of the paper)."""

    name = "synflow"
    reads = PruningAtInitialization.reads | {"synflow_rounds"}
    reference = "Tanaka et al., Pruning neural networks without any data by iteratively conserving synaptic flow, NeurIPS 2020"

    def score_and_prune(self, inputs: ScoringInputs) -> int:
        network = scores.SynFlowNetwork(inputs.model, self.masks.weights)
        rounds = self.hyper.synflow_rounds
        for density in scores.exponential_densities(self.initial_density(), rounds):
            self.keep_top(network.scores(self.masks.masks, inputs.input_shape), density)
        return rounds  # one all-ones sample per round


METHODS: dict[str, type[SparsityMethod]] = {
    cls.name: cls
    for cls in (
        Dense,
        Static,
        GradualMagnitude,
        GradualMagnitudeLayerwise,
        GraNet,
        RigL,
        SET,
        SNIP,
        GraSP,
        SynFlow,
        MEST,
        ACDC,
    )
}


class UnknownMethodError(ValueError):
    pass


def build_method(
    name: str, masks: MaskSet, optimizer: torch.optim.Optimizer | None, hyper: Hyperparameters
) -> SparsityMethod:
    try:
        cls = METHODS[name]
    except KeyError:
        raise UnknownMethodError(f"unknown method {name!r}; valid: {', '.join(METHODS)}") from None
    return cls(masks, optimizer, hyper)

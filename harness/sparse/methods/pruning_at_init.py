"""Pruning at initialisation: SNIP, GraSP and SynFlow score the network once before step 0, then keep the
mask fixed."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from harness.sparse.lazy import lazy_module
from harness.sparse.methods.base import SparseSettings, SparsityMethod

if TYPE_CHECKING:
    from harness.sparse import scores
    from harness.sparse.scores import ScoringInputs
else:
    scores = lazy_module("harness.sparse.scores")


class ScoringSettings(SparseSettings):
    scoring_batches: int = Field(1, ge=1)  # mini-batches of the scoring pass


class SynFlowSettings(SparseSettings):
    synflow_rounds: int = Field(100, ge=1)  # pruning rounds (exponential density schedule)


class PruningAtInitialization(SparsityMethod):
    """Base of SNIP, GraSP and SynFlow: dense until `prepare` scores the network once before step 0 and
    keeps the final density by global top-k; the mask is then fixed for the whole run."""

    needs_scoring = True
    Settings = SparseSettings

    def _initialize(self) -> None:
        """No random mask: the scoring pass decides the mask (dense until then)."""

    def initial_density(self) -> float:
        return 1.0 - self.settings.sparsity

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
    reference = "Lee et al., SNIP: Single-shot Network Pruning based on Connection Sensitivity, ICLR 2019"
    Settings = ScoringSettings

    def score_and_prune(self, inputs: ScoringInputs) -> int:
        batches = inputs.batches(self.settings.scoring_batches)
        saliency, cost = scores.snip(inputs.model, self.masks.weights, batches, inputs.loss)
        self.keep_top(saliency, self.initial_density())
        return cost


class GraSP(PruningAtInitialization):
    """GraSP (Wang et al. 2020): score -w ⊙ (H g) at initialisation and remove the highest scores (the
    weights whose removal reduces the gradient flow least, or increases it), keeping the lowest; global."""

    name = "grasp"
    reference = "Wang et al., Picking Winning Tickets Before Training by Preserving Gradient Flow, ICLR 2020"
    Settings = ScoringSettings

    def score_and_prune(self, inputs: ScoringInputs) -> int:
        batches = inputs.batches(self.settings.scoring_batches)
        saliency, cost = scores.grasp(inputs.model, self.masks.weights, batches, inputs.loss)
        self.keep_top([-score for score in saliency], self.initial_density())
        return cost


class SynFlow(PruningAtInitialization):
    """SynFlow (Tanaka et al. 2020): data-free; `synflow_rounds` rounds of global top-k by |dR/dθ ⊙ θ| on
    the absolute-valued network, the density following d^(k/n), so no layer is cut off before the others
    have paid their share (the layer-collapse argument of the paper)."""

    name = "synflow"
    reference = "Tanaka et al., Pruning neural networks without any data by iteratively conserving synaptic flow, NeurIPS 2020"
    Settings = SynFlowSettings

    def score_and_prune(self, inputs: ScoringInputs) -> int:
        network = scores.SynFlowNetwork(inputs.model, self.masks.weights)
        rounds = self.settings.synflow_rounds
        for density in scores.exponential_densities(self.initial_density(), rounds):
            self.keep_top(network.scores(self.masks.masks, inputs.input_shape), density)
        return rounds  # one all-ones sample per round

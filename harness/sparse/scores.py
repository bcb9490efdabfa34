"""Saliency scores of pruning at initialisation (docs/methods.md has each formula as our contract).

Every function takes the model, the masked weight tensors (parameters of that model) and what the score
needs, and returns one score tensor per weight tensor, in the same order, plus the number of
sample-passes it spent (one dense forward and backward of one sample = 1; the trainer counts them in
training FLOPs). The model is left as it was found: parameters, BatchNorm statistics and gradients.

Data arrive as an iterable of (inputs, targets) mini-batches that the caller chose, so this module
knows nothing of loaders; the loss is a callable too (the trainer passes its cross-entropy).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

Batch = tuple[Tensor, Tensor]
Loss = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class ScoringInputs:
    """What a method may read before step 0: the model, `batches(n)` -> n training mini-batches on the
    model's device, one sample's shape (for data-free scores) and the training loss."""

    model: nn.Module
    batches: Callable[[int], Iterable[Batch]]
    input_shape: tuple[int, ...]
    loss: Loss = nn.functional.cross_entropy


@contextmanager
def untouched(model: nn.Module) -> Iterator[None]:
    """Restore BatchNorm statistics, the train/eval mode and the gradients after a scoring pass, so that
    the run after it starts from exactly the state it would have without it."""
    buffers = [buffer.detach().clone() for buffer in model.buffers()]
    grads = [parameter.grad for parameter in model.parameters()]
    modes = [module.training for module in model.modules()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, saved in zip(model.buffers(), buffers, strict=True):
                buffer.copy_(saved)
        for parameter, grad in zip(model.parameters(), grads, strict=True):
            parameter.grad = grad
        for module, mode in zip(model.modules(), modes, strict=True):
            module.training = mode


def mean_gradient(
    model: nn.Module, weights: Sequence[Tensor], batches: Sequence[Batch], loss: Loss
) -> list[Tensor]:
    """g = (1/B) sum_b dL_b/dw over the B mini-batches (each L_b the batch's mean loss)."""
    total = [torch.zeros_like(weight) for weight in weights]
    for inputs, targets in batches:
        grads = torch.autograd.grad(loss(model(inputs), targets), list(weights))
        torch._foreach_add_(total, grads)
    torch._foreach_div_(total, float(len(batches)))
    return total


def _collect(batches: Iterable[Batch]) -> list[Batch]:
    collected = list(batches)
    if not collected:
        raise ValueError("the scoring pass got no mini-batches")
    return collected


def snip(
    model: nn.Module, weights: Sequence[Tensor], batches: Iterable[Batch], loss: Loss
) -> tuple[list[Tensor], int]:
    """SNIP (Lee et al. 2019): |g ⊙ w|, g the mean loss gradient over the mini-batches."""
    collected = _collect(batches)
    with untouched(model):
        gradient = mean_gradient(model, weights, collected, loss)
    scores = [(grad * weight.detach()).abs() for grad, weight in zip(gradient, weights, strict=True)]
    return scores, sum(len(targets) for _, targets in collected)


def hessian_gradient(
    model: nn.Module,
    weights: Sequence[Tensor],
    batches: Sequence[Batch],
    loss: Loss,
    gradient: Sequence[Tensor],
) -> list[Tensor]:
    """H g by double backpropagation: d/dw (dL/dw · g) with g held constant, averaged over the batches."""
    total = [torch.zeros_like(weight) for weight in weights]
    for inputs, targets in batches:
        grads = torch.autograd.grad(loss(model(inputs), targets), list(weights), create_graph=True)
        inner = sum((grad * fixed).sum() for grad, fixed in zip(grads, gradient, strict=True))
        products = torch.autograd.grad(inner, list(weights))
        torch._foreach_add_(total, products)
    torch._foreach_div_(total, float(len(batches)))
    return total


def grasp(
    model: nn.Module, weights: Sequence[Tensor], batches: Iterable[Batch], loss: Loss
) -> tuple[list[Tensor], int]:
    """GraSP (Wang et al. 2020): -w ⊙ (H g). The method removes the highest scores."""
    collected = _collect(batches)
    with untouched(model):
        gradient = mean_gradient(model, weights, collected, loss)
        product = hessian_gradient(model, weights, collected, loss, gradient)
    scores = [-(weight.detach() * hg) for weight, hg in zip(weights, product, strict=True)]
    # One plain gradient pass, and a double-backpropagation pass counted as two.
    return scores, 3 * sum(len(targets) for _, targets in collected)


class SynFlowNetwork:
    """The network SynFlow scores (Tanaka et al. 2020): a double-precision copy of the model with every
    parameter and buffer replaced by its absolute value, BatchNorm in eval mode. The model itself is never
    modified, so its weights keep their signs and values."""

    def __init__(self, model: nn.Module, weights: Sequence[Tensor]):
        names = {id(parameter): name for name, parameter in model.named_parameters()}
        missing = [index for index, weight in enumerate(weights) if id(weight) not in names]
        if missing:
            raise ValueError(f"SynFlow: masked tensors {missing} are not parameters of the model")
        self.network = copy.deepcopy(model).double().eval()
        with torch.no_grad():
            for tensor in self.network.state_dict().values():
                if tensor.is_floating_point():
                    tensor.abs_()
        parameters = dict(self.network.named_parameters())
        self.weights = [parameters[names[id(weight)]] for weight in weights]
        self.magnitudes = [weight.detach().clone() for weight in self.weights]
        for parameter in self.network.parameters():
            parameter.requires_grad_(False)
        for weight in self.weights:
            weight.requires_grad_(True)

    def objective(self, masks: Sequence[Tensor], input_shape: Sequence[int]) -> Tensor:
        """R = 1ᵀ f(1; |θ| ⊙ m): the summed output on one all-ones input."""
        with torch.no_grad():
            for weight, magnitude, mask in zip(self.weights, self.magnitudes, masks, strict=True):
                weight.copy_(magnitude * mask.to(magnitude.dtype))
        ones = torch.ones((1, *input_shape), dtype=torch.float64, device=self.magnitudes[0].device)
        return self.network(ones).sum()

    def scores(self, masks: Sequence[Tensor], input_shape: Sequence[int]) -> list[Tensor]:
        """|dR/dθ ⊙ θ| at the masked absolute weights (0 where masked)."""
        objective = self.objective(masks, input_shape)
        grads = torch.autograd.grad(objective, self.weights)
        return [(grad * weight.detach()).abs() for grad, weight in zip(grads, self.weights, strict=True)]


def exponential_densities(final_density: float, rounds: int) -> list[float]:
    """SynFlow's schedule: density d^(k/n) after round k of n, ending exactly at d."""
    return [final_density ** (k / rounds) for k in range(1, rounds + 1)]

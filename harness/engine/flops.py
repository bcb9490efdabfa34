"""FLOPs accounting as the sparse-training literature reports it (SPEC section 10).

Inference FLOPs = sum over conv/linear layers of 2 * (active weights) * (output positions).
Training FLOPs  = sum over steps of 3 * samples * inference FLOPs at that step (forward, input gradient,
weight gradient); at mask updates that read the dense gradient, the weight-gradient product is dense:
(2 * sparse + dense) * samples for that step. A scoring pass before training (SNIP, GraSP, SynFlow) adds
3 * dense per sample-pass it reports. Normalisation and bias FLOPs are ignored, as in the papers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from harness.models.build import sample_forward
from harness.sparse.masks import SPARSE_MODULE_TYPES, MaskSet


def output_positions(model: nn.Module, input_shape: Sequence[int]) -> dict[str, int]:
    """weight name -> output positions per sample (H*W for 2-D convs, L for 1-D, 1 for linear)."""
    positions: dict[str, int] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, SPARSE_MODULE_TYPES):

            def record(module: nn.Module, inputs: tuple, output: torch.Tensor, name: str = name) -> None:
                channels = module.out_features if isinstance(module, nn.Linear) else module.out_channels
                positions[f"{name}.weight" if name else "weight"] = output[0].numel() // channels

            hooks.append(module.register_forward_hook(record))
    try:
        sample_forward(model, input_shape)
    finally:
        for hook in hooks:
            hook.remove()
    return positions


@dataclass(frozen=True)
class InferenceFlops:
    sparse: float
    dense: float

    @property
    def relative(self) -> float:
        return self.sparse / self.dense


def inference_flops(model: nn.Module, masks: MaskSet | None, positions: dict[str, int]) -> InferenceFlops:
    """FLOPs of one forward pass of one sample; unmasked layers count as dense."""
    weights = {
        f"{name}.weight" if name else "weight": module.weight
        for name, module in model.named_modules()
        if isinstance(module, SPARSE_MODULE_TYPES)
    }
    active = dict(zip(masks.names, masks.active_counts(), strict=True)) if masks is not None else {}
    # A mask that matches no layer (e.g. masks built on a DDP wrapper, names prefixed "module.") would
    # otherwise be silently counted as a dense layer.
    unmatched = sorted(set(active) - set(weights))
    if unmatched:
        raise ValueError(f"masks name tensors that are not conv/linear weights of this model: {unmatched}")
    dense = sum(2.0 * weight.numel() * positions[name] for name, weight in weights.items())
    sparse = sum(2.0 * active.get(name, weight.numel()) * positions[name] for name, weight in weights.items())
    return InferenceFlops(sparse=sparse, dense=dense)


class TrainingFlops:
    """Running total of training FLOPs; the trainer reports every step and every mask change."""

    def __init__(self, flops: InferenceFlops):
        self.current = flops
        self.total = 0.0
        self.dense_total = 0.0

    def step(self, samples: int) -> None:
        self.total += 3.0 * samples * self.current.sparse
        self.dense_total += 3.0 * samples * self.current.dense

    def dense_gradient(self, samples: int) -> None:
        """This step's weight gradient was computed densely (a mask update read it): add the difference."""
        self.total += samples * (self.current.dense - self.current.sparse)

    def scoring(self, sample_passes: int) -> None:
        """A method's scoring pass before training (pruning at initialisation): `sample_passes` dense
        forward and backward passes of one sample, in the training total only (the dense baseline has none)."""
        self.total += 3.0 * sample_passes * self.current.dense

    def masks_changed(self, flops: InferenceFlops) -> None:
        self.current = flops

    @property
    def relative(self) -> float:
        return self.total / self.dense_total if self.dense_total else 1.0

    def state_dict(self) -> dict[str, float]:
        return {"total": self.total, "dense_total": self.dense_total}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.total = float(state["total"])
        self.dense_total = float(state["dense_total"])

"""BatchNorm statistics of channels that a mask update brings back to life.

Global magnitude pruning can remove every weight of a filter. The channel then outputs exactly zero and
its BatchNorm running variance decays towards 0 (1e-26 after a few epochs). When regeneration later
regrows weights into that filter, training is unaffected (BatchNorm normalises with batch statistics),
but evaluation divides the revived channel by sqrt(running_var + eps) ~ 0.003 until the running
average catches up, about fifty steps later: an evaluation in that window amplifies the channel ~300x
and can drop test accuracy to chance (seen on MNIST-1D, GraNet at 95%: 0.10 at the final epoch, 0.87 an
epoch earlier). Resetting those channels' running statistics to BatchNorm's initial values (mean 0,
variance 1) when they are revived removes the window; the training trajectory does not change.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from harness.models.build import sample_forward
from harness.sparse.masks import MaskSet


def batchnorm_after(
    model: nn.Module, input_shape: Sequence[int]
) -> dict[str, nn.modules.batchnorm._BatchNorm]:
    """weight name of a conv/linear layer -> the BatchNorm that normalises exactly its output.

    Found by tracing one forward pass: a BatchNorm whose input is the very tensor a layer returned.
    """
    produced: dict[int, str] = {}
    found: dict[str, nn.modules.batchnorm._BatchNorm] = {}
    keep_alive: list[Tensor] = []  # holds outputs so that their ids stay unique during the trace
    hooks = []

    def record_output(name: str):
        def hook(module: nn.Module, inputs: tuple, output: Tensor) -> None:
            produced[id(output)] = name
            keep_alive.append(output)

        return hook

    def match_input(module: nn.modules.batchnorm._BatchNorm):
        def hook(module_: nn.Module, inputs: tuple) -> None:
            name = produced.get(id(inputs[0]))
            if name is not None:
                found[name] = module

        return hook

    for name, module in model.named_modules():
        if isinstance(module, nn.modules.conv._ConvNd | nn.Linear):
            hooks.append(module.register_forward_hook(record_output(f"{name}.weight" if name else "weight")))
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            hooks.append(module.register_forward_pre_hook(match_input(module)))
    try:
        sample_forward(model, input_shape)
    finally:
        for hook in hooks:
            hook.remove()
    return found


def alive_filters(mask: Tensor) -> Tensor:
    """One bool per output channel: does the filter keep any active weight?"""
    return mask.reshape(mask.shape[0], -1).bool().any(dim=1)


class RevivalGuard:
    """Resets the running statistics of BatchNorm channels whose filter a mask change revives."""

    def __init__(self, masks: MaskSet, followers: dict[str, nn.modules.batchnorm._BatchNorm]):
        self.masks = masks
        self.pairs = [(index, followers[name]) for index, name in enumerate(masks.names) if name in followers]
        self.alive: list[Tensor] = []
        self.sync()

    def sync(self) -> None:
        """Take the current masks as the reference (after building or loading a state)."""
        self.alive = [alive_filters(self.masks.masks[index]) for index, _ in self.pairs]

    @torch.no_grad()
    def masks_changed(self) -> int:
        """Reset the statistics of every revived channel; returns how many channels were reset."""
        reset = 0
        for slot, (index, batchnorm) in enumerate(self.pairs):
            alive = alive_filters(self.masks.masks[index])
            revived = alive & ~self.alive[slot]
            if batchnorm.track_running_stats and bool(revived.any()):
                batchnorm.running_mean[revived] = 0.0
                batchnorm.running_var[revived] = 1.0
                reset += int(revived.sum())
            self.alive[slot] = alive
        return reset


@contextmanager
@torch.no_grad()
def recomputed_statistics(model: nn.Module, inputs: Iterable[Tensor]) -> Iterator[None]:
    """Inside: every BatchNorm's running statistics are the exact average over `inputs` (one forward pass
    in training mode, no gradients); afterwards the model's statistics, momenta and mode come back.

    For measurements only. At a high learning rate the running averages lag the weights (a dense ResNet-20 on
    MNIST-1D at LR 0.1 scored 41% on the test set at epoch 4 and 64% at epoch 14 with its running
    statistics, 69% and 82% with them recomputed), so an accuracy read from them measures that lag as
    much as the network. Restoring them afterwards leaves training exactly as it would have been.
    """
    layers = [module for module in model.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]
    saved = [
        (layer.momentum, {name: buffer.clone() for name, buffer in layer.named_buffers()}) for layer in layers
    ]
    was_training = model.training
    try:
        for layer in layers:
            layer.reset_running_stats()
            layer.momentum = None  # a cumulative average: every batch counts the same
        model.train()
        for batch in inputs:
            model(batch)
        model.eval()
        yield
    finally:
        for layer, (momentum, buffers) in zip(layers, saved, strict=True):
            layer.momentum = momentum
            for name, buffer in layer.named_buffers():
                buffer.copy_(buffers[name])
        model.train(was_training)

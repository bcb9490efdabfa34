"""Building a model by name (`harness.registry.models`) and tracing one forward pass of it."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from harness.errors import UserError
from harness.registry.models import IMAGENET_VARIANTS, MODELS
from harness.registry.plugins import load_attribute


def build_model(
    arch: str, *, num_classes: int, input_shape: Sequence[int], width: float = 1.0, imagenet: bool = False
) -> nn.Module:
    """A randomly initialised model (drawn from the global torch RNG: seed before calling).

    `imagenet` picks the architecture's ImageNet variant (the `imagenet` dataset); plug-ins have none.
    """
    if width <= 0:
        raise UserError(f"model.width: must be positive, got {width!r}")
    if imagenet and arch in MODELS.builtins:
        if arch not in IMAGENET_VARIANTS:
            raise UserError(
                f"model.arch: {arch!r} has no ImageNet variant; valid for ImageNet: {', '.join(IMAGENET_VARIANTS)}"
            )
        builder = load_attribute(IMAGENET_VARIANTS[arch], MODELS.field)
    else:
        builder = MODELS.load(arch)
    if not callable(builder):
        raise UserError(
            f"model.arch: plug-in {arch!r} is not callable (a model builder is a function or class)"
        )
    model = builder(num_classes=num_classes, input_shape=tuple(input_shape), width=width)
    if not isinstance(model, nn.Module):
        raise UserError(
            f"model.arch: plug-in {arch!r} returned {type(model).__name__}, not a torch.nn.Module "
            "(a builder is called as builder(num_classes=..., input_shape=..., width=...))"
        )
    _check_takes_input(model, arch, tuple(input_shape))
    return model


def _check_takes_input(model: nn.Module, arch: str, input_shape: tuple[int, ...]) -> None:
    """One zero sample through the fresh model, so that an input the network cannot take (VGG-19's five
    pools shrink 16x16 to nothing) is a one-line error before any run directory exists, not a traceback
    from the first training step. Eval mode and no gradients: no statistic moves and no RNG is drawn."""
    try:
        sample_forward(model, input_shape)
    except (RuntimeError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(
            f"model.arch: {arch!r} cannot take inputs of shape {input_shape} (the dataset's sample shape): "
            f"{reason}"
        ) from error


def sample_forward(model: nn.Module, input_shape: tuple[int, ...] | list[int]) -> None:
    """One forward pass of a single zero sample, in eval mode and without gradients, for tracing what the
    network does (hooks see every layer); the model's training mode is restored afterwards."""
    parameter = next(model.parameters())
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=parameter.device, dtype=parameter.dtype))
    finally:
        model.train(was_training)

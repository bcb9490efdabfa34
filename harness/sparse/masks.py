"""Which tensors are sparse, and the 0/1 masks over them (SPEC sections 1 and 2).

A `MaskSet` is the only place where masks touch weights: `apply` is called right after
`optimizer.step()` and zeroes masked weights and their optimizer state, which is exactly the reference
semantics "dense step, then zero W and its state where M == 0". The per-step path is two fused
`_foreach_mul_` calls: no Python dict look-ups per parameter and no host synchronisation.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

SPARSE_MODULE_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)

# Multiplier of Knuth's multiplicative hash, and a prime modulus that keeps every partial sum of a
# 25 M-weight layer inside int64.
_HASH_MULTIPLIER = 2654435761
_HASH_MODULUS = 4294967291


class MaskError(ValueError):
    """A mask that does not fit its tensor: wrong name, shape or values."""


def sparsifiable_weights(
    model: nn.Module, *, dense_first_layer: bool = False, dense_classifier: bool = False
) -> list[tuple[str, nn.Parameter]]:
    """(name, weight) of every conv and linear layer, in module order (SPEC section 1).

    The first layer is the first conv/linear module; the classifier is the last linear module.
    Biases and normalisation parameters are never masked.
    """
    layers = [
        (name, module) for name, module in model.named_modules() if isinstance(module, SPARSE_MODULE_TYPES)
    ]
    if not layers:
        raise MaskError("the model has no convolution or linear layers to sparsify")
    excluded: set[str] = set()
    if dense_first_layer:
        excluded.add(layers[0][0])
    if dense_classifier:
        linear_names = [name for name, module in layers if isinstance(module, nn.Linear)]
        if linear_names:
            excluded.add(linear_names[-1])
    return [
        (f"{name}.weight" if name else "weight", module.weight)
        for name, module in layers
        if name not in excluded
    ]


class MaskSet:
    """0/1 masks over a fixed list of weight tensors.

    Masks are stored in the weights' dtype and device so that applying them is a fused multiply.
    """

    def __init__(self, named_weights: Sequence[tuple[str, Tensor]]):
        if len({name for name, _ in named_weights}) != len(named_weights):
            raise MaskError("duplicate tensor names in the mask set")
        self.names: list[str] = [name for name, _ in named_weights]
        self.weights: list[Tensor] = [weight for _, weight in named_weights]
        # Each mask has its weight's memory layout (a channels_last weight gets a channels_last mask): the fused
        # multiplies take their fast path only when both operands have the same strides. Every mask read goes
        # through reshape (logical order), never view, so the layout never changes which entry is which.
        self.masks: list[Tensor] = [torch.ones_like(weight) for weight in self.weights]
        self.numels: list[int] = [weight.numel() for weight in self.weights]
        self.is_dense = True  # all-ones masks need no per-step work
        self._state_cache_key: tuple[int, ...] | None = None
        self._state_tensors: list[Tensor] = []
        self._state_masks: list[Tensor] = []

    @classmethod
    def for_model(
        cls, model: nn.Module, *, dense_first_layer: bool = False, dense_classifier: bool = False
    ) -> MaskSet:
        return cls(
            sparsifiable_weights(
                model, dense_first_layer=dense_first_layer, dense_classifier=dense_classifier
            )
        )

    def __len__(self) -> int:
        return len(self.names)

    @property
    def total(self) -> int:
        return sum(self.numels)

    @property
    def shapes(self) -> list[torch.Size]:
        return [weight.shape for weight in self.weights]

    # ----------------------------------------------------------------------------------------------
    # Setting and applying

    def set(self, masks: Sequence[Tensor]) -> None:
        """Replace every mask (validated: one per tensor, same shape, values 0/1). Does not touch weights."""
        if len(masks) != len(self.masks):
            raise MaskError(f"expected {len(self.masks)} masks, got {len(masks)}")
        checked = []
        for name, weight, mask in zip(self.names, self.weights, masks, strict=True):
            if tuple(mask.shape) != tuple(weight.shape):
                raise MaskError(
                    f"mask for {name} has shape {tuple(mask.shape)}, expected {tuple(weight.shape)}"
                )
            if mask.dtype != torch.bool and not bool(((mask == 0) | (mask == 1)).all()):
                raise MaskError(f"mask for {name} has values other than 0 and 1")
            checked.append(torch.empty_like(weight).copy_(mask.detach()))
        self.masks = checked
        self.is_dense = all(bool(mask.all()) for mask in self.masks)
        self._state_cache_key = None

    @torch.no_grad()
    def apply(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Zero masked weights and their optimizer state (momentum, Adam moments)."""
        if self.is_dense:
            return
        torch._foreach_mul_(self.weights, self.masks)
        if optimizer is not None:
            tensors, masks = self._optimizer_state(optimizer)
            if tensors:
                torch._foreach_mul_(tensors, masks)

    @torch.no_grad()
    def zero_positions(
        self, positions: Sequence[Tensor], optimizer: torch.optim.Optimizer | None = None
    ) -> None:
        """Set weights and optimizer state to exactly 0 where `positions` (bool, one per tensor) is True."""
        keep = [
            (~position).to(weight.dtype) for position, weight in zip(positions, self.weights, strict=True)
        ]
        torch._foreach_mul_(self.weights, keep)
        if optimizer is not None:
            for weight, keep_mask in zip(self.weights, keep, strict=True):
                for value in optimizer.state.get(weight, {}).values():
                    if isinstance(value, Tensor) and value.shape == weight.shape:
                        value.mul_(keep_mask)

    def _optimizer_state(self, optimizer: torch.optim.Optimizer) -> tuple[list[Tensor], list[Tensor]]:
        """Optimizer state tensors shaped like a masked weight, paired with that weight's mask.

        Built once and cached; the key changes when state is created lazily (first step) or replaced
        (`optimizer.load_state_dict`), so a stale list is never used. Checking the key costs two cheap
        reads for the whole set, not a look-up per parameter.
        """
        # `load_state_dict` installs a new state dict object and lazy creation changes its length; the
        # cached list holds a reference to the object, so its id cannot be reused by another one.
        key = (id(optimizer.state), len(optimizer.state))
        if key != self._state_cache_key:
            tensors, masks = [], []
            for weight, mask in zip(self.weights, self.masks, strict=True):
                for value in optimizer.state.get(weight, {}).values():
                    if isinstance(value, Tensor) and value.shape == weight.shape:
                        tensors.append(value)
                        masks.append(mask)
            self._state_tensors, self._state_masks, self._state_cache_key = tensors, masks, key
        return self._state_tensors, self._state_masks

    # ----------------------------------------------------------------------------------------------
    # Reports (these synchronise with the device: call them at mask updates and for logging only)

    def active_counts(self) -> list[int]:
        counts = torch.stack([mask.sum(dtype=torch.int64) for mask in self.masks])
        return [int(count) for count in counts.tolist()]

    def density(self) -> float:
        return sum(self.active_counts()) / self.total if self.total else 1.0

    def layer_densities(self) -> dict[str, float]:
        return {
            name: count / numel
            for name, count, numel in zip(self.names, self.active_counts(), self.numels, strict=True)
        }

    def bool_masks(self) -> list[Tensor]:
        return [mask.bool() for mask in self.masks]

    def as_dict(self) -> dict[str, Tensor]:
        return dict(zip(self.names, self.bool_masks(), strict=True))

    def checksums(self) -> Tensor:
        """One int64 per mask, equal on two ranks exactly when their masks are equal (with overwhelming odds)."""
        sums = []
        for mask in self.masks:
            flat = mask.reshape(-1).to(torch.int64)
            positions = torch.arange(flat.numel(), device=flat.device, dtype=torch.int64)
            hashed = (positions * _HASH_MULTIPLIER) % _HASH_MODULUS
            sums.append((flat * hashed).sum() + flat.sum())
        return torch.stack(sums) if sums else torch.zeros(0, dtype=torch.int64)

    # ----------------------------------------------------------------------------------------------
    # Persistence

    def state_dict(self) -> dict[str, Tensor]:
        return {
            name: mask.detach().to("cpu", torch.bool)
            for name, mask in zip(self.names, self.masks, strict=True)
        }

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        missing = [name for name in self.names if name not in state]
        unexpected = [name for name in state if name not in set(self.names)]
        if missing or unexpected:
            raise MaskError(
                f"mask state does not match the model: missing {missing}, unexpected {unexpected}"
            )
        self.set([state[name] for name in self.names])


def split_like(flat: Tensor, numels: Iterable[int], shapes: Iterable[torch.Size]) -> list[Tensor]:
    """Cut a concatenation of flattened tensors back into tensors of the given shapes."""
    return [piece.view(shape) for piece, shape in zip(torch.split(flat, list(numels)), shapes, strict=True)]

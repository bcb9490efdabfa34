"""The method names: built-ins mapped to their classes by import path, plug-ins, and `build_method`.

Listing the names imports nothing (the CLI's help, analysis); `method_class` imports one method's module,
which needs no torch either (the config validates a run's settings with it). A name is a built-in, an
import path `MODULE:CLASS` of the user's own method, or a name an installed package registers under the
entry-point group `harness.methods` (harness.registry.plugins).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from harness.errors import UserError
from harness.registry.plugins import Registry
from harness.sparse.methods.base import MethodSettings, SparsityMethod

if TYPE_CHECKING:
    import torch

    from harness.sparse.masks import MaskSet

REGISTRY = Registry(
    kind="methods",
    field="sparsity.method",
    noun="method",
    builtins={
        "dense": "harness.sparse.methods.static:Dense",
        "static": "harness.sparse.methods.static:Static",
        "gmp": "harness.sparse.methods.gmp:GradualMagnitude",
        "gmp-layerwise": "harness.sparse.methods.gmp:GradualMagnitudeLayerwise",
        "granet": "harness.sparse.methods.granet:GraNet",
        "rigl": "harness.sparse.methods.set:RigL",
        "set": "harness.sparse.methods.set:SET",
        "snip": "harness.sparse.methods.pruning_at_init:SNIP",
        "grasp": "harness.sparse.methods.pruning_at_init:GraSP",
        "synflow": "harness.sparse.methods.pruning_at_init:SynFlow",
        "mest": "harness.sparse.methods.mest:MEST",
        "acdc": "harness.sparse.methods.acdc:ACDC",
    },
)
METHODS = tuple(REGISTRY.builtins)  # the built-in names, in registry order

# What a method may override to be one; a class that overrides none of them would train dense.
_DECISIONS = (
    "initial_density",
    "is_update_step",
    "update",
    "prepare",
    "prune_scores",
    "drop_scores",
    "growth_scores",
)


def method_class(name: str) -> type[SparsityMethod]:
    """The class `name` stands for. Raises UserError naming `sparsity.method` when it stands for nothing
    or for something that is not a method (a plug-in is checked against the contract)."""
    target = REGISTRY.load(name)
    if REGISTRY.is_builtin(name):
        return target
    check_plugin(name, target)
    return target


def check_plugin(name: str, target: Any) -> None:
    """A plug-in method must be a SparsityMethod subclass with its own `name`, Settings that are
    MethodSettings, and at least one decision of its own."""
    field = REGISTRY.field
    if not (isinstance(target, type) and issubclass(target, SparsityMethod)):
        raise UserError(
            f"{field}: plug-in {name!r} is not a subclass of harness.sparse.SparsityMethod "
            f"(got {type(target).__name__} {getattr(target, '__name__', target)!r})"
        )
    if "name" not in vars(target):
        raise UserError(
            f"{field}: plug-in {name!r} does not set its own `name` (a short string for its records)"
        )
    if not (isinstance(target.Settings, type) and issubclass(target.Settings, MethodSettings)):
        raise UserError(f"{field}: plug-in {name!r}: its Settings is not a subclass of MethodSettings")
    if all(getattr(target, decision) is getattr(SparsityMethod, decision) for decision in _DECISIONS):
        raise UserError(
            f"{field}: plug-in {name!r} overrides none of {', '.join(_DECISIONS)}: it would train dense"
        )


def settings_fields(name: str) -> tuple[str, ...]:
    """The settings the method `name` has, in declaration order."""
    return tuple(method_class(name).Settings.model_fields)


@functools.cache
def methods_with_setting(setting: str) -> tuple[str, ...]:
    """The built-in methods that have `setting` (e.g. "init_sparsity": those whose initial sparsity is a
    setting of their own, the gradual magnitude family), in registry order."""
    return tuple(name for name in METHODS if setting in settings_fields(name))


def build_method(
    name: str,
    masks: MaskSet,
    optimizer: torch.optim.Optimizer | None,
    settings: MethodSettings | Mapping[str, Any] | None = None,
    **run: Any,
) -> SparsityMethod:
    """The method `name` on `masks`; `run` is the run length and seed (total_steps, steps_per_epoch, seed)."""
    return method_class(name)(masks, optimizer, settings, **run)

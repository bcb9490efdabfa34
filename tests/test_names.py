"""The registries hold their names without importing torch: each list equals its registry, each name its class."""

from __future__ import annotations

from harness.sparse.methods.gmp import GradualMagnitude
from harness.sparse.methods.registry import METHODS, REGISTRY, method_class, methods_with_setting


def test_method_names_are_the_method_registry_and_each_names_its_class() -> None:
    assert METHODS == tuple(REGISTRY.builtins)
    assert [method_class(name).name for name in METHODS] == list(METHODS)


def test_methods_with_their_own_initial_sparsity_are_the_gradual_magnitude_family() -> None:
    gradual = [name for name in METHODS if issubclass(method_class(name), GradualMagnitude)]
    assert list(methods_with_setting("init_sparsity")) == gradual == ["gmp", "gmp-layerwise", "granet"]


def test_every_method_has_a_colour_and_every_colour_a_method() -> None:
    from analysis import style

    base_methods = {label.split(" (")[0] for label in style.METHOD_COLOURS}
    assert base_methods == set(METHODS)

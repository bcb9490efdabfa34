"""harness.names lists the registries' names without importing torch: each list equals its registry."""

from __future__ import annotations

from harness import names
from harness.sparse import METHODS
from harness.sparse.methods import GradualMagnitude


def test_method_names_are_the_method_registry() -> None:
    assert list(names.METHODS) == list(METHODS)


def test_gradual_methods_are_the_gradual_magnitude_family() -> None:
    gradual = [name for name, cls in METHODS.items() if issubclass(cls, GradualMagnitude)]
    assert list(names.GRADUAL_METHODS) == gradual


def test_every_method_has_a_colour_and_every_colour_a_method() -> None:
    from analysis import style

    base_methods = {label.split(" (")[0] for label in style.METHOD_COLOURS}
    assert base_methods == set(names.METHODS)

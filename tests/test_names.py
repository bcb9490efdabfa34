"""harness.names lists the registries' names without importing torch: each list equals its registry."""

from __future__ import annotations

from harness import config, data, models, names
from harness.sparse import METHODS
from harness.sparse.methods import GradualMagnitude


def test_dataset_names_are_the_data_builders() -> None:
    assert list(names.DATASETS) == list(data._BUILDERS)


def test_architecture_names_are_the_model_registry() -> None:
    assert list(names.ARCHS) == list(models.ARCHS)
    assert set(config.NARROWEST_LAYER) == set(names.ARCHS)


def test_method_names_are_the_method_registry() -> None:
    assert list(names.METHODS) == list(METHODS)


def test_gradual_methods_are_the_gradual_magnitude_family() -> None:
    gradual = [name for name, cls in METHODS.items() if issubclass(cls, GradualMagnitude)]
    assert list(names.GRADUAL_METHODS) == gradual


def test_every_method_has_a_colour_and_every_colour_a_method() -> None:
    from analysis import style

    base_methods = {label.split(" (")[0] for label in style.METHOD_COLOURS}
    assert base_methods == set(names.METHODS)

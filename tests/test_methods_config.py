"""One schema for sparsity settings (config section <-> the sparse core's Hyperparameters), run ids of the
new methods' settings, and the CLI's list of methods."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest

from harness.config import _NOT_IDENTITY, SparsityConfig, resolve, run_id
from harness.engine.loop import epoch_step, sparsity_hyperparameters
from harness.errors import UserError
from harness.launch.command_line import training_parser
from harness.sparse import METHODS, Hyperparameters

NEW_FIELDS = (
    "scoring_batches",
    "synflow_rounds",
    "mest_lambda",
    "acdc_warmup",
    "acdc_phase",
    "acdc_final",
    "drop_rounding",
)


def test_the_config_section_and_the_core_have_the_same_fields() -> None:
    core = {spec.name for spec in dataclasses.fields(Hyperparameters)} - Hyperparameters.RUN_FIELDS
    section = set(SparsityConfig.model_fields) - SparsityConfig.CONFIG_ONLY
    assert section == core
    # Every point in time is a fraction of the run in the section (bounded by 1).
    times = {spec.name for spec in dataclasses.fields(Hyperparameters) if spec.metadata.get("time")}
    assert times == {"prune_start", "prune_end", "update_until", "acdc_warmup", "acdc_phase", "acdc_final"}
    for name in times:
        bounds = SparsityConfig.model_fields[name].metadata
        assert any(getattr(bound, "le", None) == 1 or getattr(bound, "lt", None) == 1 for bound in bounds), (
            name
        )


def test_every_setting_is_carried_to_the_core_with_times_in_steps() -> None:
    # Distinct non-default values everywhere (unvalidated, so no method's reset applies).
    values = {
        "sparsity": 0.8,
        "init_sparsity": 0.3,
        "distribution": "er",
        "erk_power": 0.7,
        "update_frequency": 17,
        "prune_start": 0.1,
        "prune_end": 0.6,
        "regen_rate": 0.4,
        "regen_rate_min": 0.01,
        "regen_until": "prune_end",
        "growth": "momentum",
        "update_until": 0.9,
        "drop_rounding": "nearest",
        "scoring_batches": 3,
        "synflow_rounds": 7,
        "mest_lambda": 0.25,
        "acdc_warmup": 0.2,
        "acdc_phase": 0.1,
        "acdc_final": 0.3,
    }
    assert set(values) == set(SparsityConfig.model_fields) - SparsityConfig.CONFIG_ONLY
    section = SparsityConfig.model_construct(method="granet", **values)
    hyper = sparsity_hyperparameters(section, epochs=10, steps_per_epoch=30, seed=5)
    assert (hyper.total_steps, hyper.seed) == (300, 5)
    for spec in dataclasses.fields(Hyperparameters):
        if spec.name in Hyperparameters.RUN_FIELDS:
            continue
        given = values[spec.name]
        expected = epoch_step(given, 10, 30) if spec.metadata.get("time") else given
        assert getattr(hyper, spec.name) == expected, spec.name


def previous_run_id(config) -> str:
    """The run id as it was computed before the new methods' fields existed."""
    identity = config.to_dict()
    for section, fields in _NOT_IDENTITY.items():
        for name in fields:
            identity[section].pop(name, None)
    for name in NEW_FIELDS:
        identity["sparsity"].pop(name)
    identity["world_size"] = 1
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:10]
    return f"{config.sparsity.method}-{config.model.arch}-{config.data.dataset}-s{config.run.seed}-{digest}"


@pytest.mark.parametrize("method", ["dense", "static", "gmp", "gmp-layerwise", "granet", "rigl", "set"])
def test_the_existing_methods_keep_their_run_ids(method: str) -> None:
    config = resolve(method, dataset="mnist1d", overrides={"sparsity": {"sparsity": 0.95, "acdc_phase": 0.2}})
    assert run_id(config) == previous_run_id(config)


@pytest.mark.parametrize(
    ("method", "read", "ignored"),
    [
        ("snip", {"scoring_batches": 2}, {"init_sparsity": 0.5, "update_frequency": 7, "synflow_rounds": 3}),
        ("grasp", {"scoring_batches": 2}, {"regen_rate": 0.2, "mest_lambda": 0.1}),
        ("synflow", {"synflow_rounds": 10}, {"scoring_batches": 4, "distribution": "er"}),
        ("mest", {"mest_lambda": 0.1}, {"scoring_batches": 4, "init_sparsity": 0.5}),
        ("acdc", {"acdc_phase": 0.1}, {"update_frequency": 7, "regen_rate": 0.1}),
    ],
)
def test_new_methods_are_identified_by_what_they_read(method: str, read: dict, ignored: dict) -> None:
    base = resolve(method, dataset="mnist1d")
    assert run_id(base).startswith(f"{method}-resnet20-mnist1d-s0-")
    assert run_id(resolve(method, dataset="mnist1d", overrides={"sparsity": ignored})) == run_id(base)
    assert run_id(resolve(method, dataset="mnist1d", overrides={"sparsity": read})) != run_id(base)


def test_acdc_phases_must_fit_in_the_run() -> None:
    with pytest.raises(UserError, match=r"sparsity: Value error|acdc_warmup \+ acdc_final"):
        resolve("acdc", dataset="mnist1d", overrides={"sparsity": {"acdc_warmup": 0.6, "acdc_final": 0.5}})
    with pytest.raises(UserError, match="sparsity.scoring_batches"):
        resolve("snip", dataset="mnist1d", overrides={"sparsity": {"scoring_batches": 0}})


def test_the_cli_help_lists_every_registered_method() -> None:
    (method,) = [param for param in training_parser().commands["run"].params if param.name == "method"]
    assert method.help.split(" | ") == list(METHODS)

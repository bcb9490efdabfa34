"""Each method owns its settings: the config's sparsity section is the method, the mask-set options and that
method's Settings; a built-in method's config.yaml and run id are what they were before (pinned); values a
method lacks are dropped (with a warning when given explicitly); unknown names are errors; and settings are
validated without importing torch."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest
import yaml

from harness.config import dump_yaml, load_config_file, resolve, run_id, validate
from harness.config import sparsity as sparsity_section
from harness.config.identity import method_stem
from harness.errors import UserError
from harness.launch.command_line import training_parser
from harness.sparse.methods.base import TIME, Growth
from harness.sparse.methods.registry import METHODS, method_class, methods_with_setting

ROOT = Path(__file__).resolve().parent.parent
PINNED = json.loads((ROOT / "tests" / "data" / "pinned_config_yaml.json").read_text())
# Fields added to the config after these files were pinned, at the values their runs are read with (each a
# late field, left out of the run id at that value, or never in it as data.pipeline: harness.config.identity).
# A config.yaml now shows them at the end of their section; everything the pin covers must stay byte for byte.
ADDED_AFTER_PIN = {"data": {"pipeline": "auto"}, "run": {"compile": False, "memory_format": "auto"}}


def with_fields_added_after_pin(pinned_yaml: str) -> str:
    config = yaml.safe_load(pinned_yaml)
    for section, fields in ADDED_AFTER_PIN.items():
        config[section].update(fields)
    return yaml.safe_dump(config, sort_keys=False)


@pytest.mark.parametrize("case", sorted(PINNED))
def test_config_yaml_and_run_id_are_those_of_the_code_before_methods_owned_settings(
    case: str, tmp_path: Path
) -> None:
    pinned = PINNED[case]
    config = resolve(
        pinned["method"], dataset=pinned["dataset"], arch=pinned["arch"], overrides=pinned["overrides"]
    )
    assert dump_yaml(config) == with_fields_added_after_pin(pinned["yaml"])
    assert run_id(config) == pinned["run_id"]
    # A config.yaml written before reads back to the same config and id.
    path = tmp_path / "config.yaml"
    path.write_text(pinned["yaml"])
    assert load_config_file(path) == config


def test_every_method_is_pinned() -> None:
    assert {PINNED[case]["method"] for case in PINNED} == set(METHODS)


def test_built_in_methods_agree_on_the_defaults_of_the_settings_they_share() -> None:
    # The old layout shows a setting a method lacks at "the" default: there must be only one.
    for setting in sparsity_section.LEGACY_FIELDS:
        defaults = {
            method_class(name).Settings.model_fields[setting].default
            for name in methods_with_setting(setting)
        }
        assert len(defaults) == 1, setting
    assert set(sparsity_section.legacy_values()) == sparsity_section.builtin_settings()


def test_each_method_has_the_settings_it_reads_and_parents_keep_theirs() -> None:
    fields = {name: set(method_class(name).Settings.model_fields) for name in METHODS}
    assert fields["dense"] == set()
    assert fields["static"] == {"sparsity", "distribution", "erk_power"}
    gmp = {
        "sparsity",
        "distribution",
        "erk_power",
        "init_sparsity",
        "update_frequency",
        "prune_start",
        "prune_end",
    }
    assert fields["gmp"] == fields["gmp-layerwise"] == gmp
    regeneration = {"regen_rate", "regen_rate_min", "growth", "drop_rounding"}
    assert fields["granet"] == gmp | regeneration | {"regen_until"}
    set_fields = {"sparsity", "distribution", "erk_power", "update_frequency", "update_until"} | regeneration
    assert fields["set"] == fields["rigl"] == set_fields
    assert fields["mest"] == set_fields | {"mest_lambda"}
    assert fields["snip"] == fields["grasp"] == {"sparsity", "scoring_batches"}
    assert fields["synflow"] == {"sparsity", "synflow_rounds"}
    assert fields["acdc"] == {"sparsity", "acdc_warmup", "acdc_phase", "acdc_final"}
    assert methods_with_setting("init_sparsity") == ("gmp", "gmp-layerwise", "granet")


def test_the_growth_setting_offers_exactly_the_growth_scores_of_the_core() -> None:
    from harness.sparse import criteria

    assert get_args(Growth) == criteria.GROWTH_SCORES


def test_every_point_in_time_is_a_fraction_of_the_run_bounded_by_1() -> None:
    times = set()
    for name in METHODS:
        for setting, info in method_class(name).Settings.model_fields.items():
            if TIME in info.metadata:
                times.add(setting)
                assert any(
                    getattr(bound, "le", None) == 1 or getattr(bound, "lt", None) == 1
                    for bound in info.metadata
                )
    assert times == {"prune_start", "prune_end", "update_until", "acdc_warmup", "acdc_phase", "acdc_final"}


def test_the_section_holds_the_method_settings_as_its_settings_class() -> None:
    config = resolve(
        "granet", dataset="mnist1d", overrides={"sparsity": {"regen_rate": 0.2, "acdc_phase": 0.3}}
    )
    settings = config.sparsity.settings
    assert type(settings) is method_class("granet").Settings
    assert (settings.regen_rate, settings.update_frequency, settings.prune_end) == (0.2, 38, 0.5)
    assert not hasattr(settings, "acdc_phase")
    # Read through the section, a setting is what config.yaml shows (the old default where the method lacks it).
    assert (config.sparsity.regen_rate, config.sparsity.acdc_phase) == (0.2, 0.05)


def test_given_values_a_method_lacks_are_dropped_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    sparsity_section.warn_ignored.cache_clear()
    with caplog.at_level(logging.WARNING, logger="harness"):
        dense = resolve(
            "dense", dataset="mnist1d", overrides={"sparsity": {"sparsity": 0.95, "dense_classifier": True}}
        )
        resolve(
            "dense", dataset="mnist1d", overrides={"sparsity": {"sparsity": 0.95, "dense_classifier": True}}
        )
        rigl = resolve(
            "rigl", dataset="mnist1d", overrides={"sparsity": {"init_sparsity": 0.5, "sparsity": 0.95}}
        )
        resolve(
            "granet", dataset="mnist1d", overrides={"sparsity": {"init_sparsity": 0.5}}
        )  # read: no warning
    assert [record.getMessage() for record in caplog.records] == [
        "sparsity: dense has no settings sparsity, dense_classifier; the values given are ignored",
        "sparsity: rigl has no setting init_sparsity; the value given is ignored",
    ]
    assert run_id(dense) == run_id(resolve("dense", dataset="mnist1d"))
    assert run_id(rigl) == run_id(
        resolve("rigl", dataset="mnist1d", overrides={"sparsity": {"sparsity": 0.95}})
    )
    # Recipe values (the mnist1d recipe gives dT and r_0 to every method) are dropped in silence.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="harness"):
        resolve("static", dataset="mnist1d")
    assert caplog.records == []


@pytest.mark.parametrize(
    ("method", "values", "message"),
    [
        ("granet", {"sparsty": 0.5}, "sparsity.sparsty: unknown field (did you mean 'sparsity'?)"),
        ("dense", {"regen_rte": 0.5}, "sparsity.regen_rte: unknown field (did you mean 'regen_rate'?)"),
        ("rigl", {"lottery": 1}, "sparsity.lottery: unknown field"),
        # A value the method drops must still be one some method could take.
        ("dense", {"sparsity": 1.5}, "sparsity.sparsity: Input should be less than 1 (got 1.5)"),
        (
            "dense",
            {"dense_classifier": "sometimes"},
            "sparsity.dense_classifier: Input should be a valid boolean, unable to interpret input (got 'sometimes')",
        ),
        (
            "snip",
            {"scoring_batches": 0},
            "sparsity.scoring_batches: Input should be greater than or equal to 1 (got 0)",
        ),
        (
            "granet",
            {"update_frequency": True},
            "sparsity.update_frequency: Input should be a valid integer (got True)",
        ),
        (
            "acdc",
            {"acdc_warmup": 0.6, "acdc_final": 0.5},
            "sparsity: acdc_warmup + acdc_final (0.6 + 0.5) must not exceed the run (1)",
        ),
        (
            "rigl",
            {"regen_rate": 0.1, "regen_rate_min": 0.2},
            "sparsity: regen_rate_min (0.2) must not exceed regen_rate (0.1)",
        ),
    ],
)
def test_bad_sparsity_values_are_one_line_naming_the_field(method: str, values: dict, message: str) -> None:
    with pytest.raises(UserError) as raised:
        resolve(method, dataset="mnist1d", overrides={"sparsity": values})
    assert str(raised.value) == message


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
def test_methods_are_identified_by_what_they_read(method: str, read: dict, ignored: dict) -> None:
    base = resolve(method, dataset="mnist1d")
    assert run_id(base).startswith(f"{method}-resnet20-mnist1d-s0-")
    assert run_id(resolve(method, dataset="mnist1d", overrides={"sparsity": ignored})) == run_id(base)
    assert run_id(resolve(method, dataset="mnist1d", overrides={"sparsity": read})) != run_id(base)


def test_a_full_old_layout_section_validates_for_any_method() -> None:
    # Planning copies a resolved config's flat section and changes the method (plasticity's base run).
    flat = resolve("granet", dataset="mnist1d").to_dict()
    flat["sparsity"]["method"] = "static"
    static = validate(flat)
    assert static.sparsity.settings == method_class("static").Settings(sparsity=0.9)


def test_the_cli_help_lists_every_registered_method() -> None:
    (method,) = [param for param in training_parser().commands["run"].params if param.name == "method"]
    assert method.help.split(" | ") == [*METHODS, "MODULE:CLASS (a plug-in)"]


def test_a_plugin_run_id_stem_is_safe_in_a_file_name() -> None:
    assert method_stem("granet") == "granet"
    assert method_stem("mylab.methods:Pruner") == "mylab.methods-Pruner"
    assert method_stem("a b/c:D") == "a-b-c-D"


def test_settings_and_sweep_planning_need_no_torch(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        "name: no-torch\nprogram: harness\nmethod: grid\n"
        'command: ["${env}", "${program}", "run", "${args_no_boolean_flags}"]\n'
        "parameters:\n"
        "  method: {values: [granet, dense]}\n"
        "  dataset: {value: mnist1d}\n"
        "  final_sparsity: {values: [0.9, 0.95]}\n"
    )
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from harness.config import resolve, run_id\n"
        "from harness.sparse.methods.registry import METHODS\n"
        "for method in METHODS:\n"
        "    run_id(resolve(method, dataset='mnist1d', overrides={'sparsity': {'sparsity': 0.8}}))\n"
        "from harness.launch.sweep_file import load_sweep\n"
        "from harness.launch.sweep_plan import plan_jobs\n"
        f"jobs = plan_jobs(load_sweep(Path({str(sweep)!r})), runs_dir=Path('runs'))\n"
        "assert len(jobs) == 3, jobs  # dense at 0.9 and 0.95 is one run\n"
        "sys.exit(3 if 'torch' in sys.modules else 0)\n"
    )
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=environment, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr

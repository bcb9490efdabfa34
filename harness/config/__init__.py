"""Typed configuration: one pydantic model per concern, recipes from YAML, run ids from hashes.

A config is resolved once at the edge (CLI or a Python caller) from three layers, later ones winning:
the section defaults (`sections`), the recipe YAML picked by dataset and arch (`recipes`), and explicit
overrides (`--set section.key=value` and the CLI's named flags). Each component later receives only its own
section. `identity` turns a config into its run id. This package's names are its public API; nothing here
imports torch.
"""

from harness.config.base import Section
from harness.config.identity import config_hash, run_directory, run_id
from harness.config.recipes import (
    available_recipes,
    deep_merge,
    describe_validation_error,
    dump_yaml,
    load_config_file,
    load_recipe,
    parse_assignments,
    recipe_dir,
    resolve,
    validate,
)
from harness.config.sections import (
    MAX_SEED,
    Config,
    DataConfig,
    ModelConfig,
    OptimConfig,
    PlasticityConfig,
    RunConfig,
    TrackingConfig,
)
from harness.config.sparsity import SparsityConfig

__all__ = [
    "MAX_SEED",
    "Config",
    "DataConfig",
    "ModelConfig",
    "OptimConfig",
    "PlasticityConfig",
    "RunConfig",
    "Section",
    "SparsityConfig",
    "TrackingConfig",
    "available_recipes",
    "config_hash",
    "deep_merge",
    "describe_validation_error",
    "dump_yaml",
    "load_config_file",
    "load_recipe",
    "parse_assignments",
    "recipe_dir",
    "resolve",
    "run_directory",
    "run_id",
    "validate",
]

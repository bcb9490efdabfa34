"""Resolving a config: defaults < the recipe for (dataset, arch) < overrides, validated once.

Recipes are YAML files in `harness/recipes/` (`<dataset>-<arch>.yaml`, else `<dataset>.yaml`, with `extends`);
overrides come from `--set section.key=value` and the CLI's named flags. Errors are one line naming the field.
"""

from __future__ import annotations

import copy
import difflib
import functools
from importlib import resources
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ValidationError

from harness.config.sections import Config
from harness.config.sparsity import check_given
from harness.errors import UserError
from harness.registry.datasets import DATASETS


def recipe_dir() -> Path:
    return Path(str(resources.files("harness") / "recipes"))


def available_recipes() -> list[str]:
    return sorted(path.stem for path in recipe_dir().glob("*.yaml"))


def load_recipe(dataset: str, arch: str) -> dict[str, Any]:
    """The recipe for (dataset, arch): `<dataset>-<arch>.yaml` if it exists, else `<dataset>.yaml`."""
    DATASETS.target(dataset)  # an unknown name is a one-line error naming data.dataset
    if not DATASETS.is_builtin(dataset):
        return {}  # a plug-in dataset has no recipe: the section defaults, then flags and --set
    for stem in (f"{dataset}-{arch}", dataset):
        path = recipe_dir() / f"{stem}.yaml"
        if path.exists():
            return _read_recipe(path)
    raise UserError(f"no recipe for dataset {dataset!r}; available: {', '.join(available_recipes())}")


def _read_recipe(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    if path in seen:
        raise UserError(f"recipe {path.name}: circular 'extends'")
    data = copy.deepcopy(_parse_yaml(path))
    parent = data.pop("extends", None)
    if parent is None:
        return data
    return deep_merge(_read_recipe(path.with_name(f"{parent}.yaml"), (*seen, path)), data)


@functools.cache
def _parse_yaml(path: Path) -> dict[str, Any]:
    """Recipes are package files that do not change while a process runs; planning a sweep reads them
    once per grid point, so parse each only once (callers get deep copies)."""
    return yaml.safe_load(path.read_text()) or {}


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_assignments(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """`["optim.lr=0.05", "run.keep_checkpoints=[10, 20]"]` -> nested dict; values are parsed as YAML."""
    nested: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) != 2 or not all(parts):
            raise UserError(f"--set {item!r}: expected section.key=value, e.g. optim.lr=0.05")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as error:
            raise UserError(f"--set {item!r}: value is not valid YAML ({error.problem})") from None
        nested.setdefault(parts[0], {})[parts[1]] = value
    return nested


def resolve(
    method: str,
    *,
    dataset: str = "cifar10",
    arch: str = "resnet20",
    overrides: dict[str, Any] | None = None,
    base: dict[str, Any] | None = None,
) -> Config:
    """Defaults < recipe(dataset, arch) < base (a config file) < overrides; validated once. Raises UserError
    naming the field. Only `overrides` count as given explicitly (a run's config.yaml lists every setting)."""
    layered = deep_merge(load_recipe(dataset, arch), base or {})
    layered = deep_merge(layered, {"data": {"dataset": dataset}, "model": {"arch": arch}})
    layered = deep_merge(layered, {"sparsity": {"method": method}})
    layered = deep_merge(layered, overrides or {})
    config = validate(layered)
    check_given(config.sparsity, (overrides or {}).get("sparsity") or {})
    return config


def validate(data: dict[str, Any]) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as error:
        raise UserError(describe_validation_error(error)) from None


def describe_validation_error(error: ValidationError) -> str:
    """The first problem as one line: `sparsity.sparsity: Input should be less than 1 (got 1.5)`."""
    first = error.errors()[0]
    # A method's settings are a model inside the sparsity section but flat in its YAML: name them as written.
    parts = [str(part) for part in first["loc"] if part != "settings"]
    location = ".".join(parts) or "config"
    message = first["msg"].removeprefix("Value error, ")
    given = first.get("input")
    if first["type"] == "extra_forbidden":
        return f"{location}: unknown field{did_you_mean(parts)}"
    if first["type"] == "unknown_field" or isinstance(given, dict) or first["type"].startswith("value_error"):
        return f"{location}: {message}"
    return f"{location}: {message} (got {given!r})"


# Names other code bases use for a field, which no string distance finds ("learning_rate" is far from "lr").
SYNONYMS = {"learning_rate": "lr", "lr_schedule": "lr_decay_at", "wd": "weight_decay", "bs": "batch_size"}


def did_you_mean(parts: list[str]) -> str:
    """` (did you mean optim.lr?)` for an unknown field at `parts` (section, field), or "" with no close name."""
    model: Any = Config
    for part in parts[:-1]:
        field = model.model_fields.get(part) if isinstance(model, type) else None
        if field is None:
            return ""
        model = next((arg for arg in (field.annotation, *get_args(field.annotation)) if _is_model(arg)), None)
    if not _is_model(model):
        return ""
    names = sorted(model.model_fields)
    key = parts[-1]
    close = [SYNONYMS[key]] if SYNONYMS.get(key) in names else difflib.get_close_matches(key, names, n=1)
    return f" (did you mean {'.'.join([*parts[:-1], close[0]])}?)" if close else ""


def _is_model(candidate: Any) -> bool:
    return isinstance(candidate, type) and issubclass(candidate, BaseModel)


def load_config_file(path: Path | str) -> Config:
    """A resolved config written by a run (`config.yaml`)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as error:
        raise UserError(f"{path}: cannot read config ({error.strerror})") from None
    return validate(data)


def dump_yaml(config: Config) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)

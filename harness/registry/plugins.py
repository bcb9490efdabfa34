"""Names that stand for code: the built-in registries, `MODULE:NAME` plug-ins and installed entry points.

A registry maps each built-in name to the import path of what it names (`"harness.models.vgg:vgg19"`), so
listing names, validating a config and printing help import nothing heavy: the code is imported when it is
used. A researcher's own model, dataset or sparsity method enters through the same door, in one of two ways:

- an import path `MODULE:NAME` given where a name is expected (`--arch mynets:tiny_cnn`, with `mynets`
  importable, e.g. on PYTHONPATH): the path itself is the name, so it is part of the run id;
- a name that an installed package declares under the entry-point group `harness.<kind>`, e.g. in its
  pyproject.toml: `[project.entry-points."harness.models"]` then `tiny = "mynets:tiny_cnn"`.

Built-in names cannot be shadowed by an installed package: a run id that says `resnet20` always means ours.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from harness.errors import UserError

SEPARATOR = ":"


def is_import_path(name: str) -> bool:
    """`package.module:attribute` (both parts non-empty)."""
    module, separator, attribute = name.partition(SEPARATOR)
    return bool(separator and module.strip() and attribute.strip())


def load_attribute(path: str, field: str) -> Any:
    """The object `MODULE:NAME` names; a UserError naming `field` when the module or the name is missing."""
    module_name, _, attribute = path.partition(SEPARATOR)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name is not None and module_name.startswith(error.name):
            raise UserError(
                f"{field}: cannot import module {module_name!r} for plug-in {path!r} (is it on PYTHONPATH "
                "or installed?)"
            ) from None
        raise  # the plug-in itself imports something missing: its own traceback says what
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise UserError(
                f"{field}: module {module_name!r} has no attribute {attribute!r} (plug-in {path!r})"
            )
        target = getattr(target, part)
    return target


@dataclass(frozen=True)
class Registry:
    """The names of one kind of component: built-ins, then installed entry points, and any import path."""

    kind: str  # "models", "datasets" or "methods": the entry-point group is `harness.<kind>`
    field: str  # the config field errors name, e.g. "model.arch"
    noun: str  # what one entry is called in messages, e.g. "architecture"
    builtins: Mapping[str, str]  # name -> "module:attribute"

    @property
    def group(self) -> str:
        return f"harness.{self.kind}"

    def installed(self) -> dict[str, str]:
        """Entry points of installed packages in this registry's group (name -> "module:attribute")."""
        return {
            entry.name: entry.value
            for entry in metadata.entry_points(group=self.group)
            if entry.name not in self.builtins
        }

    def names(self) -> tuple[str, ...]:
        """Built-in names in registry order, then installed ones sorted."""
        return (*self.builtins, *sorted(self.installed()))

    def target(self, name: str) -> str:
        """The import path `name` stands for. Raises UserError naming the field when it stands for nothing."""
        if name in self.builtins:
            return self.builtins[name]
        if is_import_path(name):
            return name
        installed = self.installed()
        if name in installed:
            return installed[name]
        valid = (*self.builtins, *sorted(installed))
        close = difflib.get_close_matches(name, valid, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UserError(
            f"{self.field}: unknown {self.noun} {name!r}{hint}; valid: {', '.join(valid)}, "
            f"or a plug-in as MODULE:NAME"
        )

    def load(self, name: str) -> Any:
        """The object `name` stands for, imported now."""
        return load_attribute(self.target(name), self.field)

    def is_builtin(self, name: str) -> bool:
        return name in self.builtins

    def check_callable(self, name: str, keywords: tuple[str, ...]) -> str:
        """`name`, if it stands for a callable that accepts these keyword arguments; else a ValueError whose
        message (without the field, which config validation adds) names what is missing.

        Built-ins are trusted without importing them (validation stays torch-free); a plug-in is imported
        here, so a broken one is refused before anything is created.
        """
        try:
            if name in self.builtins:
                return name
            target = self.load(name)
        except UserError as error:
            raise ValueError(str(error).removeprefix(f"{self.field}: ")) from None
        if not callable(target):
            raise ValueError(
                f"plug-in {name!r} is {type(target).__name__}, not a callable {self.noun} builder"
            )
        try:
            parameters = inspect.signature(target).parameters.values()
        except (TypeError, ValueError):  # a builtin without a signature: let the call tell
            return name
        if any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters):
            return name
        accepted = {
            parameter.name
            for parameter in parameters
            if parameter.kind is not inspect.Parameter.POSITIONAL_ONLY
        }
        missing = [keyword for keyword in keywords if keyword not in accepted]
        if missing:
            raise ValueError(
                f"plug-in {name!r} does not accept {', '.join(missing)}; a {self.noun} builder is called as "
                f"builder({', '.join(f'{keyword}=...' for keyword in keywords)})"
            )
        return name

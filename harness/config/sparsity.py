"""The sparsity section: the method, the mask-set options every sparse method shares, and the settings the
method itself declares (`harness.sparse.methods`: each method's `Settings`, in fractions of the run).

Written and read flat, as one mapping: `{method: granet, sparsity: 0.9, prune_end: 0.5, ...,
dense_first_layer: false, dense_classifier: false}`. Reading one splits it: the method's own fields become
its settings, validated once by its Settings class (errors name `sparsity.<field>`); a field that another
built-in method has but this one lacks is dropped (a recipe gives `regen_rate` to every method, `--sparsity`
means nothing to dense; `resolve` warns when the value was given explicitly); any other name is an error.

A built-in method's section is written in the layout every run directory has had (`LEGACY_FIELDS`: every
setting any built-in had, fields the method lacks at their defaults), so its config.yaml and its run id are
what they were before methods owned their settings; analysis reads these columns. A plug-in's section is
its own fields, in the order its Settings declares them.
"""

from __future__ import annotations

import difflib
import functools
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import (
    BaseModel,
    SerializeAsAny,
    ValidationError,
    create_model,
    model_serializer,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from harness.config.base import Section
from harness.sparse.methods.base import MethodSettings
from harness.sparse.methods.registry import METHODS, REGISTRY, method_class

log = logging.getLogger("harness")

MASK_SET = ("dense_first_layer", "dense_classifier")  # which tensors a sparse method masks
# The settings of the section before methods owned them, in its order: the order of every built-in
# method's config.yaml, and so of the columns analysis reads.
LEGACY_FIELDS = (
    "sparsity",
    "init_sparsity",
    "distribution",
    "erk_power",
    "update_frequency",
    "prune_start",
    "prune_end",
    "regen_rate",
    "regen_rate_min",
    "regen_until",
    "growth",
    "update_until",
    "drop_rounding",
    "scoring_batches",
    "synflow_rounds",
    "mest_lambda",
    "acdc_warmup",
    "acdc_phase",
    "acdc_final",
)


@functools.cache
def legacy_values() -> dict[str, Any]:
    """What a built-in method's section shows for a setting it lacks: the default the built-ins declare
    for it (they agree: a test holds them to it), and a sparsity of 0 for a method without one (dense)."""
    values: dict[str, Any] = {}
    for name in METHODS:
        for field, info in method_class(name).Settings.model_fields.items():
            values.setdefault(field, info.default)
    values["sparsity"] = 0.0
    return {field: values[field] for field in LEGACY_FIELDS}


@functools.cache
def builtin_settings() -> frozenset[str]:
    """Every setting some built-in method has."""
    return frozenset(field for name in METHODS for field in method_class(name).Settings.model_fields)


@functools.cache
def _field_model(field: str) -> type[MethodSettings]:
    """A settings model of the one built-in setting `field`: checks a value that the chosen method drops,
    so that a value no method could take (`--sparsity 1.5` to dense) is an error whoever it is given to."""
    for name in METHODS:
        info = method_class(name).Settings.model_fields.get(field)
        if info is not None:
            return create_model(f"Check_{field}", __base__=MethodSettings, **{field: (info.annotation, info)})
    raise KeyError(field)  # builtin_settings() holds only fields some built-in has


class _MaskSetCheck(Section):
    """The mask-set options alone: checks the values a method that never masks drops."""

    dense_first_layer: bool = False
    dense_classifier: bool = False


class SparsityConfig(Section):
    method: str = "dense"
    dense_first_layer: bool = False
    dense_classifier: bool = False
    settings: SerializeAsAny[MethodSettings] = MethodSettings()  # the method's own (dense has none)

    @model_validator(mode="before")
    @classmethod
    def _split(cls, data: Any) -> Any:
        """The flat mapping of a recipe, --set or config.yaml, as the method, mask-set options and settings."""
        if not isinstance(data, Mapping) or isinstance(data.get("settings"), BaseModel):
            return data
        method = data.get("method", "dense")
        if not isinstance(method, str):
            return data  # the `method` field refuses it, naming the field
        target = method_class(method)
        own = set(target.Settings.model_fields)
        section: dict[str, Any] = {"method": method}
        settings: dict[str, Any] = {}
        unknown: list[InitErrorDetails] = []
        for key, value in data.items():
            if key in MASK_SET:
                if target.sparse:
                    section[key] = value
                else:  # a method that never masks drops them, but they must be valid values
                    _MaskSetCheck.model_validate({key: value})
            elif key in own:
                settings[key] = value
            elif key in builtin_settings():
                _field_model(key).model_validate({key: value})  # dropped, but it must be a valid value
            elif key != "method":
                unknown.append(_unknown_field(key, own | set(MASK_SET)))
        if unknown:
            raise ValidationError.from_exception_data(cls.__name__, unknown)
        section["settings"] = target.Settings.model_validate(settings)
        return section

    @model_serializer(mode="plain")
    def _flat(self) -> dict[str, Any]:
        own = self.settings.model_dump(mode="json")
        if REGISTRY.is_builtin(self.method):
            # The old layout, then any setting of a built-in added since, which no old run can have had.
            settings = {field: own.pop(field, default) for field, default in legacy_values().items()}
            settings.update(own)
        else:
            settings = own
        masks = {"dense_first_layer": self.dense_first_layer, "dense_classifier": self.dense_classifier}
        return {"method": self.method, **settings, **masks}

    def __getattr__(self, name: str) -> Any:
        # A setting read through the section (`config.sparsity.prune_end`) reads what config.yaml shows.
        if not name.startswith("_"):
            flat = self._flat()
            if name in flat:
                return flat[name]
        return super().__getattr__(name)  # type: ignore[misc]

    def fields(self) -> frozenset[str]:
        """The names this section holds for its method: its settings, and the mask-set options when sparse."""
        masks = MASK_SET if method_class(self.method).sparse else ()
        return frozenset({"method", *type(self.settings).model_fields, *masks})


def _unknown_field(key: str, valid: Iterable[str]) -> InitErrorDetails:
    close = difflib.get_close_matches(key, sorted({*valid, *builtin_settings()}), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return InitErrorDetails(
        type=PydanticCustomError("unknown_field", "unknown field{hint}", {"hint": hint}),
        loc=(key,),
        input=key,
    )


@functools.cache
def warn_ignored(method: str, fields: tuple[str, ...]) -> None:
    """One warning line for values given to a method that does not have those settings. Once per process
    and case: planning a sweep resolves every grid point, and one line says it."""
    plural = len(fields) > 1
    log.warning(
        "sparsity: %s has no setting%s %s; the value%s given %s ignored",
        method,
        "s" if plural else "",
        ", ".join(fields),
        "s" if plural else "",
        "are" if plural else "is",
    )


def check_given(section: SparsityConfig, given: Mapping[str, Any]) -> None:
    """Warn about the explicitly given sparsity values (--set, named flags) the chosen method dropped."""
    ignored = tuple(key for key in given if key not in section.fields())
    if ignored:
        warn_ignored(section.method, ignored)

"""The base of every config section, and the field types sections share."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, get_args

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationInfo, field_validator

Fraction = float  # a point in time as a fraction of the whole run, in [0, 1]


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, values are immutable, numbers are finite
    (`--lr 1e309` parses as inf), and a boolean is never read as a number (`epochs=true` is not 1)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_as_number(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic's lax mode coerces True to 1 and 1.0; strict mode would also refuse "5" and paths as strings.
        field = cls.model_fields[info.field_name]
        if not _accepts_bool(field.annotation) and _holds_bool(value):
            raise ValueError(f"expected a number, not a boolean (got {value!r})")
        return value


def _accepts_bool(annotation: Any) -> bool:
    if annotation is bool or annotation is Any:
        return True
    return any(_accepts_bool(argument) for argument in get_args(annotation))


def _holds_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return True
    return isinstance(value, (list, tuple)) and any(isinstance(item, bool) for item in value)


def _non_empty_path(value: Any) -> Any:
    """`Path("")` is the working directory: an empty or missing path must not silently mean "here"."""
    if value is None or (isinstance(value, str | Path) and str(value).strip() == ""):
        raise ValueError(f"expected a non-empty path (got {value!r}); use '.' for the working directory")
    return value


NonEmptyPath = Annotated[Path, BeforeValidator(_non_empty_path)]

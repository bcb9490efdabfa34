"""A sweep file in W&B's format (`program`, `command`, `method: grid`, `parameters`): read, checked, and its grid.

The same file a W&B server takes (`wandb sweep FILE`, then `wandb agent` on any machine); locally
`harness sweep run` runs it (`harness.launch.sweep`).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from harness.errors import UserError

# What `wandb agent` runs when a sweep file has no `command`.
DEFAULT_COMMAND = ("${env}", "${interpreter}", "${program}", "${args}")
# The top-level keys of W&B's sweep configuration; anything else is most likely a typo.
SWEEP_KEYS = frozenset(
    {
        "program",
        "command",
        "method",
        "parameters",
        "name",
        "description",
        "project",
        "entity",
        "metric",
        "early_terminate",
        "run_cap",
        "controller",
        "job",
        "image_uri",
        "scheduler",
    }
)
# Keys of a parameter that only make sense for random or Bayesian search.
DISTRIBUTION_KEYS = ("distribution", "min", "max", "mu", "sigma", "q", "probabilities", "a", "b")


# ---------------------------------------------------------------------------------------------------------
# The sweep file


@dataclass(frozen=True)
class Sweep:
    path: Path
    name: str  # the file's stem: names the log folder, so it must be a safe path component
    program: str | None
    command: tuple[str, ...]
    parameters: dict[str, tuple[Any, ...]]  # in file order; a `value` is a one-element tuple


def load_sweep(path: Path) -> Sweep:
    """Read and check a sweep file. Raises UserError naming the file and the field."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as error:
        raise UserError(f"{path}: cannot read the sweep file ({error.strerror})") from None
    except UnicodeDecodeError as error:
        raise UserError(
            f"{path}: not a text file (byte {error.start} is not UTF-8); a sweep file is YAML text"
        ) from None
    except yaml.YAMLError as error:
        raise UserError(f"{path}: not valid YAML ({getattr(error, 'problem', error)})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping with program, command, method and parameters")
    unknown = sorted(set(data) - SWEEP_KEYS)
    if unknown:
        raise UserError(f"{path}: {unknown[0]}: not a W&B sweep key; valid: {', '.join(sorted(SWEEP_KEYS))}")
    method = data.get("method")
    if method != "grid":
        raise UserError(f"{path}: method: only 'grid' can run locally (got {method!r})")
    program = data.get("program")
    if program is not None and not isinstance(program, str):
        raise UserError(f"{path}: program: expected a string such as 'harness' (got {program!r})")
    command = data.get("command", list(DEFAULT_COMMAND))
    if not isinstance(command, list) or not command or not all(isinstance(t, str) for t in command):
        raise UserError(f"{path}: command: expected a non-empty list of strings (got {command!r})")
    return Sweep(
        path=Path(path),
        name=Path(path).stem,
        program=program,
        command=tuple(command),
        parameters=read_parameters(path, data.get("parameters")),
    )


def read_parameters(path: Path, raw: Any) -> dict[str, tuple[Any, ...]]:
    if not isinstance(raw, dict) or not raw:
        raise UserError(f"{path}: parameters: expected a mapping of parameter names to values/value")
    parameters: dict[str, tuple[Any, ...]] = {}
    for name, spec in raw.items():
        where = f"{path}: parameters.{name}"
        if not isinstance(spec, dict):
            raise UserError(f"{where}: expected a mapping with `values: [...]` or `value: ...`")
        if "parameters" in spec:
            raise UserError(f"{where}: nested parameters are not supported by the harness CLI")
        distribution = [key for key in DISTRIBUTION_KEYS if key in spec]
        if distribution:
            raise UserError(f"{where}: {distribution[0]}: grid search needs `values` or `value`")
        if ("values" in spec) == ("value" in spec):
            raise UserError(f"{where}: give exactly one of `values: [...]` or `value: ...`")
        if "value" in spec:
            parameters[str(name)] = (spec["value"],)
            continue
        values = spec["values"]
        if not isinstance(values, list) or not values:
            raise UserError(f"{where}: values: expected a non-empty list (got {values!r})")
        parameters[str(name)] = tuple(values)
    return parameters


def grid_points(sweep: Sweep) -> list[dict[str, Any]]:
    """Every combination of the parameters' values, the first parameter varying slowest."""
    names = list(sweep.parameters)
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*sweep.parameters.values())]


def restrict(sweep: Sweep, only: Sequence[str]) -> Sweep:
    """The sweep with its grid cut to `name=value` selections (`--only`): one name given several times keeps
    each of those values, different names must all hold. Values are YAML, compared with the file's values
    (numbers as numbers), and must be among them: a typo is an error, not an empty sweep."""
    chosen: dict[str, list[Any]] = {}
    for item in only:
        name, equals, text = item.partition("=")
        name = name.strip()
        if not equals or not name:
            raise UserError(f"--only: {item!r} is not name=value (e.g. seed=0)")
        if name not in sweep.parameters:
            raise UserError(
                f"--only: {name!r} is not a parameter of {sweep.path}; parameters: {', '.join(sweep.parameters)}"
            )
        try:
            wanted = yaml.safe_load(text)
        except yaml.YAMLError:
            wanted = text
        matches = [value for value in sweep.parameters[name] if _same_value(value, wanted)]
        if not matches:
            values = ", ".join(render(value) for value in sweep.parameters[name])
            raise UserError(
                f"--only: {name}={text} is not in the grid of {sweep.path}; {name} takes {values}"
            )
        chosen.setdefault(name, []).extend(value for value in matches if value not in chosen.get(name, []))
    if not chosen:
        return sweep
    # Kept in the file's order, so the planned runs come in the same order as without --only.
    parameters = {
        name: tuple(value for value in values if name not in chosen or value in chosen[name])
        for name, values in sweep.parameters.items()
    }
    return dataclasses.replace(sweep, parameters=parameters)


def _same_value(value: Any, wanted: Any) -> bool:
    if isinstance(value, bool) or isinstance(wanted, bool):
        return value is wanted or str(value).lower() == str(wanted).lower()
    if isinstance(value, int | float) and isinstance(wanted, int | float):
        return math.isclose(value, wanted, rel_tol=1e-12, abs_tol=1e-12)
    return str(value) == str(wanted)


def render(value: Any) -> str:
    """A parameter value as the agent writes it into a command line (Python's str of the JSON value)."""
    return str(value)

"""A sweep file in W&B's format (`program`, `command`, `method: grid`, `parameters`): read, checked, and its grid.

The same file a W&B server takes (`wandb sweep FILE`, then `wandb agent` on any machine); locally
`harness sweep run` runs it (`harness.launch.sweep`).

A sweep file is untrusted input: it is read with bounds on its size, nesting, alias expansion and grid size,
and refuses duplicate keys and recursive anchors, each in one line naming the file (tests/test_sweep_hostile.py).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import stat
import unicodedata
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
# Bounds on what a sweep file may make the reader do. The shipped sweeps are under 4 KB, 40 nodes deep at most
# 4 and 3,072 grid points; the bounds are far above that and far below what takes minutes or gigabytes.
MAX_FILE_BYTES = 1 << 20
MAX_DEPTH = 64  # nesting of lists and mappings; PyYAML's composer recurses once per level
MAX_NODES = 100_000  # nodes with every alias expanded: a "billion laughs" file stops here, not in memory
MAX_POINTS = 10_000  # grid points (`--max-points` raises it); planning takes ~2 ms a point
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
    name = Path(path).stem
    if not name or any(unsafe(character) or character.isspace() for character in name):
        # The stem names the log folder and the SLURM job: a newline there would become a batch script line.
        # Quoted (repr): printed as is, the path itself would break the one-line error.
        raise UserError(f"{str(path)!r}: the file name must not contain spaces or control characters")
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO or a device would block or never end
            raise UserError(f"{path}: not a regular file; a sweep file is YAML text")
        with open(path, "rb") as handle:
            raw = handle.read(MAX_FILE_BYTES + 1)
    except OSError as error:
        raise UserError(f"{path}: cannot read the sweep file ({error.strerror})") from None
    if len(raw) > MAX_FILE_BYTES:
        raise UserError(f"{path}: over {MAX_FILE_BYTES} bytes; a sweep file is a short YAML text")
    try:
        data = parse_yaml(raw.decode(), path)
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


def unsafe(character: str) -> bool:
    """A control character or a line/paragraph separator: never part of a name or a batch script value."""
    return unicodedata.category(character) in ("Cc", "Cf", "Zl", "Zp")


# ---------------------------------------------------------------------------------------------------------
# YAML with bounds: PyYAML's safe loader builds what a file says, however large, deep or self-referential


class BoundedLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses deep nesting, recursive anchors, alias expansion beyond MAX_NODES and
    duplicate keys, each with a UserError naming the file and the line."""

    def __init__(self, text: str, path: Path) -> None:
        super().__init__(text)
        self.path = path
        self.depth = 0
        self.sizes: dict[int, int] = {}  # id(node) -> its node count with aliases expanded, once composed

    def refuse(self, node_or_mark: Any, what: str) -> UserError:
        mark = getattr(node_or_mark, "start_mark", node_or_mark)
        return UserError(f"{self.path}: line {mark.line + 1}: {what}")

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            target = self.anchors.get(event.anchor)
            if target is not None and id(target) not in self.sizes:
                raise self.refuse(event, f"*{event.anchor} refers to its own anchor (a recursive structure)")
            return super().compose_node(parent, index)
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.refuse(self.peek_event(), f"nested more than {MAX_DEPTH} levels deep")
        try:
            node = super().compose_node(parent, index)
        finally:
            self.depth -= 1
        if isinstance(node, yaml.MappingNode):
            children = [child for pair in node.value for child in pair]
        else:
            children = node.value if isinstance(node, yaml.SequenceNode) else []
        size = 1 + sum(self.sizes[id(child)] for child in children)
        if size > MAX_NODES:
            raise self.refuse(node, f"expands to over {MAX_NODES} values (aliases counted each time used)")
        self.sizes[id(node)] = size
        return node

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *defaults` merges keys on purpose
                key = self.construct_object(key_node, deep=deep)
                try:
                    earlier = first.get(key)
                except TypeError:
                    continue  # an unhashable key; the safe constructor refuses it itself
                if earlier is not None:
                    raise self.refuse(key_node, f"{key}: given twice (first on line {earlier}); keep one")
                first[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str, path: Path) -> Any:
    loader = BoundedLoader(text, path)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


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


def grid_size(sweep: Sweep) -> int:
    """The number of grid points, without expanding the grid."""
    return math.prod(len(values) for values in sweep.parameters.values())


def grid_points(sweep: Sweep, max_points: int = MAX_POINTS) -> list[dict[str, Any]]:
    """Every combination of the parameters' values, the first parameter varying slowest; a grid of over
    `max_points` points is refused before it is expanded."""
    if max_points < 1:
        raise UserError(f"--max-points: must be at least 1 (got {max_points})")
    if (size := grid_size(sweep)) > max_points:
        raise UserError(
            f"{sweep.path}: the grid has {size} points, over the maximum of {max_points}; "
            "cut it with --only or raise the maximum with --max-points"
        )
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

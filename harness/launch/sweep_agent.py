"""The command line `wandb agent` builds for one grid point of a sweep file, and the harness part of it."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import UserError
from harness.launch.sweep_file import Sweep, render

# ---------------------------------------------------------------------------------------------------------
# The command line `wandb agent` builds for one grid point
#
# As W&B documents them: `${env}` is /usr/bin/env, `${interpreter}` is python, `${program}` the sweep's
# `program`; `${args}` renders every parameter as `--name=value` (value as Python's str(), so booleans
# become True/False); `${args_no_boolean_flags}` renders true booleans as a bare `--name` and omits false
# ones (what a `--flag/--no-flag` CLI needs); `${args_no_hyphens}` is `name=value`; `${args_no_equals}` is
# `--name value`; `${args_json}` one JSON object and `${args_json_file}` the path of a file holding it;
# `${envvar:NAME}` (anywhere in a token) the environment variable, or NAME itself when unset. Parameter
# names are passed exactly as written, which is why the harness CLI accepts `--probe_epoch` and
# `--probe-epoch` alike.


def argument_macros(point: Mapping[str, Any]) -> dict[str, list[str]]:
    flags = [f"--{name}={render(value)}" for name, value in point.items()]
    no_booleans: list[str] = []
    for name, value in point.items():
        if isinstance(value, bool):
            no_booleans += [f"--{name}"] if value else []
        else:
            no_booleans.append(f"--{name}={render(value)}")
    return {
        "args": flags,
        "args_no_boolean_flags": no_booleans,
        "args_no_hyphens": [f"{name}={render(value)}" for name, value in point.items()],
        "args_no_equals": [token for name, value in point.items() for token in (f"--{name}", render(value))],
        "args_append_hydra": [f"+{name}={render(value)}" for name, value in point.items()],
        "args_override_hydra": [f"++{name}={render(value)}" for name, value in point.items()],
        "args_json": [json.dumps(dict(point))],
    }


def agent_command(
    sweep: Sweep,
    point: Mapping[str, Any],
    *,
    environ: Mapping[str, str] | None = None,
    json_dir: Path | None = None,
) -> list[str]:
    """The argv `wandb agent` would execute for this grid point.

    `json_dir` is where `${args_json_file}` is written (the agent uses its wandb/ folder; default: a
    folder under the system's temporary directory).
    """
    environ = os.environ if environ is None else environ
    macros = argument_macros(point)
    macros["env"] = ["/usr/bin/env"]
    macros["interpreter"] = ["python"]
    if sweep.program is not None:
        macros["program"] = [sweep.program]
    argv: list[str] = []
    for token in sweep.command:
        token = expand_envvars(token, environ)
        if token.startswith("${") and token.endswith("}"):
            name = token[2:-1]
            if name == "args_json_file":
                argv.append(str(write_args_json(point, sweep, json_dir)))
            elif name in macros:
                argv += macros[name]
            elif name == "program":
                raise UserError(f"{sweep.path}: program: missing, but command uses ${{program}}")
            else:
                known = ", ".join(f"${{{known}}}" for known in sorted([*macros, "args_json_file"]))
                raise UserError(f"{sweep.path}: command: unknown macro {token}; known: {known}")
        else:
            argv.append(token)
    return argv


def expand_envvars(token: str, environ: Mapping[str, str]) -> str:
    """`${envvar:NAME}` -> the variable's value, or NAME when it is unset (as the agent does)."""
    while (start := token.find("${envvar:")) >= 0:
        end = token.find("}", start)
        if end < 0:
            break
        name = token[start + len("${envvar:") : end]
        token = token[:start] + environ.get(name, name) + token[end + 1 :]
    return token


def write_args_json(point: Mapping[str, Any], sweep: Sweep, json_dir: Path | None) -> Path:
    json_dir = json_dir or Path(tempfile.gettempdir()) / "harness-sweeps" / sweep.name
    text = json.dumps(dict(point), sort_keys=True)
    path = json_dir / f"args-{hashlib.sha256(text.encode()).hexdigest()[:12]}.json"
    json_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@dataclass(frozen=True)
class HarnessCommand:
    """The part of an agent command line that the harness CLI parses, and env assignments before it."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


def harness_argv(command: Sequence[str], source: Path) -> HarnessCommand:
    """The arguments after the harness program in `command` (`harness ...` or `python -m harness.cli ...`).

    The local runner can only run the harness CLI; `env NAME=value` assignments before it are kept.
    """
    tokens = list(command)
    env: dict[str, str] = {}
    if tokens and Path(tokens[0]).name == "env":
        tokens = tokens[1:]
        while tokens and "=" in tokens[0] and not tokens[0].startswith("-"):
            name, _, value = tokens.pop(0).partition("=")
            env[name] = value
    if tokens and Path(tokens[0]).name == "harness":
        return HarnessCommand(tokens[1:], env)
    if (
        len(tokens) >= 3
        and Path(tokens[0]).name.startswith("python")
        and tokens[1:3] == ["-m", "harness.cli"]
    ):
        return HarnessCommand(tokens[3:], env)
    raise UserError(
        f"{source}: command: expected the harness CLI (program: harness with ${{program}}, or "
        f"${{interpreter}} -m harness.cli), got {' '.join(command)!r}"
    )

"""`harness run` and `harness plasticity`: their options are the signatures of the request builders in
`harness.launch.command_line` (declared once there, shared with the sweep planner); each command turns its
options into the typed request and hands it to `harness.launch.training`, imported only then (it imports
the config and, to train, torch).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from harness.cli.common import call, setup_logging
from harness.launch.command_line import ProbeRequest, RunRequest, probe_request, run_request


def run_action(request: RunRequest) -> int:
    from harness.launch import training

    return training.run(request)


def plasticity_action(request: ProbeRequest) -> int:
    from harness.launch import training

    return training.plasticity(request)


def training_command(build: Callable[..., Any], action: Callable[[Any], int]) -> Callable[..., None]:
    """A Typer command with `build`'s options that runs `action(build(**options))`."""

    def command(**options: Any) -> None:
        setup_logging(options.get("verbose", False))
        call(lambda: action(build(**options)))

    command.__signature__ = inspect.signature(build)  # type: ignore[attr-defined]
    command.__doc__ = build.__doc__
    return command


run = training_command(run_request, run_action)
plasticity = training_command(probe_request, plasticity_action)

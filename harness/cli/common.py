"""Pieces every `harness` command shares: user errors as one line, logging set-up, the exit.

Option spellings (every dashed option also underscored, for W&B sweep agents) and `--verbose` come from
`harness.launch.command_line.option`, where the training commands' grammar is declared.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import NoReturn

import typer

from harness.errors import UserError


def call(work: Callable[[], int | None]) -> NoReturn:
    """Run a command's library call: its exit code becomes the process's; a UserError is one line on stderr
    and exit code 2, never a traceback."""
    try:
        code = work()
    except UserError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
    raise typer.Exit(code or 0)


def setup_logging(verbose: bool = False) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    rank = os.environ.get("RANK")
    prefix = f"[rank {rank}] " if rank is not None and os.environ.get("WORLD_SIZE", "1") != "1" else ""
    logging.basicConfig(
        level=level, format=f"%(asctime)s {prefix}%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    for noisy in ("wandb", "urllib3", "matplotlib", "PIL", "fontTools"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

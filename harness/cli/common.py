"""Pieces every `harness` command shares: option spellings, user errors as one line, logging set-up.

Every option has a dashed and an underscored spelling (`--init-sparsity` and `--init_sparsity`)
because W&B sweep agents pass parameter names exactly as the sweep file writes them.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer

from harness.errors import UserError


def option(*names: str, help: str, **kwargs: Any) -> Any:
    """A Typer option under every given name plus the underscored spelling of each dashed one."""
    spellings = list(names)
    spellings += [name.replace("-", "_").replace("__", "--", 1) for name in names if "-" in name[2:]]
    return typer.Option(*spellings, help=help, **kwargs)


@contextmanager
def user_errors() -> Iterator[None]:
    """A user's mistake is one line on stderr and exit code 2; never a traceback."""
    try:
        yield
    except UserError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None


def setup_logging(verbose: bool = False) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    rank = os.environ.get("RANK")
    prefix = f"[rank {rank}] " if rank is not None and os.environ.get("WORLD_SIZE", "1") != "1" else ""
    logging.basicConfig(
        level=level, format=f"%(asctime)s {prefix}%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    for noisy in ("wandb", "urllib3", "matplotlib", "PIL", "fontTools"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")]

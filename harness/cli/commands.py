"""The table of `harness` sub-commands: which command is which function, and the app-wide rules (usage
errors as one line, stop signals released for commands that do not train).

Every command lives in a module of its group (`training`, `sweep`, `inference`, `results`); each turns its
options into a typed request and calls one library function. Nothing imported here imports torch or the
config: `harness --help`, `harness run --help` and a mistyped option answer without them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import typer

from harness.cli import inference, results, sweep, training
from harness.engine import signals
from harness.errors import UserError
from harness.launch.command_line import TRAINING_COMMANDS, check_set_form


class OneLineUsageErrors(typer.core.TyperGroup):
    """Command-line mistakes (an unknown option, a missing value) as one line on stderr and exit code 2,
    like every other user error, instead of click's usage box."""

    def make_context(self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any) -> Any:
        if args[:1] and args[0] in TRAINING_COMMANDS:
            try:
                check_set_form(args[1:])
            except UserError as error:
                typer.echo(f"error: {error}", err=True)
                raise typer.Exit(USAGE_ERROR_EXIT_CODE) from None
        with one_line_usage_errors():
            return super().make_context(info_name, args, parent=parent, **extra)

    def invoke(self, ctx: Any) -> Any:
        with one_line_usage_errors():
            return super().invoke(ctx)


# Typer bundles its own click: its errors derive from typer.TyperException, not from the `click` package's.
USAGE_ERROR_EXIT_CODE = 2


@contextmanager
def one_line_usage_errors() -> Iterator[None]:
    try:
        yield
    except typer.TyperException as error:
        if getattr(error, "exit_code", None) != USAGE_ERROR_EXIT_CODE:
            raise
        if type(error).__name__ == "NoArgsIsHelpError":  # a group without its command: the help is shown
            raise typer.Exit(USAGE_ERROR_EXIT_CODE) from None
        typer.echo(f"error: {describe_usage_error(error)}", err=True)
        raise typer.Exit(USAGE_ERROR_EXIT_CODE) from None


def describe_usage_error(error: Any) -> str:
    """`harness run: no such option --lrr (did you mean --lr?)`."""
    names: list[str] = []
    context = getattr(error, "ctx", None)
    while context is not None:
        names.append(context.info_name if context.parent is not None else "harness")
        context = context.parent
    where = " ".join(reversed(names)) or "harness"
    if hasattr(error, "possibilities") and hasattr(error, "option_name"):  # an unknown option
        near = list(error.possibilities or [])  # closest first
        hint = f" (did you mean {near[0]}?)" if near else ""
        return f"{where}: no such option {error.option_name}{hint}"
    message = " ".join(error.format_message().split())
    return f"{where}: {message[:1].lower()}{message[1:]}"


# The app's help is its callback's docstring.
app = typer.Typer(
    cls=OneLineUsageErrors, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False
)


@app.callback()
def harness(context: typer.Context) -> None:
    """Sparse-training research harness: GraNet, the pruning-plasticity study and its baselines."""
    # A training command keeps stop signals deferred until its trainer takes them over (it then stops with
    # a checkpoint, exit 3); any other command has created nothing yet and may be stopped as usual from here.
    if context.invoked_subcommand not in TRAINING_COMMANDS:
        stopped = signals.release_stop_signals()
        if stopped is not None:
            raise typer.Exit(stopped)


app.command("run")(training.run)
app.command("plasticity")(training.plasticity)
app.add_typer(sweep.app, name="sweep")
app.command("figures")(results.figures)
app.command("claims")(results.claims)
app.command("runs")(results.runs)
app.command("wandb")(results.wandb_offline)
app.add_typer(inference.bench_app, name="bench")
app.command("export")(inference.export)

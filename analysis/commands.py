"""`harness runs`, `harness claims` and `harness figures` as library calls: the command's output written to
`out`, an exit code back, a UserError (one line, exit 2) for anything the user can fix.

Each imports what it draws on only when called: listing runs needs pandas, figures need matplotlib, and
none of them needs torch.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from harness.errors import UserError

DEFAULT_ROOTS = (Path("runs"),)


def runs(
    roots: Sequence[Path] | None,
    where: Sequence[str] | None,
    *,
    output_format: str = "table",
    columns: str | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """The runs under `roots`, filtered by key=value items, in one of `listing.FORMATS`, with the comma-
    separated `columns` (default: those that tell the listed runs apart). A filter value no run has gets a
    note on `err` naming the closest values, so a typo is not mistaken for "no such runs"."""
    from analysis.listing import FORMATS, list_runs, parse_columns, render

    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    if output_format not in FORMATS:
        raise UserError(f"--format: {output_format!r} is not a format; use one of {', '.join(FORMATS)}")
    chosen = parse_columns(columns)  # a bad column fails before the store is read
    table = list_runs(roots or DEFAULT_ROOTS, where)
    for note in table.attrs.get("notes", ()):
        err.write(f"note: {note}\n")
    out.write(render(table, output_format, chosen) + "\n")
    return 0


def claims(roots: Sequence[Path] | None, report: Path | None, out: TextIO | None = None) -> int:
    """The claims report on `out`, or written to the file `report` (its path on `out`)."""
    from analysis.claims import evaluate_claims, to_markdown, write_claims
    from analysis.runs import load_runs

    out = sys.stdout if out is None else out
    if report is not None and report.is_dir():
        raise UserError(
            f"--out {report}: is a directory; give the report's file name, e.g. {report}/claims.md"
        )
    loaded = load_runs(list(roots or DEFAULT_ROOTS))
    if loaded.empty:
        raise UserError(f"claims: no completed runs under {', '.join(map(str, roots or ['runs']))}")
    if report is None:
        out.write(to_markdown(evaluate_claims(loaded), loaded))
        return 0
    try:
        path = write_claims(loaded, report)
    except OSError as error:
        raise UserError(f"--out {report}: cannot write the report ({error.strerror})") from None
    out.write(f"{path}\n")
    return 0


def figures(
    roots: Sequence[Path] | None,
    directory: Path,
    *,
    wandb_project: str | None = None,
    dynamics_run: str | None = None,
    out: TextIO | None = None,
) -> int:
    """Every figure and table the runs (under `roots`, or of a W&B project) support, into `directory`."""
    from analysis.figures import write_figures
    from analysis.runs import load_curves, load_runs

    out = sys.stdout if out is None else out
    if wandb_project is not None and roots:
        raise UserError("figures: give run roots or --wandb, not both")
    if wandb_project is not None:
        import wandb

        api = wandb.Api()
        loaded = load_runs(wandb_project=wandb_project, api=api)
        loader = functools.partial(load_curves, api=api)
    else:
        loaded = load_runs(list(roots or DEFAULT_ROOTS))
        loader = load_curves
    if loaded.empty:
        raise UserError(f"figures: no completed runs under {', '.join(map(str, roots or ['runs']))}")
    report = write_figures(loaded, directory, curves_loader=loader, dynamics_run=dynamics_run)
    lines = [
        f"wrote {name}: {', '.join(str(path) for path in paths)}" for name, paths in report.written.items()
    ]
    lines += [f"skipped {name}: {reason}" for name, reason in report.skipped.items()]
    lines += [f"wrote claims: {report.claims}", str(report.index)]
    out.write("\n".join(lines) + "\n")
    return 0

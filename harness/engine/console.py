"""What a person watching a run sees: a rich progress bar on a terminal, plain log lines otherwise."""

from __future__ import annotations

import logging
import sys
from typing import Any

log = logging.getLogger("harness.engine.loop")


class Console:
    """Fed every metrics record of the main process; renders progress and one line per epoch."""

    def __init__(
        self,
        name: str,
        *,
        total_steps: int,
        start_step: int,
        interactive: bool | None = None,
        terminal: Any = None,
    ):
        """`terminal`: the rich Console to draw on (default: one on stderr)."""
        self.name = name
        self.total_steps = total_steps
        self.interactive = sys.stderr.isatty() if interactive is None else interactive
        self._progress: Any = None
        self._task: Any = None
        if self.interactive:
            from rich.console import Console as RichConsole
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            console = terminal if terminal is not None else RichConsole(stderr=True)
            self._width = console.width
            # What one watches comes first, at fixed widths: bar, step count, ETA, then loss and val; the run
            # name comes last and is the first thing cut, so an 80-column terminal keeps every live number.
            self._progress = Progress(
                BarColumn(bar_width=BAR_WIDTH),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[status]}"),
                TextColumn("[bold]{task.description}"),
                console=console,
                transient=False,
            )
            self._progress.start()
            shown, _ = fit_line(name, "", total_steps, self._width)
            self._task = self._progress.add_task(shown, total=total_steps, completed=start_step, status="")

    def record(self, record: dict[str, Any]) -> None:
        kind = record.get("kind")
        if kind == "epoch":
            line = describe_epoch(record)
            if self.interactive:
                shown, status = fit_line(self.name, line, self.total_steps, self._width)
                self._progress.update(self._task, completed=record["step"], description=shown, status=status)
            else:
                log.info("%s %s", self.name, line)
        elif kind == "train" and self.interactive:
            self._progress.update(self._task, completed=record["step"])

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def describe_epoch(record: dict[str, Any]) -> str:
    """The epoch's numbers, most watched first (a narrow terminal cuts the end): loss, val, epoch, test, ..."""
    parts = [f"loss {record['train/loss']:.4f}"]
    if record.get("val/acc") is not None:
        parts.append(f"val {record['val/acc']:.4f}")
    parts.append(f"epoch {record['epoch']}")
    parts.append(f"test {record['test/acc']:.4f}")
    parts.append(f"density {record['density']:.4f}")
    parts.append(f"lr {record['lr']:.4g}")
    return " | ".join(parts)


BAR_WIDTH = 20
ETA_WIDTH = 7  # rich's "0:01:23"
MIN_NAME = 6  # a shorter stub of a run name says nothing: drop it instead


def fit_line(name: str, status: str, total_steps: int, width: int) -> tuple[str, str]:
    """(name, status) cut to fit one line of `width` columns beside the bar, the step count and the ETA.

    The status (loss, val, epoch, ...) comes first and keeps its room; the name, drawn after it, is cut first
    (keeping its start, which names method, arch and dataset) and dropped when under MIN_NAME characters fit;
    only then is the end of the status cut.
    """
    count = 2 * len(str(total_steps)) + 1
    room = width - BAR_WIDTH - count - ETA_WIDTH - 4 - 1  # one space between columns, one spare
    left = room - len(status)
    if len(name) > left:
        name = _cut(name, left) if left >= MIN_NAME else ""
    if len(name) + len(status) > room:
        status = _cut(status, max(0, room - len(name)))
    return name, status


def _cut(text: str, size: int) -> str:
    if len(text) <= size:
        return text
    return text[: max(0, size - 1)] + "…" if size > 0 else ""


def summary_line(summary: dict[str, Any]) -> str:
    """The one line at the end of a run that says how it went (a run's extension may say it its own way)."""
    name = summary.get("run_id", "run")
    parts = [f"test acc {_number(summary.get('test_acc'))}"]
    if summary.get("test_acc_at_best_val") is not None:
        parts.append(f"at best val {_number(summary['test_acc_at_best_val'])}")
    parts += [f"density {_number(summary.get('density'))}", wall_clock(summary)]
    return f"{name}: done | " + " | ".join(parts)


def _number(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}"


def wall_clock(summary: dict[str, Any]) -> str:
    """The summary's wall time as the closing lines show it."""
    seconds = summary.get("wall_time_s")
    if seconds is None:
        return "wall -"
    minutes, rest = divmod(round(seconds), 60)
    return f"wall {minutes}m{rest:02d}s" if minutes else f"wall {rest}s"

"""What a person watching a run sees: a rich progress bar on a terminal, plain log lines otherwise."""

from __future__ import annotations

import logging
import sys
from typing import Any

log = logging.getLogger("harness.train")


class Console:
    """Fed every metrics record of the main process; renders progress and one line per epoch."""

    def __init__(self, name: str, *, total_steps: int, start_step: int, interactive: bool | None = None):
        self.name = name
        self.total_steps = total_steps
        self.interactive = sys.stderr.isatty() if interactive is None else interactive
        self._progress: Any = None
        self._task: Any = None
        if self.interactive:
            from rich.console import Console as RichConsole
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[status]}"),
                TimeRemainingColumn(),
                console=RichConsole(stderr=True),
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task(name, total=total_steps, completed=start_step, status="")

    def record(self, record: dict[str, Any]) -> None:
        kind = record.get("kind")
        if kind == "epoch":
            line = describe_epoch(record)
            if self.interactive:
                self._progress.update(self._task, completed=record["step"], status=line)
            else:
                log.info("%s %s", self.name, line)
        elif kind == "train" and self.interactive:
            self._progress.update(self._task, completed=record["step"])

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def describe_epoch(record: dict[str, Any]) -> str:
    parts = [f"epoch {record['epoch']}", f"loss {record['train/loss']:.4f}"]
    if record.get("val/acc") is not None:
        parts.append(f"val {record['val/acc']:.4f}")
    parts.append(f"test {record['test/acc']:.4f}")
    parts.append(f"density {record['density']:.4f}")
    parts.append(f"lr {record['lr']:.4g}")
    return " | ".join(parts)

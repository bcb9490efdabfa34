"""Stop requests that arrive while a training command starts up, before the loop's own handler exists.

Importing torch and building the session takes seconds; a SIGTERM in that window (a scheduler
preempting, a sweep runner stopping) used to kill the process by signal 15, which launchers report as
"killed" rather than "resumable". The CLI installs `defer_stop_signals` first thing, so such a signal is
only noted here; the trainer's stop flag starts from `stop_requested()` and the run stops (exit code 3)
before its first step.
"""

from __future__ import annotations

import signal
from typing import Any

_received: list[int] = []


def defer_stop_signals() -> None:
    """Note SIGTERM and SIGINT instead of dying; a second Ctrl-C still interrupts at once."""

    def note(signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and _received.count(signal.SIGINT):
            raise KeyboardInterrupt
        _received.append(signum)

    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, note)


def stop_requested() -> bool:
    """Whether a stop signal arrived while deferred (it stays requested for the rest of the process)."""
    return bool(_received)

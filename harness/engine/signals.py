"""Stop requests that arrive while a command starts up, before anything (or the loop's own handler) exists.

Importing typer, then torch, and building the session takes seconds; a SIGTERM in that window (a scheduler
preempting, a sweep runner stopping) used to kill the process by signal 15, which launchers report as
"killed" rather than "resumable". The entry point (`harness.cli.main`) calls `defer_stop_signals` on its
first line, so such a signal is only noted here. Then either:

- a command that computes nothing of its own (listing, help, a usage error) calls `release_stop_signals`
  before it starts: a stop noted so far ends the process with `stop_exit_code` (130 for Ctrl-C, 143 for
  SIGTERM, as a shell reports a death by that signal) before anything is written, and later signals act
  as usual;
- a training command keeps them deferred: the trainer's stop flag starts from `stop_requested()`, so the
  run stops before its first step with its checkpoint (exit code 3).

This module imports nothing but the standard library: it runs before anything heavy is imported.
"""

from __future__ import annotations

import signal
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

_received: list[int] = []
_previous: dict[int, Any] = {}


def defer_stop_signals() -> None:
    """Note SIGTERM and SIGINT instead of dying; a second Ctrl-C still interrupts at once."""

    def note(signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and _received.count(signal.SIGINT):
            raise KeyboardInterrupt
        _received.append(signum)

    for number in STOP_SIGNALS:
        previous = signal.signal(number, note)
        _previous.setdefault(number, previous)


def stop_requested() -> bool:
    """Whether a stop signal arrived while deferred (it stays requested for the rest of the process)."""
    return bool(_received)


def stop_exit_code() -> int | None:
    """128 + the first deferred stop signal (143 SIGTERM, 130 SIGINT), or None when none arrived."""
    return 128 + _received[0] if _received else None


def release_stop_signals() -> int | None:
    """Give SIGTERM and SIGINT back their handlers from before `defer_stop_signals`.

    Returns `stop_exit_code()`: when a stop arrived meanwhile, the caller must exit with it before doing
    anything, since from here on a new signal acts as usual and the noted one would otherwise be lost.
    """
    for number, handler in _previous.items():
        signal.signal(number, handler)
    _previous.clear()
    return stop_exit_code()

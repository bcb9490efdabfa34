"""Stop requests that arrive while a command starts up, before anything (or the loop's own handler) exists.

Importing typer, then torch, and building the session takes seconds; a SIGTERM in that window (a scheduler
preempting, a sweep runner stopping) used to kill the process by signal 15, which launchers report as
"killed" rather than "resumable". The entry point (`harness.cli.main`) calls `defer_stop_signals` on its
first line, so such a signal is only noted here. Then either:

- a training command keeps them deferred: the trainer's stop flag starts from `stop_requested()`, so the
  run stops before its first step with its checkpoint (exit code 3);
- any other command calls `release_stop_signals` before it starts its work: a stop noted so far ends
  the process with `stop_exit_code` (130 for Ctrl-C, 143 for SIGTERM, the codes a shell reports for a
  death by those signals) before anything is written; later, Ctrl-C interrupts as usual and SIGTERM
  exits 143.

This module imports nothing but the standard library: it runs before anything heavy is imported.
"""

from __future__ import annotations

import signal
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

_received: list[int] = []
_previous: dict[int, Any] = {}
_handed_over: list[bool] = []


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


def hand_over_stop_signals() -> None:
    """The training code answers the deferred stop from here (a checkpoint and exit code 3, or a run that
    was already complete): `stop_exit_code` no longer turns the command's own exit code into 130/143."""
    _handed_over.append(True)


def stop_exit_code() -> int | None:
    """128 + the first deferred stop signal (143 SIGTERM, 130 SIGINT), or None when none arrived or the
    training code has taken the stop over."""
    return 128 + _received[0] if _received and not _handed_over else None


def release_stop_signals() -> int | None:
    """End the deferral, for a command that has not created anything yet.

    Returns `stop_exit_code()`: when a stop arrived meanwhile, the caller must exit with it before doing
    anything. From here Ctrl-C acts as before `defer_stop_signals` (Python's KeyboardInterrupt), and a
    SIGTERM that would have killed the process ends it with exit code 143 instead (`SystemExit`, so
    `finally` blocks still run and launchers see an exit code, not a death by signal).
    """
    for number, handler in _previous.items():
        if number == signal.SIGTERM and handler == signal.SIG_DFL:
            handler = _exit_on_stop
        signal.signal(number, handler)
    _previous.clear()
    return stop_exit_code()


def _exit_on_stop(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)

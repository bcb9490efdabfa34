"""The `harness` command: its entry point here, the table of sub-commands in `harness.cli.commands`.

`main` is the console script and `python -m harness.cli`. It defers SIGTERM and SIGINT on its first line,
before anything heavy is imported (`harness.engine.signals`), so a stop during start-up never kills the
process by signal. Exit codes:

- 0 done; 1 a failed run (or sweep run); 2 a user error (one line on stderr, nothing created);
- 3 a training run stopped by a signal after it created its run directory (checkpointed, resumable);
- 130 (Ctrl-C) / 143 (SIGTERM): stopped before the command created anything.

This module imports only `sys` at import time: `main` defers the signals before its first import of ours.
"""

from __future__ import annotations

import sys

# Exit codes with which a command may end while a stop signal it deferred is pending, without having acted
# on it: they become 128 + the signal. (3 is the training run's own answer to the stop; 1 a failure.)
UNANSWERED_STOP_CODES = (0, 2, None)


def main() -> None:
    from harness.engine import signals

    signals.defer_stop_signals()
    from harness.launch.command_line import TRAINING_COMMANDS

    if sys.argv[1:2] and sys.argv[1] in TRAINING_COMMANDS:
        from harness.launch.torchrun import die_with_torchrun

        die_with_torchrun()
    from harness.cli.commands import app

    try:
        app()
    except SystemExit as finished:
        stopped = signals.stop_exit_code()
        if stopped is not None and finished.code in UNANSWERED_STOP_CODES:
            raise SystemExit(stopped) from None
        raise

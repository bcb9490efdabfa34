"""Start sweep jobs by forking a process that has already imported the harness, instead of a new Python.

A new `python -m harness.cli` spends ~3.5 s importing torch and the harness before it computes anything.
The CPU studies are hundreds of short runs (a plasticity probe trains for ~10 s), so those imports were
a third of a CPU reproduction's time. Here the sweep runner imports the training code once; each job is
then a `fork()` of the runner that redirects its standard streams to the job's log, takes the
environment a subprocess would have had, and calls the same CLI entry point with the job's arguments.
The child is an ordinary process for the runner: it has a pid, an exit code, and receives the signals a
subprocess would (SIGTERM checkpoints and exits 3), so supervision is unchanged.

Why this is safe:
- The runner never computes with torch, so it has no intra-op thread pool and no OpenMP team that a
  child would inherit half-alive; a fork is taken from a single-threaded process.
- A run's numbers do not depend on how it was started: each run pins `torch.set_num_threads(run.threads)`
  and seeds every generator itself (tests/test_prewarm.py compares forked and fresh-process runs bit for
  bit).
- The child never returns into the runner's code: it leaves through `os._exit` with the CLI's exit code,
  so the runner's `finally` blocks, atexit handlers and buffered output never run twice.

Only on Linux (fork with PR_SET_PDEATHSIG); elsewhere the sweep starts a fresh interpreter per job.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

_PR_SET_PDEATHSIG = 1
_WAIT_SLICE_SECONDS = 0.05


def available() -> bool:
    return sys.platform.startswith("linux") and hasattr(os, "fork")


class ForkedProcess:
    """The runner's handle on a forked job, with the part of `subprocess.Popen`'s interface it uses."""

    def __init__(self, pid: int, argv: Sequence[str]) -> None:
        self.pid = pid
        self.args = list(argv)
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid == self.pid:
                self.returncode = os.waitstatus_to_exitcode(status)  # -N for signal N, as Popen reports
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if timeout is None:
            while self.returncode is None:
                _, status = os.waitpid(self.pid, 0)
                self.returncode = os.waitstatus_to_exitcode(status)
            return self.returncode
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(self.args, timeout)
            time.sleep(_WAIT_SLICE_SECONDS)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:  # never signal a pid that was reaped and may have been reused
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def forking_launcher(
    entry: Callable[[], Any],
    environment: Callable[[Any], Mapping[str, str]],
) -> Callable[[Any], ForkedProcess]:
    """A sweep launcher: `launch(job)` forks a child that runs `entry()` with `sys.argv` set to the job's
    command line and `os.environ` set to `environment(job)`, its output appended to `job.log_path`.

    `entry` runs the CLI (`harness.launch.sweep_commands.harness_program`: it reads sys.argv and may raise
    SystemExit, as a console script does). The training modules are imported here, once, so that no child imports them again.
    """
    # Constructing the first torch.optim optimizer imports torch._dynamo (~2.4 s): import it here, once.
    import torch._dynamo  # noqa: F401

    import harness.launch.training  # noqa: F401  (the run and plasticity commands' library)
    import harness.studies.probe  # noqa: F401  (the training code, data, models and sparse core)

    libc = ctypes.CDLL(None, use_errno=True)

    def launch(job: Any) -> ForkedProcess:
        log_path = Path(job.log_path)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        env = dict(environment(job))
        with open(log_path, "a") as log_file:
            stamp = datetime.now().isoformat(timespec="seconds")
            log_file.write(f"=== start {stamp}: harness {' '.join(job.argv)}\n")
            log_file.flush()
            # Whatever the runner has buffered would otherwise be written once more by the child.
            sys.stdout.flush()
            sys.stderr.flush()
            parent = os.getpid()
            pid = os.fork()
            if pid == 0:  # the child: never returns
                _run_child(entry, list(job.argv), env, log_file.fileno(), parent, libc)
        return ForkedProcess(pid, job.argv)

    return launch


def _run_child(
    entry: Callable[[], Any], argv: list[str], env: dict[str, str], log_fd: int, parent: int, libc: Any
) -> None:
    code = 1
    try:
        # Die with the runner as a subprocess of it would (SIGTERM: the run checkpoints and exits 3).
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        # The runner's handlers belong to the runner; these are a fresh interpreter's.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if os.getppid() != parent:  # the runner died before the request took effect
            os._exit(128 + signal.SIGTERM)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        # New stream objects on the new descriptors, buffered as a fresh interpreter's would be with its
        # output in a file (the runner's may be terminals, or wrappers that do not write to fds 1 and 2).
        sys.stdout = sys.__stdout__ = os.fdopen(1, "w", closefd=False)
        sys.stderr = sys.__stderr__ = os.fdopen(2, "w", buffering=1, closefd=False)
        os.environ.clear()
        os.environ.update(env)
        # The runner's logging handlers and level are the runner's; the run configures its own.
        for handler in list(logging.root.handlers):
            logging.root.removeHandler(handler)
        logging.root.setLevel(logging.WARNING)
        sys.argv = ["harness", *argv]
        try:
            entry()
            code = 0
        except SystemExit as stop:
            code = _exit_code(stop.code)
    except BaseException:  # anything the CLI let through: reported in the job's log, as Python would
        with contextlib.suppress(Exception):
            traceback.print_exc()
        code = 1
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _exit_code(code: object) -> int:
    """SystemExit's code as the interpreter turns it into an exit status."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    sys.stderr.write(f"{code}\n")  # what the interpreter writes for SystemExit("message")
    return 1

"""Running a sweep's jobs as child processes: at most N at once, each once the runs it needs have completed.

- a run starts only when the runs it needs (base -> control -> probe) have completed, and is skipped,
  and reported, when one of them failed;
- a completed run (`<run_dir>/status` reads `completed`) is skipped without starting a process;
- one failure never stops the others;
- on GPUs (`harness.launch.gpus`), each run starts on the least occupied GPU and sees only that one;
- children die with the runner (SIGTERM on Linux, so they checkpoint first), which keeps a re-run after
  `kill -9` from racing with leftovers; a stopped runner asks its children to checkpoint and stop.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from harness.launch.gpus import GpuSlots
from harness.launch.sweep_plan import Job
from harness.launch.torchrun import die_with_parent
from harness.store.rundir import is_completed
from harness.store.rundir import read_status_or_damaged as read_status

log = logging.getLogger("harness.launch.sweep")

POLL_SECONDS = 0.2


# ---------------------------------------------------------------------------------------------------------
# Running jobs


class Process(Protocol):
    pid: int

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def send_signal(self, sig: int) -> None: ...

    def kill(self) -> None: ...


Launcher = Callable[[Job], Process]

# States of a job in the final report.
ALREADY = "already complete"
COMPLETED = "completed"
FAILED = "failed"
BLOCKED = "skipped: a run it needs failed"
STOPPED = "stopped: resumable"
STATES = (ALREADY, COMPLETED, FAILED, BLOCKED, STOPPED)


@dataclass
class Outcome:
    job: Job
    state: str
    detail: str = ""


def threads_per_worker(workers: int) -> int:
    """CPU threads each worker's libraries may start so that N workers do not oversubscribe the cores.

    This bounds OpenMP/MKL pools outside PyTorch's intra-op pool (NumPy, data loading); PyTorch's own
    count is the run's `run.threads`, set by the run itself, so `--workers` never changes a result."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // workers)


def child_environment(workers: int, job: Job, base: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    threads = str(threads_per_worker(workers))
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(name, threads)  # a user's explicit setting wins
    if job.placement is not None:
        env.update(job.placement.environment())
    env.update(dict(job.env))  # the sweep file's own `env NAME=value` wins, as it would under a W&B agent
    return env


def subprocess_launcher(workers: int) -> Launcher:
    preexec = die_with_parent()

    def launch(job: Job) -> Process:
        job.log_path.parent.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "harness.cli", *job.argv]
        with open(job.log_path, "a") as log_file:
            stamp = datetime.now().isoformat(timespec="seconds")
            log_file.write(f"=== start {stamp}: harness {' '.join(job.argv)}\n")
            log_file.flush()
            return subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=child_environment(workers, job),
                preexec_fn=preexec,  # safe: the runner starts no threads (the progress bar refreshes inline)
            )

    return launch


class Progress:
    """One bar over the whole sweep on a terminal; otherwise one log line per finished job."""

    def __init__(self, name: str, total: int, done: int, *, interactive: bool | None = None) -> None:
        self.name = name
        self.total = total
        self.interactive = sys.stderr.isatty() if interactive is None else interactive
        self._bar: Any = None
        if self.interactive:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as RichProgress

            # No refresh thread: children are started with a preexec_fn, which must not race with threads.
            self._bar = RichProgress(
                TextColumn("[bold]sweep {task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[status]}"),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                auto_refresh=False,
            )
            self._bar.start()
            self._task = self._bar.add_task(name, total=total, completed=done, status="")

    def update(self, done: int, running: int, failed: int, finished: Outcome | None = None) -> None:
        status = f"running {running}, failed {failed}"
        if self._bar is not None:
            self._bar.update(self._task, completed=done, status=status)
            self._bar.refresh()
        elif finished is not None:
            log.info(
                "sweep %s [%d/%d] %s %s (%s)",
                self.name,
                done,
                self.total,
                finished.state,
                finished.job.name,
                status,
            )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


class Stop(Exception):
    """The runner was asked to stop (SIGINT or SIGTERM)."""


def execute(
    jobs: Sequence[Job],
    *,
    workers: int,
    launch: Launcher,
    progress: Progress | None = None,
    poll_seconds: float = POLL_SECONDS,
    gpus: GpuSlots | None = None,
) -> tuple[list[Outcome], bool]:
    """Run the jobs on `workers` slots, each once its needs have completed (and, with `gpus`, once a GPU
    has room for it: the job is launched with its `placement`).

    Returns the outcomes in job order and whether the runner was stopped (SIGINT/SIGTERM) before the end;
    then running children were asked to checkpoint and stop, and jobs not started are reported as stopped.
    """
    outcomes: dict[Path, Outcome] = {}
    for job in jobs:
        if is_completed(job.run_dir):
            outcomes[job.run_dir] = Outcome(job, ALREADY)
    pending = deque(job for job in jobs if job.run_dir not in outcomes)
    running: dict[Path, tuple[Job, Process]] = {}

    def report(finished: Outcome | None = None) -> None:
        if progress is not None:
            counts = Counter(outcome.state for outcome in outcomes.values())
            progress.update(len(outcomes), len(running), counts[FAILED] + counts[BLOCKED], finished)

    report()
    stopped = False
    try:
        while pending or running:
            start_ready(pending, running, outcomes, workers, launch, report, gpus)
            finished = collect_finished(running)
            for outcome in finished:
                if gpus is not None:
                    gpus.release(outcome.job.run_dir)
                outcomes[outcome.job.run_dir] = outcome
                report(outcome)
            if not finished and running:
                time.sleep(poll_seconds)
            elif not finished and not running and pending:
                # What is left needs runs that are neither complete nor part of this sweep.
                for job in pending:
                    outcomes[job.run_dir] = Outcome(job, BLOCKED, "needs a run this sweep does not produce")
                pending.clear()
    except (KeyboardInterrupt, Stop):
        stopped = True
        for outcome in stop_all(running):
            outcomes[outcome.job.run_dir] = outcome
        for job in pending:
            outcomes[job.run_dir] = Outcome(job, STOPPED, "not started: the sweep was stopped")
    return [outcomes[job.run_dir] for job in jobs], stopped


def start_ready(
    pending: deque[Job],
    running: dict[Path, tuple[Job, Process]],
    outcomes: dict[Path, Outcome],
    workers: int,
    launch: Launcher,
    report: Callable[[Outcome | None], None],
    gpus: GpuSlots | None = None,
) -> None:
    """Start every pending job whose needs completed (while slots are free, and with `gpus` while GPUs
    have room for it); block those whose needs failed."""
    for job in list(pending):
        failed = failed_need(job, outcomes)
        if failed is not None:
            pending.remove(job)
            outcomes[job.run_dir] = Outcome(job, BLOCKED, f"needs {failed}")
            report(outcomes[job.run_dir])
        elif len(running) < workers and all(need_completed(need, outcomes, running) for need in job.needs):
            placement = None if gpus is None else gpus.place(job.run_dir, job.processes)
            if gpus is not None and placement is None:
                continue  # a run of several processes waits until enough GPUs have room
            try:
                # The outcome keeps the planned job; only the launcher sees where it runs.
                process = launch(replace(job, placement=placement))
            except BaseException:
                if gpus is not None:
                    gpus.release(job.run_dir)
                raise
            pending.remove(job)
            running[job.run_dir] = (job, process)
            where = "" if placement is None else f" on GPU {','.join(placement.gpus)}"
            log.debug("started %s%s: harness %s", job.name, where, " ".join(job.argv))
            report(None)


def failed_need(job: Job, outcomes: Mapping[Path, Outcome]) -> Path | None:
    for need in job.needs:
        if need in outcomes and outcomes[need].state in (FAILED, BLOCKED, STOPPED):
            return need
    return None


def need_completed(need: Path, outcomes: Mapping[Path, Outcome], running: Mapping[Path, Any]) -> bool:
    if need in outcomes:
        return outcomes[need].state in (ALREADY, COMPLETED)
    # Not finished in this sweep: either still to run here, or not a job of this sweep at all.
    return need not in running and is_completed(need)


def collect_finished(running: dict[Path, tuple[Job, Process]]) -> list[Outcome]:
    finished: list[Outcome] = []
    for run_dir, (job, process) in list(running.items()):
        code = process.poll()
        if code is None:
            continue
        del running[run_dir]
        finished.append(judge(job, code))
    return finished


def judge(job: Job, code: int) -> Outcome:
    """Completed only if the process succeeded and the run directory says so (the plan matched the run)."""
    if code == 0 and is_completed(job.run_dir):
        return Outcome(job, COMPLETED)
    if code == 0:
        # The run went to another directory than planned: the recipes or the code changed since planning.
        return Outcome(
            job,
            FAILED,
            f"exited 0 but {job.run_dir / 'status'} is {read_status(job.run_dir)!r} "
            "(did the harness code or a recipe change while the sweep ran?)",
        )
    if code == 3:
        return Outcome(job, STOPPED, "stopped by a signal (exit code 3); re-run the sweep to resume")
    if code < 0:
        return Outcome(job, FAILED, f"killed by signal {-code}")
    return Outcome(job, FAILED, f"exit code {code}")


def stop_all(running: dict[Path, tuple[Job, Process]], grace_seconds: float = 120.0) -> list[Outcome]:
    """SIGTERM every child (they checkpoint at the end of their current step), then wait for them."""
    for _, process in running.values():
        try:
            process.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace_seconds
    outcomes: list[Outcome] = []
    for job, process in running.values():
        try:
            code = process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
        outcomes.append(judge(job, code))
    running.clear()
    return outcomes

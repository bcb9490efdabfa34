"""`harness sweep FILE.yaml`: run a W&B-format grid sweep locally, in parallel worker processes.

A sweep file is the one a W&B server takes (`wandb sweep FILE`, then `wandb agent` on any machine):
`program`, `command`, `method: grid` and `parameters` with `values`/`value`. Locally, every grid point's
command line is built exactly as the W&B agent would build it (the command macros below), the part after
the `harness` program is handed to `harness.cli.plan_invocation` to learn which run directories it stands
for, and those runs are executed as separate `python -m harness.cli ...` processes:

- run directories shared by many grid points (one plasticity base run serves every probe) run once;
- a run starts only when the runs it needs (base -> control -> probe) have completed, and is skipped,
  and reported, when one of them failed;
- a completed run (`<run_dir>/status` reads `completed`) is skipped without starting a process, so a
  finished sweep re-runs in seconds; an interrupted one is started again and resumes from its checkpoint;
- one failure never stops the others; failures are listed at the end and make the exit code 1.

Each job's output goes to `<runs_dir>/.sweeps/<sweep>/<run_id>.log` (appended across attempts, each
attempt opening with a `=== start` line). Children die with the runner (SIGTERM on Linux, so they
checkpoint first), which keeps a re-run after `kill -9` from racing with leftovers.
"""

from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import itertools
import json
import logging
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, TextIO

import yaml

from harness import rundir
from harness.errors import UserError

log = logging.getLogger(__name__)

# What `wandb agent` runs when a sweep file has no `command`.
DEFAULT_COMMAND = ("${env}", "${interpreter}", "${program}", "${args}")
# The top-level keys of W&B's sweep configuration; anything else is most likely a typo.
SWEEP_KEYS = frozenset(
    {
        "program",
        "command",
        "method",
        "parameters",
        "name",
        "description",
        "project",
        "entity",
        "metric",
        "early_terminate",
        "run_cap",
        "controller",
        "job",
        "image_uri",
        "scheduler",
    }
)
# Keys of a parameter that only make sense for random or Bayesian search.
DISTRIBUTION_KEYS = ("distribution", "min", "max", "mu", "sigma", "q", "probabilities", "a", "b")
RUNS_DIR_FLAG = "--runs-dir"
LOG_TAIL_LINES = 12
MAX_LOG_TAILS = 5  # failures whose log tail the final report shows
POLL_SECONDS = 0.2


# ---------------------------------------------------------------------------------------------------------
# The sweep file


@dataclass(frozen=True)
class Sweep:
    path: Path
    name: str  # the file's stem: names the log folder, so it must be a safe path component
    program: str | None
    command: tuple[str, ...]
    parameters: dict[str, tuple[Any, ...]]  # in file order; a `value` is a one-element tuple


def load_sweep(path: Path) -> Sweep:
    """Read and check a sweep file. Raises UserError naming the file and the field."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as error:
        raise UserError(f"{path}: cannot read the sweep file ({error.strerror})") from None
    except UnicodeDecodeError as error:
        raise UserError(
            f"{path}: not a text file (byte {error.start} is not UTF-8); a sweep file is YAML text"
        ) from None
    except yaml.YAMLError as error:
        raise UserError(f"{path}: not valid YAML ({getattr(error, 'problem', error)})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping with program, command, method and parameters")
    unknown = sorted(set(data) - SWEEP_KEYS)
    if unknown:
        raise UserError(f"{path}: {unknown[0]}: not a W&B sweep key; valid: {', '.join(sorted(SWEEP_KEYS))}")
    method = data.get("method")
    if method != "grid":
        raise UserError(f"{path}: method: only 'grid' can run locally (got {method!r})")
    program = data.get("program")
    if program is not None and not isinstance(program, str):
        raise UserError(f"{path}: program: expected a string such as 'harness' (got {program!r})")
    command = data.get("command", list(DEFAULT_COMMAND))
    if not isinstance(command, list) or not command or not all(isinstance(t, str) for t in command):
        raise UserError(f"{path}: command: expected a non-empty list of strings (got {command!r})")
    return Sweep(
        path=Path(path),
        name=Path(path).stem,
        program=program,
        command=tuple(command),
        parameters=read_parameters(path, data.get("parameters")),
    )


def read_parameters(path: Path, raw: Any) -> dict[str, tuple[Any, ...]]:
    if not isinstance(raw, dict) or not raw:
        raise UserError(f"{path}: parameters: expected a mapping of parameter names to values/value")
    parameters: dict[str, tuple[Any, ...]] = {}
    for name, spec in raw.items():
        where = f"{path}: parameters.{name}"
        if not isinstance(spec, dict):
            raise UserError(f"{where}: expected a mapping with `values: [...]` or `value: ...`")
        if "parameters" in spec:
            raise UserError(f"{where}: nested parameters are not supported by the harness CLI")
        distribution = [key for key in DISTRIBUTION_KEYS if key in spec]
        if distribution:
            raise UserError(f"{where}: {distribution[0]}: grid search needs `values` or `value`")
        if ("values" in spec) == ("value" in spec):
            raise UserError(f"{where}: give exactly one of `values: [...]` or `value: ...`")
        if "value" in spec:
            parameters[str(name)] = (spec["value"],)
            continue
        values = spec["values"]
        if not isinstance(values, list) or not values:
            raise UserError(f"{where}: values: expected a non-empty list (got {values!r})")
        parameters[str(name)] = tuple(values)
    return parameters


def grid_points(sweep: Sweep) -> list[dict[str, Any]]:
    """Every combination of the parameters' values, the first parameter varying slowest."""
    names = list(sweep.parameters)
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*sweep.parameters.values())]


def restrict(sweep: Sweep, only: Sequence[str]) -> Sweep:
    """The sweep with its grid cut to `name=value` selections (`--only`): one name given several times keeps
    each of those values, different names must all hold. Values are YAML, compared with the file's values
    (numbers as numbers), and must be among them: a typo is an error, not an empty sweep."""
    chosen: dict[str, list[Any]] = {}
    for item in only:
        name, equals, text = item.partition("=")
        name = name.strip()
        if not equals or not name:
            raise UserError(f"--only: {item!r} is not name=value (e.g. seed=0)")
        if name not in sweep.parameters:
            raise UserError(
                f"--only: {name!r} is not a parameter of {sweep.path}; parameters: {', '.join(sweep.parameters)}"
            )
        try:
            wanted = yaml.safe_load(text)
        except yaml.YAMLError:
            wanted = text
        matches = [value for value in sweep.parameters[name] if _same_value(value, wanted)]
        if not matches:
            values = ", ".join(render(value) for value in sweep.parameters[name])
            raise UserError(
                f"--only: {name}={text} is not in the grid of {sweep.path}; {name} takes {values}"
            )
        chosen.setdefault(name, []).extend(value for value in matches if value not in chosen.get(name, []))
    if not chosen:
        return sweep
    # Kept in the file's order, so the planned runs come in the same order as without --only.
    parameters = {
        name: tuple(value for value in values if name not in chosen or value in chosen[name])
        for name, values in sweep.parameters.items()
    }
    return dataclasses.replace(sweep, parameters=parameters)


def _same_value(value: Any, wanted: Any) -> bool:
    if isinstance(value, bool) or isinstance(wanted, bool):
        return value is wanted or str(value).lower() == str(wanted).lower()
    if isinstance(value, int | float) and isinstance(wanted, int | float):
        return math.isclose(value, wanted, rel_tol=1e-12, abs_tol=1e-12)
    return str(value) == str(wanted)


# ---------------------------------------------------------------------------------------------------------
# The command line `wandb agent` builds for one grid point
#
# As W&B documents them: `${env}` is /usr/bin/env, `${interpreter}` is python, `${program}` the sweep's
# `program`; `${args}` renders every parameter as `--name=value` (value as Python's str(), so booleans
# become True/False); `${args_no_boolean_flags}` renders true booleans as a bare `--name` and omits false
# ones (what a `--flag/--no-flag` CLI needs); `${args_no_hyphens}` is `name=value`; `${args_no_equals}` is
# `--name value`; `${args_json}` one JSON object and `${args_json_file}` the path of a file holding it;
# `${envvar:NAME}` (anywhere in a token) the environment variable, or NAME itself when unset. Parameter
# names are passed exactly as written, which is why the harness CLI accepts `--probe_epoch` and
# `--probe-epoch` alike.


def render(value: Any) -> str:
    """A parameter value as the agent writes it into a command line (Python's str of the JSON value)."""
    return str(value)


def argument_macros(point: Mapping[str, Any]) -> dict[str, list[str]]:
    flags = [f"--{name}={render(value)}" for name, value in point.items()]
    no_booleans: list[str] = []
    for name, value in point.items():
        if isinstance(value, bool):
            no_booleans += [f"--{name}"] if value else []
        else:
            no_booleans.append(f"--{name}={render(value)}")
    return {
        "args": flags,
        "args_no_boolean_flags": no_booleans,
        "args_no_hyphens": [f"{name}={render(value)}" for name, value in point.items()],
        "args_no_equals": [token for name, value in point.items() for token in (f"--{name}", render(value))],
        "args_append_hydra": [f"+{name}={render(value)}" for name, value in point.items()],
        "args_override_hydra": [f"++{name}={render(value)}" for name, value in point.items()],
        "args_json": [json.dumps(dict(point))],
    }


def agent_command(
    sweep: Sweep,
    point: Mapping[str, Any],
    *,
    environ: Mapping[str, str] | None = None,
    json_dir: Path | None = None,
) -> list[str]:
    """The argv `wandb agent` would execute for this grid point.

    `json_dir` is where `${args_json_file}` is written (the agent uses its wandb/ folder; default: a
    folder under the system's temporary directory).
    """
    environ = os.environ if environ is None else environ
    macros = argument_macros(point)
    macros["env"] = ["/usr/bin/env"]
    macros["interpreter"] = ["python"]
    if sweep.program is not None:
        macros["program"] = [sweep.program]
    argv: list[str] = []
    for token in sweep.command:
        token = expand_envvars(token, environ)
        if token.startswith("${") and token.endswith("}"):
            name = token[2:-1]
            if name == "args_json_file":
                argv.append(str(write_args_json(point, sweep, json_dir)))
            elif name in macros:
                argv += macros[name]
            elif name == "program":
                raise UserError(f"{sweep.path}: program: missing, but command uses ${{program}}")
            else:
                known = ", ".join(f"${{{known}}}" for known in sorted([*macros, "args_json_file"]))
                raise UserError(f"{sweep.path}: command: unknown macro {token}; known: {known}")
        else:
            argv.append(token)
    return argv


def expand_envvars(token: str, environ: Mapping[str, str]) -> str:
    """`${envvar:NAME}` -> the variable's value, or NAME when it is unset (as the agent does)."""
    while (start := token.find("${envvar:")) >= 0:
        end = token.find("}", start)
        if end < 0:
            break
        name = token[start + len("${envvar:") : end]
        token = token[:start] + environ.get(name, name) + token[end + 1 :]
    return token


def write_args_json(point: Mapping[str, Any], sweep: Sweep, json_dir: Path | None) -> Path:
    json_dir = json_dir or Path(tempfile.gettempdir()) / "harness-sweeps" / sweep.name
    text = json.dumps(dict(point), sort_keys=True)
    path = json_dir / f"args-{hashlib.sha256(text.encode()).hexdigest()[:12]}.json"
    json_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@dataclass(frozen=True)
class HarnessCommand:
    """The part of an agent command line that the harness CLI parses, and env assignments before it."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


def harness_argv(command: Sequence[str], source: Path) -> HarnessCommand:
    """The arguments after the harness program in `command` (`harness ...` or `python -m harness.cli ...`).

    The local runner can only run the harness CLI; `env NAME=value` assignments before it are kept.
    """
    tokens = list(command)
    env: dict[str, str] = {}
    if tokens and Path(tokens[0]).name == "env":
        tokens = tokens[1:]
        while tokens and "=" in tokens[0] and not tokens[0].startswith("-"):
            name, _, value = tokens.pop(0).partition("=")
            env[name] = value
    if tokens and Path(tokens[0]).name == "harness":
        return HarnessCommand(tokens[1:], env)
    if (
        len(tokens) >= 3
        and Path(tokens[0]).name.startswith("python")
        and tokens[1:3] == ["-m", "harness.cli"]
    ):
        return HarnessCommand(tokens[3:], env)
    raise UserError(
        f"{source}: command: expected the harness CLI (program: harness with ${{program}}, or "
        f"${{interpreter}} -m harness.cli), got {' '.join(command)!r}"
    )


# ---------------------------------------------------------------------------------------------------------
# Jobs: one per distinct run directory, in dependency order


@dataclass(frozen=True)
class Job:
    run_dir: Path
    argv: tuple[str, ...]  # after the program: `plasticity --probe_epoch=10 ... --stage base`
    needs: tuple[Path, ...]
    log_path: Path
    env: tuple[tuple[str, str], ...] = ()

    @property
    def name(self) -> str:
        return self.run_dir.name


def plan_jobs(sweep: Sweep, *, runs_dir: Path | None = None, extra_args: Sequence[str] = ()) -> list[Job]:
    """Every run the sweep stands for, once each, dependencies before the runs that need them.

    `runs_dir` overrides the sweep's own `runs_dir` parameter (the last `--runs-dir` given wins).
    """
    from harness.cli import plan_invocation

    check_boolean_flags(sweep)
    jobs: dict[Path, Job] = {}
    depth: dict[Path, int] = {}
    for point in grid_points(sweep):
        command = harness_argv(agent_command(sweep, point), sweep.path)
        argv = [*command.argv, *extra_args]
        if runs_dir is not None:
            argv.append(f"{RUNS_DIR_FLAG}={runs_dir}")
        try:
            planned = plan_invocation(argv)
        except UserError as error:
            raise UserError(f"{sweep.path}: grid point {format_point(point)}: {error}") from None
        for run in planned:
            if run.run_dir in jobs:
                continue
            depth[run.run_dir] = 1 + max((depth[need] for need in run.needs), default=-1)
            jobs[run.run_dir] = Job(
                run_dir=run.run_dir,
                argv=run.argv,
                needs=run.needs,
                log_path=log_path(run.run_dir, sweep.name),
                env=tuple(sorted(command.env.items())),
            )
    # Stable: within a depth, grid order. All base runs first lets independent work start early.
    return sorted(jobs.values(), key=lambda job: depth[job.run_dir])


def check_boolean_flags(sweep: Sweep) -> None:
    """The harness CLI's booleans are `--flag/--no-flag`, which reject the `--flag=True` that ${args} writes."""
    if "${args}" not in sweep.command:
        return
    for name, values in sweep.parameters.items():
        if any(isinstance(value, bool) for value in values):
            raise UserError(
                f"{sweep.path}: parameters.{name}: ${{args}} passes booleans as --{name}=True/False, which "
                "the harness CLI rejects; use ${args_no_boolean_flags} in command"
            )


def log_path(run_dir: Path, sweep_name: str) -> Path:
    """`<runs_dir>/.sweeps/<sweep>/<run_id>.log` (run directories are `<runs_dir>/<group>/<run_id>`)."""
    return run_dir.parent.parent / ".sweeps" / sweep_name / f"{run_dir.name}.log"


def format_point(point: Mapping[str, Any]) -> str:
    return " ".join(f"{name}={render(value)}" for name, value in point.items())


def read_status(run_dir: Path) -> str | None:
    try:
        return rundir.read_status(run_dir)
    except rundir.DamagedFile:
        return rundir.DAMAGED


def is_completed(run_dir: Path) -> bool:
    return rundir.is_completed(run_dir)


def warn_damaged(jobs: Sequence[Job]) -> None:
    """One warning per planned run whose status or summary is damaged: the sweep runs it again."""
    for job in jobs:
        damage = rundir.completion_damage(job.run_dir)
        if damage is not None:
            log.warning(
                "run %s is damaged (%s); it is run again and resumes from its last checkpoint",
                job.run_dir.name,
                damage,
            )


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
    env.update(dict(job.env))
    return env


_PR_SET_PDEATHSIG = 1


def die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn asking Linux to send the child SIGTERM when the runner dies, even by SIGKILL.

    SIGTERM rather than SIGKILL: the harness checkpoints on SIGTERM, so the re-run resumes from there.
    """
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)  # resolved before fork: the child only makes the call
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the runner died before the request took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


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
) -> tuple[list[Outcome], bool]:
    """Run the jobs on `workers` slots, each once its needs have completed.

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
            start_ready(pending, running, outcomes, workers, launch, report)
            finished = collect_finished(running)
            for outcome in finished:
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
) -> None:
    """Start every pending job whose needs completed (while slots are free); block those whose needs failed."""
    for job in list(pending):
        failed = failed_need(job, outcomes)
        if failed is not None:
            pending.remove(job)
            outcomes[job.run_dir] = Outcome(job, BLOCKED, f"needs {failed}")
            report(outcomes[job.run_dir])
        elif len(running) < workers and all(need_completed(need, outcomes, running) for need in job.needs):
            pending.remove(job)
            running[job.run_dir] = (job, launch(job))
            log.debug("started %s: harness %s", job.name, " ".join(job.argv))
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


# ---------------------------------------------------------------------------------------------------------
# Reports


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> list[str]:
    try:
        with open(path, errors="replace") as handle:
            return [line.rstrip("\n") for line in deque(handle, maxlen=lines)]
    except FileNotFoundError:
        return []


def format_plan(sweep: Sweep, jobs: Sequence[Job], points: int) -> str:
    done = [job for job in jobs if is_completed(job.run_dir)]
    lines = [f"sweep {sweep.name}: {points} grid points -> {len(jobs)} runs ({len(done)} already complete)"]
    for job in jobs:
        if is_completed(job.run_dir):
            lines.append(f"  complete  {job.run_dir}")
        else:
            needs = f"  (after {', '.join(need.name for need in job.needs)})" if job.needs else ""
            lines.append(f"  to run    {job.run_dir}{needs}")
            lines.append(f"            harness {' '.join(job.argv)}")
    return "\n".join(lines) + "\n"


def format_report(sweep: Sweep, outcomes: Sequence[Outcome]) -> str:
    counts = Counter(outcome.state for outcome in outcomes)
    width = max(len(state) for state in STATES)
    lines = [f"sweep {sweep.name}: {len(outcomes)} runs"]
    lines += [f"  {state:<{width}}  {counts[state]:>5}" for state in STATES if counts[state]]
    problems = [outcome for outcome in outcomes if outcome.state in (FAILED, BLOCKED, STOPPED)]
    if problems:
        lines.append("not completed:")
    tails_left = MAX_LOG_TAILS
    for outcome in problems:
        lines.append(f"  {outcome.state}: {outcome.job.run_dir} ({outcome.detail})")
        if outcome.state == FAILED:
            lines.append(f"    log: {outcome.job.log_path}")
            if tails_left > 0:  # many failures usually share one cause: the first few logs show it
                lines += [f"    | {line}" for line in tail(outcome.job.log_path)]
                tails_left -= 1
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------
# Entry point


def run_sweep(
    path: Path,
    *,
    workers: int = 1,
    runs_dir: Path | None = None,
    dry_run: bool = False,
    extra_args: Iterable[str] = (),
    out: TextIO | None = None,
    launch: Launcher | None = None,
    only: Sequence[str] = (),
) -> int:
    """Run (or, with dry_run, list) every run of a sweep file. Returns the exit code: 0 if all completed.

    The plan and the final report are written to `out` (stdout by default): they are the command's
    output. `extra_args` are appended to every command line; `launch` replaces the process launcher.
    """
    out = sys.stdout if out is None else out
    if workers < 1:
        raise UserError(f"--workers: must be at least 1 (got {workers})")
    sweep = restrict(load_sweep(path), only)  # before planning, so --dry-run lists the same selection
    points = grid_points(sweep)
    jobs = plan_jobs(sweep, runs_dir=runs_dir, extra_args=list(extra_args))
    warn_damaged(jobs)
    if dry_run:
        out.write(format_plan(sweep, jobs, len(points)))
        return 0
    log.info("sweep %s: %d grid points -> %d runs, %d workers", sweep.name, len(points), len(jobs), workers)
    progress = Progress(sweep.name, total=len(jobs), done=sum(is_completed(job.run_dir) for job in jobs))
    with stop_on_sigterm():
        try:
            outcomes, stopped = execute(
                jobs, workers=workers, launch=launch or subprocess_launcher(workers), progress=progress
            )
        finally:
            progress.close()
    out.write(format_report(sweep, outcomes))
    if stopped:
        log.warning("sweep %s stopped; run the same command again to finish what is missing", sweep.name)
        return 130
    return 0 if all(outcome.state in (ALREADY, COMPLETED) for outcome in outcomes) else 1


@contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """SIGTERM stops the runner as Ctrl-C does: children checkpoint, the report is written."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _raise_stop(signum: int, frame: Any) -> None:
    raise Stop(f"signal {signum}")

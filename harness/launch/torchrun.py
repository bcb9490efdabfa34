"""Starting processes: the torchrun re-exec of a training command, its thread budget, and children that die
with their parent.

`harness run ... --nproc-per-node N` re-executes itself under torchrun (`launch_if_needed`): the children
get the same command line without the launcher's own options, and a share of this command's thread budget.
A launcher killed outright takes its children with it (`die_with_parent`, `die_with_torchrun`), so a re-run
never races with orphans. Nothing here imports torch: it runs before a training process has started.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from harness.engine.signals import stop_requested
from harness.errors import UserError
from harness.launch.command_line import Launch

log = logging.getLogger("harness")

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


def die_with_torchrun() -> None:
    """In a torchrun worker: ask Linux to send this process SIGTERM when torchrun dies, even by SIGKILL.

    Otherwise SIGKILL of torchrun (an OOM killer, `kill -9`, a scheduler's hard stop) leaves the workers
    training on as orphans that a re-run would race with. SIGTERM rather than SIGKILL: every worker gets
    it at once, so they agree to stop, checkpoint, and exit 3. Not available off Linux: a no-op there.
    """
    if not sys.platform.startswith("linux") or not under_torchrun():
        return
    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # torchrun died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def under_torchrun() -> bool:
    """Whether this process is a torchrun child."""
    return "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_RANK" in os.environ


def torchrun_command(
    module_args: list[str],
    *,
    nproc_per_node: int,
    nnodes: int = 1,
    node_rank: int = 0,
    rdzv_endpoint: str | None = None,
    max_restarts: int = 0,
) -> tuple[list[str], dict[str, str]]:
    """(argv, environment additions) that run `python -m harness.cli <module_args>` under torchrun.

    One machine: `--standalone` (a private rendezvous on a free local port). Several: c10d rendezvous at
    `rdzv_endpoint` (host:port), hosted by node 0. With restarts, torchrun must not hand the restarted
    workers the agent's shared TCP store: gloo would reconnect to the dead rank's address.
    """
    if nproc_per_node < 1:
        raise UserError(f"--nproc-per-node={nproc_per_node}: must be at least 1")
    if nnodes < 1:
        raise UserError(f"--nnodes={nnodes}: must be at least 1")
    if not 0 <= node_rank < nnodes:
        raise UserError(f"--node-rank={node_rank}: must be in [0, {nnodes - 1}] for --nnodes={nnodes}")
    if max_restarts < 0:
        raise UserError(f"--max-restarts={max_restarts}: must be at least 0")
    argv = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc_per_node}"]
    if nnodes == 1 and rdzv_endpoint is None:
        argv.append("--standalone")
    else:
        if not rdzv_endpoint:
            raise UserError(
                "--rdzv-endpoint: required with --nnodes > 1 (host:port reachable from every node)"
            )
        argv += [
            f"--nnodes={nnodes}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={rdzv_endpoint}",
            # c10d ignores --node-rank; what it needs to know is which node serves the rendezvous store,
            # which it would otherwise guess from host names.
            f"--rdzv-conf=is_host={'true' if node_rank == 0 else 'false'}",
        ]
    argv.append(f"--max-restarts={max_restarts}")
    argv += ["-m", "harness.cli", *module_args]
    environment = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"} if max_restarts > 0 else {}
    return argv, environment


def launcher_argv(
    nproc_per_node: int, nnodes: int, node_rank: int, rdzv_endpoint: str | None, max_restarts: int
) -> tuple[list[str], dict[str, str]] | None:
    """The torchrun command that re-executes this one on N processes, or None to run in this process."""
    if "RANK" in os.environ or (nproc_per_node == 1 and nnodes == 1):
        return None
    if nnodes > 1 and not rdzv_endpoint:
        raise UserError("--rdzv-endpoint: required with --nnodes > 1 (host:port of the rendezvous)")
    argv, environment = torchrun_command(
        strip_launcher_options(sys.argv[1:]),
        nproc_per_node=nproc_per_node,
        nnodes=nnodes,
        node_rank=node_rank,
        rdzv_endpoint=rdzv_endpoint,
        max_restarts=max_restarts,
    )
    return argv, {**environment, **threads_per_process(nproc_per_node, os.environ)}


THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def threads_per_process(nproc_per_node: int, environ: dict[str, str] | os._Environ) -> dict[str, str]:
    """Thread counts for each of the N processes on this machine.

    A thread count set for this command (a sweep worker's share of the cores, SLURM's cpus-per-task) is
    the budget of the whole command, so it is divided among the processes: inherited unchanged, N
    processes would each run that many threads and oversubscribe the cores (measured here: 2 ranks with
    2 threads each on 2 cores train ~8x slower). Unset, torchrun's own default (1) applies. PyTorch's
    intra-op pool is then set by each process from `run.threads`, which the results depend on.
    """
    threads: dict[str, str] = {}
    for name in THREAD_VARIABLES:
        raw = environ.get(name)
        if raw is None or nproc_per_node == 1:
            continue
        if not raw.strip().isdigit() or int(raw) < 1:
            raise UserError(f"{name}={raw!r}: must be a positive integer")
        threads[name] = str(max(1, int(raw) // nproc_per_node))
    return threads


LAUNCHER_OPTIONS = {"--nproc-per-node", "--nnodes", "--node-rank", "--rdzv-endpoint", "--max-restarts"}


def strip_launcher_options(argv: list[str]) -> list[str]:
    """The command line without the launcher's own options (the children must not relaunch)."""
    kept: list[str] = []
    skip_next = False
    for token in argv:
        if skip_next:
            skip_next = False
            continue
        name = token.split("=", 1)[0].replace("_", "-")
        if name in LAUNCHER_OPTIONS:
            skip_next = "=" not in token
            continue
        kept.append(token)
    return kept


def relaunch(command: tuple[list[str], dict[str, str]]) -> int:
    """Run the torchrun job and return its exit code (3 when a stop signal ended it or came first)."""
    argv, env = command
    if stop_requested():  # stopped while starting up: nothing has run, and the same command starts afresh
        log.warning("stopped before launching torchrun; the same command starts the run")
        return 3
    log.info("launching: %s", " ".join(argv))
    # If this launcher is killed outright, torchrun gets SIGTERM (its workers checkpoint) instead of
    # training on as an orphan that a re-run would race with.
    process = subprocess.Popen(argv, env={**os.environ, **env}, preexec_fn=die_with_parent())
    return wait_passing_on_stop(process)


def wait_passing_on_stop(process: subprocess.Popen) -> int:
    """Wait for the torchrun job; a SIGTERM sent to this launcher (by a sweep runner, a scheduler, `kill`)
    is passed on once; torchrun passes it to the workers, which checkpoint and stop. Ctrl-C is not passed
    on: the terminal delivers it to torchrun too (same process group), and a second signal would cut
    torchrun's shutdown short.

    Returns torchrun's exit code, or 3 (stopped, resumable) when a stop signal ended the job.
    """
    stops: list[int] = []

    def pass_on(signum: int, frame: Any) -> None:
        if not stops:
            process.send_signal(signum)
        stops.append(signum)

    def note(signum: int, frame: Any) -> None:
        stops.append(signum)

    previous = {
        signal.SIGTERM: signal.signal(signal.SIGTERM, pass_on),
        signal.SIGINT: signal.signal(signal.SIGINT, note),
    }
    if stop_requested():  # arrived between the start of torchrun and the line above
        pass_on(signal.SIGTERM, None)
    try:
        code = process.wait()
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    return 3 if stops and code != 0 else code


def launch_if_needed(launch: Launch, batch_size: int) -> int | None:
    """Re-execute this command under torchrun when it asks for several processes: returns the job's exit
    code then, or None when this process is the one to train."""
    command = launcher_argv(
        launch.nproc_per_node, launch.nnodes, launch.node_rank, launch.rdzv_endpoint, launch.max_restarts
    )
    if command is None:
        return None
    # Checked here too, so the mistake is one line now rather than one per rank after torchrun starts.
    world_size = launch.nproc_per_node * launch.nnodes
    if batch_size % world_size:
        raise UserError(
            f"optim.batch_size: the global batch size {batch_size} must be divisible by the "
            f"number of processes ({world_size})"
        )
    return relaunch(command)

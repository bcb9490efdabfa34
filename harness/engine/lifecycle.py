"""One run directory, start to finish: lock, resume, signals, tracking, checkpoints, mask checks, summary.

`run_training` runs (or resumes, or skips when completed) the run directory a config addresses, around the
loop of `harness.engine.loop`: it takes the run's lock, resumes from the latest checkpoint, opens the tracker, turns
SIGTERM into a checkpoint and exit, checks the masks agree across ranks, and writes the summary. `RunHooks`
connects the loop's hook points to all of that, and a client's `harness.engine.extension.RunExtension` to
the run's. The run directory's layout itself is `harness.store.rundir`'s.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from harness import config as configuration
from harness.config import Config
from harness.engine import loop as train
from harness.engine.console import Console
from harness.engine.distributed import DistInfo, all_reduce_sum, barrier, broadcast_tensors, check_identical
from harness.engine.estimate import warn_if_long
from harness.engine.extension import RunExtension, log_mask_update
from harness.engine.loop import Hooks, Interrupted, fit, score_before_training
from harness.engine.session import Session
from harness.engine.signals import stop_requested
from harness.errors import UserError
from harness.sparse import MaskUpdate
from harness.store import checkpoint as checkpoints
from harness.store import rundir
from harness.store.tracking import Tracker, open_tracker

# The trainer's logger: its lines ("... done | test acc ...") are part of every run's output.
log = logging.getLogger("harness.engine.loop")


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any]
    skipped: bool = False  # already completed: nothing was done


class StopFlag:
    """SIGTERM/SIGINT set a flag; the loop finishes its step and checkpoints outside the handler."""

    def __init__(self, dist: DistInfo, every: int) -> None:
        self.dist = dist
        self.every = every
        self.requested = stop_requested()  # a stop that arrived during start-up (harness.engine.signals)
        self.calls = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def __call__(self) -> bool:
        """Whether to stop now. Under DDP all ranks must stop at the same step, so the flag is agreed on
        by an all-reduce, every `every` steps (one small collective, not one per step)."""
        if not self.dist.is_distributed:
            return self.requested
        self.calls += 1
        if self.calls % self.every:
            return False
        return self.agreed()

    def agreed(self) -> bool:
        """Whether any rank was asked to stop; every rank must call this at the same point."""
        if not self.dist.is_distributed:
            return self.requested
        flag = torch.tensor([1.0 if self.requested else 0.0], device=self.dist.device)
        all_reduce_sum(self.dist, flag)
        return bool(flag.item() > 0)


def run_id_and_dir(config: Config, world_size: int) -> tuple[str, Path]:
    run_dir = configuration.run_directory(config, world_size)
    return run_dir.name, run_dir


def completed_summary(run_dir: Path, *, warn: bool = True) -> dict[str, Any] | None:
    """The summary of a completed run, or None when the run is to be started or resumed.

    A damaged status, config or summary makes the run unfinished (one warning with `warn`): it resumes
    from its last checkpoint, which at the end of a run rewrites all three with the same content.
    """
    try:
        if rundir.read_status(run_dir) != "completed":
            return None
        if rundir.config_path(run_dir).exists():
            rundir.read_config(run_dir)
        return rundir.read_summary(run_dir)
    except rundir.DamagedFile as damage:
        if warn:
            log.warning(
                "run %s is damaged (%s); treating it as unfinished: it resumes from its last checkpoint",
                run_dir.name,
                damage,
            )
        return None


def gather_rng(dist: DistInfo) -> list[dict[str, Any]]:
    """Every rank's RNG state, so a resumed DDP run continues each rank's augmentation stream exactly."""
    state = checkpoints.capture_rng_state()
    if not dist.is_distributed:
        return [state]
    gathered: list[Any] = [None] * dist.world_size
    torch.distributed.all_gather_object(gathered, state)
    return gathered


class RunHooks(Hooks):
    """Connects the loop to a run directory: tracker records, mask snapshots, checkpoints, DDP mask checks."""

    def __init__(
        self,
        session: Session,
        tracker: Tracker,
        run_dir: Path,
        console: Console | None,
        started: float | None = None,
        extension: RunExtension | None = None,
    ):
        self.session = session
        self.tracker = tracker
        self.run_dir = run_dir
        self.console = console
        # time.perf_counter() when this process began the run: checkpoints count its wall time from here.
        self.started = time.perf_counter() if started is None else started
        self.stop: Callable[[], bool] = lambda: False
        self.extension = RunExtension() if extension is None else extension
        # Every checkpoint says whose it is, so a resume can refuse another run's (see check_identity).
        self.identity = {
            "run_id": run_dir.name,
            "config_hash": configuration.config_hash(session.config, session.dist.world_size),
        }

    def log(self, record: dict[str, Any]) -> None:
        self.tracker.log(record)
        if self.console is not None:
            self.console.record(record)

    def stop_requested(self) -> bool:
        return self.stop()

    def mask_update(self, session: Session, update: MaskUpdate) -> None:
        check_masks(session, session.step)
        log_mask_update(self.tracker, session.masks, update, epoch=update.step / session.steps_per_epoch)

    def epoch_end(self, session: Session) -> None:
        self.extension.after_evaluation(session)
        self.checkpoint()

    def mask_check(self, session: Session) -> None:
        # Between updates masks change only by a bug or a bit flip; catching it early saves the run's rest.
        check_masks(session, session.step)

    def checkpoint(self) -> Path:
        session = self.session
        check_masks(session, session.step)
        state = session.state_dict(
            rng=gather_rng(session.dist),
            # This process's time included: a run killed without warning (SIGKILL, a lost node) resumes
            # from this checkpoint, and its summary would otherwise leave out the time before.
            elapsed=session.elapsed + time.perf_counter() - self.started,
            # Every rank's sums, so a mid-epoch resume logs what an uninterrupted run does.
            totals=all_reduce_sum(session.dist, session.totals.clone()),
        )
        extra = self.extension.checkpoint_state()
        if taken := sorted(extra.keys() & state["extra"].keys()):
            raise ValueError(
                f"checkpoint_state: the engine's own checkpoint entries already use {', '.join(taken)}"
            )
        state["extra"].update(extra)
        state.update(self.identity)
        path = rundir.checkpoint_dir(self.run_dir) / rundir.LAST_CHECKPOINT
        if session.dist.is_main:
            checkpoints.save_checkpoint(path, state)
            if (
                session.epoch in session.config.run.keep_checkpoints
                and session.step == session.epoch * session.steps_per_epoch
            ):
                checkpoints.keep_copy(path, session.epoch)
        return path


CHECKSUM_LOG_VARIABLE = "HARNESS_CHECKSUM_LOG"


def check_masks(session: Session, step: int) -> None:
    """Stop the run (MaskMismatchError on every rank) unless all ranks hold exactly the same masks."""
    log_directory = os.environ.get(CHECKSUM_LOG_VARIABLE)
    if not session.dist.is_distributed and not log_directory:
        return
    checksums = session.masks.checksums()
    if log_directory:
        append_checksums(Path(log_directory), session, step, checksums)
    check_identical(session.dist, checksums, session.masks.names, what="mask", step=step)


def append_checksums(directory: Path, session: Session, step: int, checksums: Tensor) -> None:
    """Debug aid: every rank appends the checksums it compares to <directory>/rank<k>.jsonl (before the
    comparison, so a mismatching run leaves the evidence), to verify agreement from outside the job."""
    directory.mkdir(parents=True, exist_ok=True)
    named = dict(zip(session.masks.names, checksums.tolist(), strict=True))
    record = {"step": step, "rank": session.dist.rank, "checksums": named}
    with open(directory / f"rank{session.dist.rank}.jsonl", "a") as handle:
        handle.write(json.dumps(record) + "\n")


def check_resume_point(session: Session) -> None:
    """Every rank must start from the same step: each reads the run directory rank 0 writes."""
    check_identical(
        session.dist,
        torch.tensor([session.step]),
        ["optimizer steps"],
        what="the resume point (is the runs directory on a file system every node shares?)",
        step=session.step,
    )


def run_training(config: Config, dist: DistInfo, *, extension: RunExtension | None = None) -> RunResult:
    """Run (or resume, or skip if completed) the run directory that `config` addresses, calling `extension`'s
    hooks at their points of the run (a study's way in; without one, the run is a plain one)."""
    extension = RunExtension() if extension is None else extension
    run_id, run_dir = run_id_and_dir(config, dist.world_size)
    done = completed_summary(run_dir, warn=False)
    if done is not None:
        return RunResult(run_dir, done, skipped=True)
    # Before anything is computed: the thread count is part of the run (see RunConfig.threads), so the
    # environment (OMP_NUM_THREADS, a sweep worker's share, torchrun's default) must not decide it.
    torch.set_num_threads(config.run.threads)
    started = time.perf_counter()
    session = train.build_session(config, dist)  # validates data and config before any directory is created
    with run_lock(run_dir, dist):
        done = completed_summary(run_dir)  # finished by the process we waited for?
        if done is not None:
            return RunResult(run_dir, done, skipped=True)
        rundir.refuse_planted_symlinks(run_dir)
        resume_path = checkpoints.latest_checkpoint(run_dir)
        if resume_path is not None:
            state = checkpoints.load_checkpoint(resume_path)
            checkpoints.check_identity(
                resume_path, state, run_id, configuration.config_hash(config, dist.world_size)
            )
            session.load_state_dict(state)
            extension.resume(state.get("extra", {}))
            log.info("resuming %s from epoch %d, step %d", run_id, session.epoch, session.step)
        check_resume_point(session)
        if resume_path is None and dist.is_main:
            warn_if_long(session)  # the paper's CIFAR recipe on a CPU: hours, said before the first step
        tracker = open_tracker(
            run_dir,
            config.to_dict(),
            tracking=config.tracking,
            run_id=run_id,
            tags=[config.sparsity.method, config.model.arch, config.data.dataset],
            is_main=dist.is_main,
            resume_step=session.step if resume_path is not None else None,
        )
        console = (
            Console(run_id, total_steps=session.total_steps, start_step=session.step)
            if dist.is_main
            else None
        )
        hooks = RunHooks(session, tracker, run_dir, console, started, extension)
        try:
            with StopFlag(dist, config.tracking.log_every) as stop:
                hooks.stop = stop
                if resume_path is None:
                    start(session, tracker, hooks, extension)
                if stop.agreed():  # asked to stop while starting up: checkpoint before the first step
                    raise Interrupted(f"stopped before training, at step {session.step}")
                fit(session, hooks, until_epoch=last_epoch(config))
            summary = summarize(session, run_id, session.elapsed + time.perf_counter() - started)
            extension.add_to_summary(session, summary)
        except Interrupted:
            hooks.checkpoint()
            log.warning("interrupted at step %d; checkpoint written, the same command resumes", session.step)
            raise
        except BaseException:
            tracker.finish("failed")
            raise
        finally:
            if console is not None:
                console.close()
        tracker.finish("completed", summary)
        if dist.is_main:
            log.info("%s", extension.summary_line(summary))
    # Rank 0 has written the summary and status: no rank may read this run's files (e.g. a run that starts
    # from this one's results) before that.
    barrier(dist)
    return RunResult(run_dir, summary)


def last_epoch(config: Config) -> int:
    stop = config.run.stop_after_epochs
    return config.optim.epochs if stop is None else min(stop, config.optim.epochs)


@contextmanager
def run_lock(run_dir: Path, dist: DistInfo) -> Iterator[None]:
    """One process per run directory: others (a second sweep worker, a W&B agent) wait, then skip or resume."""
    handle = None
    if dist.is_main:
        try:
            run_dir.parent.mkdir(parents=True, exist_ok=True)
            # Beside the run directory, never deleted: unlinking a lock file lets two waiters lock different inodes.
            handle = open(rundir.lock_path(run_dir), "w")
        except OSError as error:
            raise UserError(f"{run_dir}: cannot create the run directory ({error.strerror})") from None
    try:
        wait_for_lock(handle, run_dir, dist)
        yield
    finally:
        if handle is not None:
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()


LOCK_POLL_S = 1.0


def wait_for_lock(handle: Any, run_dir: Path, dist: DistInfo) -> None:
    """Rank 0 takes the run lock, however long another process holds it; the other ranks wait with it.

    Under DDP a blocking wait on rank 0 would leave the others in their next collective, which fails after
    the process-group timeout; so rank 0 tries once a second and tells every rank, in a broadcast that never
    waits longer than that second, whether it has the lock.
    """
    waiting_logged = False
    while True:
        acquired = False
        if handle is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                acquired = True
            except BlockingIOError:
                if not waiting_logged:
                    log.info("waiting for another process running %s", run_dir)
                    waiting_logged = True
                if not dist.is_distributed:
                    fcntl.flock(handle, fcntl.LOCK_EX)
                    acquired = True
        if not dist.is_distributed:
            return
        flag = torch.tensor([1.0 if acquired else 0.0])
        broadcast_tensors(dist, [flag])
        if flag.item() > 0:
            return
        if dist.is_main:
            time.sleep(LOCK_POLL_S)


def start(session: Session, tracker: Tracker, hooks: RunHooks, extension: RunExtension) -> None:
    """A fresh run: the extension's starting state and first mask event (by default the method's initial
    masks as the step-0 event), then the checkpoint of the starting epoch if it is to be kept."""
    score_before_training(session)
    extension.start(session, tracker)
    check_masks(session, session.step)
    if session.epoch in session.config.run.keep_checkpoints:
        hooks.checkpoint()


def summarize(session: Session, run_id: str, wall_time: float) -> dict[str, Any]:
    config = session.config
    last = session.last_epoch or {}
    inference = session.current_flops()
    return {
        "run_id": run_id,
        "group": config.tracking.group,
        "job_type": config.tracking.job_type,
        "method": config.sparsity.method,
        "arch": config.model.arch,
        "dataset": config.data.dataset,
        "seed": config.run.seed,
        "epochs": session.epoch,
        "steps": session.step,
        "world_size": session.dist.world_size,
        "sparsity": 1.0 - session.method.target_density(session.total_steps),
        "init_sparsity": 1.0 - session.method.initial_density(),
        "density": session.masks.density(),
        "test_acc": last.get("test/acc"),
        "test_loss": last.get("test/loss"),
        "val_acc": last.get("val/acc"),
        "train_loss": last.get("train/loss"),
        "best_val_epoch": session.best.epoch,
        "best_val_acc": session.best.val_acc,
        "test_acc_at_best_val": session.best.test_acc,
        "masked_weights": session.masks.total,
        "active_weights": sum(session.masks.active_counts()),
        "inference_flops": inference.sparse,
        "inference_flops_dense": inference.dense,
        "inference_flops_rel": inference.relative,
        "train_flops": session.flops.total,
        "train_flops_dense": session.flops.dense_total,
        "train_flops_rel": session.flops.relative,
        "wall_time_s": wall_time,
        "device": str(session.device),
        "torch_version": torch.__version__,
    }

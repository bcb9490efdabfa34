"""Where a run's results go: the local run store (always) and a W&B mirror (optional, lazily imported).

The run-store layout is a public contract, described in the notes on the run store: `config.yaml`,
`status`, `metrics.jsonl`, `summary.json`, `masks/step_NNNNNNNNN.npz` (and `checkpoints/`, written by
`harness.store.checkpoint`). Only the main process writes; every other rank holds a `Tracker` that does nothing.

The trainer's view:

    tracker = open_tracker(run_dir, config.to_dict(), tracking=config.tracking, run_id=..., tags=[...],
                           is_main=info.is_main, resume_step=None or the checkpoint's step)
    tracker.log({"kind": "train", "step": 50, "epoch": 0.5, "train/loss": 1.2, "lr": 0.1})
    tracker.log_masks(step, masks)
    tracker.finish("completed", summary)      # or finish("failed") from an exception handler

W&B is a mirror, never a dependency: it never prompts, needs no network in offline mode, and a W&B
failure (import, init, log, artifact, finish) logs one warning and leaves the local store running alone.

Over 450 lines on purpose: the Tracker interface and both of its implementations (local store, W&B
mirror) stay together so that the two keep the same keys.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Protocol

import numpy as np
import torch
import yaml

from harness.errors import UserError
from harness.store import rundir, snapshots


class TrackingSettings(Protocol):
    """What the tracker reads of the config's `tracking` section (`harness.config.TrackingConfig` is one): the
    store sits below the config and knows only these fields."""

    group: str
    job_type: str
    mask_snapshots: bool
    wandb: str
    wandb_entity: str | None
    wandb_project: str


logger = logging.getLogger(__name__)

Status = Literal["running", "completed", "failed"]
STATUSES: tuple[str, ...] = rundir.STATUSES

# The names live in harness.store.rundir; these stay for callers that used them from here.
REQUIRED_KEYS = ("kind", "step", "epoch")

# W&B waits this long for its service before giving up (its default is 90 s); only online mode can need it.
WANDB_INIT_TIMEOUT_S = 60.0
# Online mode only: how long finish() may wait for uploads before the run is marked crashed on the server.
WANDB_FINISH_TIMEOUT_S = 120.0


# ---------------------------------------------------------------------------------------------------------
# Strict JSON values


def json_safe(value: Any, key: str = "value") -> Any:
    """`value` as plain JSON data: non-finite floats become None, numpy and 0-d torch scalars become numbers.

    Anything else that JSON cannot hold is a bug in the caller: TypeError naming the key.
    """
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, np.generic):
        return json_safe(value.item(), key)
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise TypeError(f"{key}: a tensor of shape {tuple(value.shape)} is not a loggable number")
        return json_safe(value.item(), key)
    if isinstance(value, Mapping):
        return {str(name): json_safe(item, f"{key}.{name}") for name, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item, f"{key}[{index}]") for index, item in enumerate(value)]
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{key}: {type(value).__name__} is not JSON data")


def _record_line(record: Mapping[str, Any]) -> tuple[dict[str, Any], bytes]:
    safe = {str(name): json_safe(value, str(name)) for name, value in record.items()}
    missing = [name for name in REQUIRED_KEYS if name not in safe]
    if missing:
        raise ValueError(f"metrics record lacks {', '.join(missing)}: {sorted(safe)}")
    if not isinstance(safe["kind"], str):
        raise ValueError(f"metrics record: kind must be a string, got {safe['kind']!r}")
    if isinstance(safe["step"], bool) or not isinstance(safe["step"], int):
        raise ValueError(f"metrics record: step must be an int, got {safe['step']!r}")
    if isinstance(safe["epoch"], bool) or not isinstance(safe["epoch"], int | float):
        raise ValueError(f"metrics record: epoch must be a number, got {safe['epoch']!r}")
    return safe, (json.dumps(safe, allow_nan=False) + "\n").encode()


# ---------------------------------------------------------------------------------------------------------
# The local run store


class RunStore:
    """The files of one run directory (layout and I/O in `harness.store.rundir`). Every whole-file write is atomic;
    metrics lines are appended whole."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)

    @property
    def config_path(self) -> Path:
        return rundir.config_path(self.run_dir)

    @property
    def status_path(self) -> Path:
        return rundir.status_path(self.run_dir)

    @property
    def metrics_path(self) -> Path:
        return rundir.metrics_path(self.run_dir)

    @property
    def summary_path(self) -> Path:
        return rundir.summary_path(self.run_dir)

    @property
    def masks_dir(self) -> Path:
        return rundir.masks_dir(self.run_dir)

    def create(self) -> None:
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UserError(f"{self.run_dir}: cannot create the run directory ({error.strerror})") from None
        if not os.access(self.run_dir, os.W_OK):
            raise UserError(f"{self.run_dir}: run directory is not writable")

    @property
    def status(self) -> str | None:
        """`running`, `completed`, `failed`, or None when the run never started (DamagedFile otherwise)."""
        return rundir.read_status(self.run_dir)

    def set_status(self, status: Status) -> None:
        rundir.write_status(self.run_dir, status)

    def write_config(self, config: Mapping[str, Any]) -> None:
        rundir.atomic_write_text(
            self.config_path, yaml.safe_dump(json_safe(config, "config"), sort_keys=False)
        )

    def append(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """Append one metrics line; returns the record as written (non-finite floats as None)."""
        safe, line = _record_line(record)
        rundir.append_line(self.metrics_path, line)
        return safe

    def records(self) -> list[dict[str, Any]]:
        return rundir.read_metrics(self.metrics_path)

    def write_summary(self, summary: Mapping[str, Any]) -> dict[str, Any]:
        """Write summary.json; returns it as written (non-finite floats as None)."""
        safe = json_safe(summary, "summary")
        rundir.atomic_write_text(self.summary_path, json.dumps(safe, indent=2, allow_nan=False) + "\n")
        return safe

    def save_masks(self, step: int, masks: Mapping[str, torch.Tensor]) -> Path:
        return snapshots.save_masks(self.masks_dir / rundir.snapshot_name(step), masks)

    def mask_snapshots(self) -> list[Path]:
        """Snapshot files in step order."""
        return rundir.mask_snapshots(self.run_dir)

    def rewind(self, step: int) -> None:
        """Forget everything logged after optimizer step `step`, for a resume from a checkpoint at `step`.

        Keeps the metrics lines with step <= `step` byte for byte and the mask snapshots up to `step`;
        drops later lines and snapshots, a torn last line, leftover temporary files and summary.json.
        The checkpoint at `step` must have been written after every record of that step was logged.
        A damaged metrics line (not a torn last one) stops the resume with DamagedFile naming it.
        """
        pairs = rundir.read_metric_lines(self.metrics_path)
        kept = b"".join(raw for raw, record in pairs if record["step"] <= step)
        if self.metrics_path.exists():
            rundir.atomic_write(self.metrics_path, lambda handle: handle.write(kept))
        for path in self.mask_snapshots():
            if rundir.snapshot_step(path) > step:
                path.unlink()
        self._remove_temporaries()
        self.summary_path.unlink(missing_ok=True)

    def clear(self) -> None:
        """Forget all results (metrics, summary, masks) for a fresh start; config and checkpoints stay."""
        self.metrics_path.unlink(missing_ok=True)
        self.summary_path.unlink(missing_ok=True)
        for path in self.mask_snapshots():
            path.unlink()
        self._remove_temporaries()

    def _remove_temporaries(self) -> None:
        # Left by a process killed inside an atomic write (`.name.pid.tmp`), checkpoints/ included.
        rundir.remove_temporaries(self.run_dir)


# ---------------------------------------------------------------------------------------------------------
# Trackers


class Tracker:
    """What the trainer logs through. This base does nothing: it is what every non-main rank holds."""

    def log(self, record: Mapping[str, Any]) -> None:
        """One metrics record with at least `kind`, `step` (int) and `epoch` (number)."""

    def log_masks(self, step: int, masks: Mapping[str, torch.Tensor]) -> None:
        """A mask snapshot after optimizer step `step` (name -> 0/1 tensor)."""

    def finish(self, status: Status, summary: Mapping[str, Any] | None = None) -> None:
        """Write the summary (if given), then the final status. Later calls do nothing."""

    def __enter__(self) -> Tracker:
        return self

    def __exit__(
        self,
        exception_type: type[BaseException] | None,
        exception: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        # A run that leaves the block by an exception is marked failed; a normal exit must call finish itself.
        if exception_type is not None:
            self.finish("failed")


class RunTracker(Tracker):
    """The main process's tracker: the local store, plus the W&B mirror when one is open."""

    def __init__(
        self, store: RunStore, mirror: WandbMirror | None = None, *, mask_snapshots: bool = True
    ) -> None:
        self.store = store
        self.mirror = mirror
        self.mask_snapshots = mask_snapshots
        self._finished = False

    def log(self, record: Mapping[str, Any]) -> None:
        written = self.store.append(record)
        if self.mirror is not None:
            self.mirror.log(written)

    def log_masks(self, step: int, masks: Mapping[str, torch.Tensor]) -> None:
        if not self.mask_snapshots:
            return
        path = self.store.save_masks(step, masks)
        if self.mirror is not None:
            self.mirror.log_masks(step, path)

    def finish(self, status: Status, summary: Mapping[str, Any] | None = None) -> None:
        if self._finished:
            return
        self._finished = True
        written = self.store.write_summary(summary) if summary is not None else None
        # Status last: a reader that sees `completed` can rely on summary.json being there.
        try:
            self.store.set_status(status)
        except (rundir.StorageFullError, OSError) as error:
            if status == "completed":
                raise
            # Called while another error (often the same full disk) propagates: that one is the news.
            # The status stays `running`, which the next start resumes exactly like `failed`.
            logger.debug("could not record status %s in %s: %s", status, self.store.status_path, error)
        if self.mirror is not None:
            finish_mirror_within(self.mirror, status, written, MIRROR_FINISH_TIMEOUT_S)


# Below the process-group timeout (harness.engine.distributed.DEFAULT_TIMEOUT_S, 120 s): under DDP the other ranks
# wait at the final barrier while rank 0 finishes W&B, and a slow online upload must not time them out.
MIRROR_FINISH_TIMEOUT_S = 60.0


def finish_mirror_within(
    mirror: WandbMirror, status: Status, summary: Mapping[str, Any] | None, timeout_s: float
) -> None:
    """Finish the W&B mirror, giving up (one warning) after `timeout_s`: the local store is complete by now,
    so a slow or hung W&B cannot fail a finished run. The unfinished upload goes on in a daemon thread."""
    import threading

    worker = threading.Thread(target=mirror.finish, args=(status, summary), name="wandb-finish", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        logger.warning(
            "W&B finish did not return within %g s; the run is %s in the local run store, "
            "and its offline W&B files can be uploaded later with `wandb sync`",
            timeout_s,
            status,
        )


def open_tracker(
    run_dir: Path,
    config: Mapping[str, Any],
    *,
    tracking: TrackingSettings,
    run_id: str,
    tags: list[str],
    is_main: bool,
    resume_step: int | None,
    sweep_run: bool = True,
) -> Tracker:
    """Start (or resume) tracking one run; non-main ranks get a Tracker that does nothing.

    Under a W&B sweep agent, `sweep_run` says whether this is the run the agent launched the command for
    (see `WandbMirror.open`); the CLI starts the runs a command needs first (a plasticity probe's base and
    control) inside `outside_sweep()` instead, which has the same effect.

    `config` is the resolved config as a nested dict (`Config.to_dict()`). With `resume_step=None` the
    run starts fresh: earlier metrics, summary and mask snapshots in `run_dir` are removed. With a step,
    the store is rewound to that step (see `RunStore.rewind`) and the W&B run of the same id is resumed.
    """
    if not is_main:
        return Tracker()
    store = RunStore(run_dir)
    store.create()
    if resume_step is None:
        store.clear()
    else:
        store.rewind(resume_step)
    store.write_config(config)
    store.set_status("running")
    mirror = None
    if tracking.wandb != "disabled":
        mirror = WandbMirror.open(
            Path(run_dir),
            config,
            tracking=tracking,
            run_id=run_id,
            tags=tags,
            resumed=resume_step is not None,
            sweep_run=sweep_run,
        )
    return RunTracker(store, mirror, mask_snapshots=tracking.mask_snapshots)


# ---------------------------------------------------------------------------------------------------------
# The W&B mirror


class WandbMirror:
    """Forwards records, mask snapshots and the summary to one W&B run; stops for good at the first failure."""

    def __init__(self, run: Any, run_id: str) -> None:
        self._run = run
        self._run_id = run_id

    @property
    def active(self) -> bool:
        return self._run is not None

    @classmethod
    def open(
        cls,
        run_dir: Path,
        config: Mapping[str, Any],
        *,
        tracking: TrackingSettings,
        run_id: str,
        tags: list[str],
        resumed: bool,
        sweep_run: bool = True,
    ) -> WandbMirror | None:
        """A mirror onto a new or resumed W&B run, or None (after one warning) if W&B cannot start.

        Under `wandb agent` (WANDB_SWEEP_ID and WANDB_RUN_ID set) the sweep's run is the agent's: it keeps
        the agent's run id (the local run id becomes its name) and is online, since a sweep sees only
        online runs. Runs the command needs first (a probe's base and control) are mirrored as ordinary
        runs of the project, outside the sweep.
        """
        try:
            import wandb
        except ImportError as error:
            logger.warning(
                "W&B mirror off: wandb cannot be imported (%s); the local run store is complete", error
            )
            return None
        mode = tracking.wandb
        agent = _agent_run_id()
        wandb_id = run_id
        if agent is not None and sweep_run:
            wandb_id, mode = agent, "online"
        try:
            if mode == "online" and not _has_credentials(wandb):
                logger.warning(
                    "W&B online mode needs credentials (WANDB_API_KEY or `wandb login`); mirroring offline "
                    "instead: upload later with `wandb sync %s`",
                    run_dir / "wandb",
                )
                mode = "offline"
            with _outside_sweep(agent is not None and not sweep_run):
                run = wandb.init(
                    project=tracking.wandb_project,
                    entity=tracking.wandb_entity,
                    # WANDB_DIR, when set, wins; otherwise W&B's files go to <run_dir>/wandb.
                    dir=None if os.environ.get("WANDB_DIR") else str(run_dir),
                    id=wandb_id,
                    name=run_id,
                    group=tracking.group,
                    job_type=tracking.job_type,
                    tags=list(tags),
                    config=dict(config),
                    mode=mode,
                    resume="allow",
                    settings=_wandb_settings(wandb),
                )
            run.define_metric("step")
            run.define_metric("*", step_metric="step")
        except (
            Exception
        ) as error:  # W&B raises many types (UsageError, CommError, timeouts); none may stop a run
            logger.warning(
                "W&B mirror off: wandb.init failed (%s: %s); the local run store is complete",
                type(error).__name__,
                error,
            )
            return None
        logger.info("W&B mirror: %s run %s%s in %s", mode, run_id, " (resumed)" if resumed else "", run.dir)
        return cls(run, run_id)

    def log(self, record: Mapping[str, Any]) -> None:
        if self._run is None:
            return
        try:
            self._run.log(dict(record))
        except Exception as error:  # see _stop
            self._stop("log", error)

    def log_masks(self, step: int, path: Path) -> None:
        if self._run is None:
            return
        try:
            import wandb

            from harness.store.wandb_offline import RUN_FILE_KEY

            # By reference to the run store's file ("immutable": W&B copies nothing into its global staging
            # folder), so an offline run's payloads travel with the run directory; the metadata names the
            # file inside it, for `harness wandb --relocate` after a move.
            metadata = {"step": step, RUN_FILE_KEY: f"{path.parent.name}/{path.name}"}
            artifact = wandb.Artifact(f"masks-{self._run_id}", type="masks", metadata=metadata)
            artifact.add_file(str(path), name=path.name, policy="immutable")
            self._run.log_artifact(artifact, aliases=[f"step_{step}"])
        except Exception as error:  # see _stop
            self._stop("log_artifact", error)

    def finish(self, status: Status, summary: Mapping[str, Any] | None) -> None:
        if self._run is None:
            return
        try:
            if summary is not None:
                self._run.summary.update(dict(summary))
            self._run.finish(exit_code=0 if status == "completed" else 1)
        except Exception as error:  # see _stop
            self._stop("finish", error)
            return
        self._run = None

    def _stop(self, action: str, error: Exception) -> None:
        """The one warning for a failed mirror; the local store already holds everything, so the run goes on."""
        logger.warning(
            "W&B mirror off after %s failed (%s: %s); the local run store is complete",
            action,
            type(error).__name__,
            error,
        )
        run, self._run = self._run, None
        try:
            run.finish(exit_code=1)
        except Exception as finish_error:  # already warned; the run must go on
            logger.debug("W&B finish after failure also failed: %s", finish_error)


def _agent_run_id() -> str | None:
    """The run id a W&B sweep agent assigned to this command, if the command runs under one."""
    if os.environ.get("WANDB_SWEEP_ID"):
        return os.environ.get("WANDB_RUN_ID")
    return None


def outside_sweep() -> contextlib.AbstractContextManager[None]:
    """Runs started inside are not the W&B sweep agent's run: they mirror as ordinary runs of the project.

    For the runs a command needs before the one the agent launched it for (a probe's base and control)."""
    return _outside_sweep(True)


@contextlib.contextmanager
def _outside_sweep(active: bool) -> Iterator[None]:
    """Hide the agent's variables while W&B starts a run that must not join the sweep."""
    if not active:
        yield
        return
    hidden = {name: os.environ.pop(name) for name in list(os.environ) if name in _AGENT_VARIABLES}
    try:
        yield
    finally:
        os.environ.update(hidden)


# What `wandb agent` sets for the command it launches (wandb/sdk/launch/sweeps, wandb/agents).
_AGENT_VARIABLES = ("WANDB_SWEEP_ID", "WANDB_RUN_ID", "WANDB_SWEEP_PARAM_PATH", "WANDB_RESUME")


def _has_credentials(wandb: Any) -> bool:
    """Whether online mode can authenticate, asked without a prompt and without the network.

    wandb.init itself would prompt for an API key on a terminal; login(prompt=False) only answers.
    """
    if wandb.run is not None:
        return True  # a W&B run is already open in this process, so its credentials were fine
    wandb.setup(settings=wandb.Settings(silent=True))  # login() prints through the process-wide settings
    return bool(wandb.login(prompt=False, verify=False))


def _wandb_settings(wandb: Any) -> Any:
    """Settings under which W&B cannot prompt, print, capture the console or wait without bound."""
    return wandb.Settings(
        silent=True,
        console="off",  # no stdout/stderr capture: our logging stays ours, and nothing wraps the streams
        save_code=False,
        disable_code=True,
        init_timeout=WANDB_INIT_TIMEOUT_S,
        finish_timeout=WANDB_FINISH_TIMEOUT_S,
        # Each tracker owns its run object; sequential or parallel runs in one process (plasticity
        # probes, tests) never reuse or finish each other's run.
        reinit="create_new",
    )

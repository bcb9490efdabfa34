"""`harness run` and `harness plasticity` as library calls: a typed request in, an exit code out.

Exit codes: 0 done, 2 user error (raised as UserError for the CLI to print), 3 stopped by a signal
(resumable), 1 a failed run with a clear cause. A command asked for several processes re-executes itself
under torchrun (`harness.launch.torchrun`) and returns torchrun's code.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from harness import config as configuration
from harness.data.presence import CPU_DATASET, missing_data, require_data
from harness.engine.signals import hand_over_stop_signals
from harness.launch.command_line import Launch, ProbeRequest, RunRequest, Training
from harness.launch.planning import plasticity_configs, run_config
from harness.launch.torchrun import launch_if_needed

log = logging.getLogger("harness")


def run(request: RunRequest, out: TextIO | None = None) -> int:
    """Train one model with one method (or, with --dry-run, print its config and run directory)."""
    config = run_config(request)
    cpu_command = f"harness run {config.sparsity.method} --arch {config.model.arch} --dataset {CPU_DATASET}"
    return start([config], request.training, lambda dist: train_or_skip(config, dist), out, cpu_command)


def plasticity(request: ProbeRequest, out: TextIO | None = None) -> int:
    """One probe of the pruning-plasticity study, its base run and control first where missing."""
    configs = plasticity_configs(request)
    cpu_command = (
        f"harness plasticity --probe-epoch {request.study.probe_epoch} --pruning-rate {request.study.pruning_rate} "
        f"--arch {configs[0].model.arch} --dataset {CPU_DATASET}"
    )
    return start(configs, request.training, lambda dist: run_plasticity(configs, dist), out, cpu_command)


def start(
    configs: list[configuration.Config],
    training: Training,
    work: Callable[[Any], Path],
    out: TextIO | None,
    cpu_command: str,
) -> int:
    """The dry run's listing, or `work` in this process or under torchrun; the last config is the command's.

    The dataset is checked first, before torch is imported or anything is created (`require_data`); without
    it the error names `cpu_command`, this command on the CPU study's dataset."""
    out = sys.stdout if out is None else out
    if training.dry_run:
        print_dry_run(configs, training.launch, out)
        return 0
    require_data(configs[-1].data, cpu_command)
    hand_over_stop_signals()
    stopped = launch_if_needed(training.launch, configs[-1].optim.batch_size)
    if stopped is not None:
        return stopped
    return execute(configs[-1].run.device, work, out)


def print_dry_run(configs: list[configuration.Config], launch: Launch, out: TextIO) -> None:
    """The last config as YAML, then every run directory the command produces; creates nothing."""
    warn_if_data_missing(configs[-1])
    out.write(configuration.dump_yaml(configs[-1]))
    for config in configs:
        out.write(f"{configuration.run_directory(config, launch.world_size)}\n")


def warn_if_data_missing(config: configuration.Config) -> None:
    """A dry run creates nothing, but says (one line on stderr) when the real run would not find its data."""
    reason = missing_data(config.data)
    if reason is not None:
        sys.stderr.write(f"warning: {reason}\n")


def run_plasticity(configs: list[configuration.Config], dist: Any) -> Path:
    from harness.engine.lifecycle import run_training
    from harness.store.tracking import outside_sweep
    from harness.studies.probe import run_probe

    path = None
    for index, config in enumerate(configs):
        # Under a W&B sweep agent the last run is what the agent launched this command for; the runs it needs
        # first (base, control) are mirrored as ordinary runs of the project, outside the sweep.
        with contextlib.nullcontext() if index == len(configs) - 1 else outside_sweep():
            result = run_training(config, dist) if config.plasticity is None else run_probe(config, dist)
        if result.skipped:
            log.info("already completed: %s", result.run_dir)
        path = result.run_dir
    assert path is not None
    return path


def train_or_skip(config: configuration.Config, dist: Any) -> Path:
    from harness.engine.lifecycle import run_training

    result = run_training(config, dist)
    if result.skipped:
        log.info("already completed: %s", result.run_dir)
    return result.run_dir


def execute(device: str, work: Callable[[Any], Path], out: TextIO) -> int:
    """Run `work(dist)` in this process (one rank of a torchrun job, or alone) and print its result path."""
    from harness.engine.distributed import MaskMismatchError, dist_info_from_env, init_distributed, teardown
    from harness.engine.loop import Interrupted, NonFiniteError
    from harness.store.rundir import StorageFullError

    dist = dist_info_from_env(device)
    init_distributed(dist)
    try:
        path = work(dist)
    except Interrupted as stopped:
        log.warning("%s", stopped)
        # The traceback's frames still hold the model and its DDP wrapper, which must be gone before
        # teardown (see harness.engine.distributed.teardown).
        traceback.clear_frames(stopped.__traceback__)
        teardown(dist)
        return 3
    # Any other failure, a UserError included, leaves without teardown: it may have happened on this rank
    # only, and teardown's barrier would wait for peers that never arrive. torchrun stops the peers.
    except (MaskMismatchError, NonFiniteError, StorageFullError) as failure:
        # A failed run with a clear cause: one line, no traceback; peers are stopped by torchrun.
        sys.stderr.write(f"error: {failure}\n")
        return 1
    teardown(dist)
    if dist.is_main:
        out.write(f"{path}\n")
    return 0

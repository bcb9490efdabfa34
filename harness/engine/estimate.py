"""A warning, before the first step, when a CPU run would take hours (the paper's CIFAR recipe on a laptop).

The estimate is the run's training FLOPs (`harness.engine.flops`: 3 x samples x the dense forward FLOPs, an
upper bound for a sparse run) over the FLOP rate of one training step measured here. The step is measured on
a copy of the model with zero inputs, so the run's weights, BatchNorm statistics and random streams are
untouched (a run with the warning computes exactly what it computes without it). Runs whose FLOPs could not
take an hour even at a slow CPU's rate are not measured at all: the CPU recipes pay nothing.
"""

from __future__ import annotations

import copy
import logging
import time

import torch

from harness.data.presence import CPU_DATASET
from harness.engine.session import Session

log = logging.getLogger("harness")

LONG_RUN_SECONDS = 3600.0
# Below this many training FLOPs a run cannot take an hour at 1e9 FLOP/s (a slow core): not worth a step.
MEASURE_ABOVE_FLOPS = LONG_RUN_SECONDS * 1e9


def training_flops(session: Session) -> float:
    """Upper bound of the run's training FLOPs: every step at the dense network's cost."""
    batch = session.config.optim.batch_size
    return 3.0 * batch * session.current_flops().dense * session.total_steps


def measure_step_seconds(session: Session) -> float:
    """Seconds of one forward and backward pass of a batch through a copy of the model (the second of two:
    the first pays one-off allocation)."""
    model = copy.deepcopy(session.model).train()
    batch = torch.zeros(session.config.optim.batch_size, *session.input_shape, device=session.device)
    seconds = 0.0
    for _ in range(2):
        started = time.perf_counter()
        model(batch).sum().backward()
        seconds = time.perf_counter() - started
    return seconds


def long_run_warning(session: Session) -> str | None:
    """The one warning line for a CPU run estimated at over an hour, else None."""
    if session.device.type != "cpu":
        return None
    flops = training_flops(session)
    if flops < MEASURE_ABOVE_FLOPS:
        return None
    step_seconds = measure_step_seconds(session)
    step_flops = flops / session.total_steps
    rate = step_flops / step_seconds
    seconds = flops / rate
    if seconds < LONG_RUN_SECONDS:
        return None
    config = session.config
    return (
        f"this run would take about {seconds / 3600:.1f} h on this CPU: {flops:.1e} training FLOPs "
        f"({session.total_steps} steps of {config.optim.batch_size}) at {rate:.1e} FLOP/s measured on one step; "
        f"the CPU recipe takes minutes: harness run {config.sparsity.method} --arch {config.model.arch} "
        f"--dataset {CPU_DATASET}"
    )


def warn_if_long(session: Session) -> None:
    warning = long_run_warning(session)
    if warning is not None:
        log.warning("%s", warning)

"""Which GPUs a local sweep may use, found without importing torch, and which of them each run gets.

`harness sweep run --gpus auto|none|LIST` names the GPUs; auto reads `CUDA_VISIBLE_DEVICES` when it is set
(the GPUs a scheduler or the user gave this process) and otherwise asks `nvidia-smi -L`. No GPU found
leaves the children's environment exactly as it was before placement existed.

With G GPUs and N workers, at most k = ceil(N / G) runs share a GPU. Each run starts on the least occupied
GPU (so the slot of a finished run is taken again on its GPU), sees only that GPU (`CUDA_VISIBLE_DEVICES`),
and, when k > 1, is told its share of the GPU's memory, 1/k, through `MEMORY_FRACTION_VARIABLE`; the run
applies it with `torch.cuda.set_per_process_memory_fraction` (`harness.engine.distributed`).

Placement is not part of a run id: which physical GPU a run uses and which runs it shares the GPU with
change nothing in its computation beyond the nondeterminism GPU kernels already have.
"""

from __future__ import annotations

import logging
import math
import os
import re
import subprocess
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

from harness.errors import UserError

log = logging.getLogger("harness.launch.sweep")

# Read by the run (harness.engine.distributed, which cannot be imported here: it imports torch).
MEMORY_FRACTION_VARIABLE = "HARNESS_GPU_MEMORY_FRACTION"
VISIBLE_VARIABLE = "CUDA_VISIBLE_DEVICES"
# nvidia-smi answers in well under a second with the driver loaded; a hung driver must not hang the sweep.
NVIDIA_SMI_TIMEOUT_S = 10.0
GPU_LINE = re.compile(r"GPU (\d+):")
GPU_LIST = re.compile(r"\d+(,\d+)*")


# ---------------------------------------------------------------------------------------------------------
# Finding the GPUs


def visible_devices(value: str) -> tuple[str, ...]:
    """The devices a `CUDA_VISIBLE_DEVICES` value lets CUDA see: its entries up to the first empty or
    negative one (CUDA ignores everything from there on, which is how `-1` or `""` hide every GPU)."""
    devices: list[str] = []
    for entry in value.split(","):
        entry = entry.strip()
        if not entry or entry.startswith("-"):
            break
        devices.append(entry)
    return tuple(devices)


def nvidia_smi_gpus(timeout_s: float = NVIDIA_SMI_TIMEOUT_S) -> tuple[str, ...]:
    """The indices `nvidia-smi -L` lists (`GPU 0: NVIDIA H100 ... (UUID: ...)`); none without the tool."""
    try:
        listing = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL
        )
    except FileNotFoundError:
        return ()
    except subprocess.TimeoutExpired:
        log.warning("nvidia-smi -L did not answer within %g s: the sweep places no run on a GPU", timeout_s)
        return ()
    except OSError as error:
        log.warning("nvidia-smi -L could not be run (%s): the sweep places no run on a GPU", error)
        return ()
    if listing.returncode != 0:
        # No driver, or no device: the same answer as no tool, the runs go where they would have gone.
        log.debug("nvidia-smi -L exited %d: %s", listing.returncode, listing.stderr.strip())
        return ()
    return tuple(match.group(1) for line in listing.stdout.splitlines() if (match := GPU_LINE.match(line)))


def available_gpus(environ: Mapping[str, str] | None = None) -> tuple[tuple[str, ...], str]:
    """The GPUs this process may use and where that came from (for messages)."""
    environ = os.environ if environ is None else environ
    if VISIBLE_VARIABLE in environ:
        value = environ[VISIBLE_VARIABLE]
        return visible_devices(value), f"{VISIBLE_VARIABLE}={value!r}"
    return nvidia_smi_gpus(), "nvidia-smi -L"


def choose_gpus(spec: str, environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """`--gpus`: auto (every available GPU), none, or a comma-separated list of available GPU indices
    (as nvidia-smi numbers them, or as `CUDA_VISIBLE_DEVICES` names them when it is set).
    Raises UserError naming `--gpus` for anything else."""
    if spec == "none":
        return ()
    if spec != "auto" and not GPU_LIST.fullmatch(spec):
        raise UserError(
            f"--gpus: {spec!r} is not auto, none or a comma-separated list of GPU indices such as 0,1"
        )
    found, source = available_gpus(environ)
    if spec == "auto":
        return found
    asked = spec.split(",")
    repeated = sorted({gpu for gpu in asked if asked.count(gpu) > 1}, key=int)
    if repeated:
        raise UserError(f"--gpus: {spec}: GPU {repeated[0]} is given twice; name each GPU once")
    missing = [gpu for gpu in asked if gpu not in found]
    if missing:
        have = f"available: {', '.join(found)}" if found else "no GPU available"
        raise UserError(f"--gpus: {spec}: GPU {missing[0]} is not available ({have}, per {source})")
    return tuple(asked)


# ---------------------------------------------------------------------------------------------------------
# Placing runs


@dataclass(frozen=True)
class Placement:
    """The GPUs one run sees and its share of each one's memory (None: the whole of it)."""

    gpus: tuple[str, ...]
    memory_fraction: float | None = None

    def environment(self) -> dict[str, str]:
        env = {VISIBLE_VARIABLE: ",".join(self.gpus)}
        if self.memory_fraction is not None:
            env[MEMORY_FRACTION_VARIABLE] = repr(self.memory_fraction)
        return env


class GpuSlots:
    """Which GPUs the sweep's running runs hold; each GPU holds at most `per_gpu` = ceil(workers / GPUs)."""

    def __init__(self, gpus: Sequence[str], workers: int) -> None:
        if not gpus:
            raise ValueError("GpuSlots needs at least one GPU")
        self.gpus = tuple(gpus)
        self.per_gpu = math.ceil(workers / len(self.gpus))
        # Runs sharing a GPU share its memory evenly; a run alone on its GPU keeps all of it.
        self.memory_fraction = None if self.per_gpu == 1 else 1.0 / self.per_gpu
        self.occupancy = dict.fromkeys(self.gpus, 0)
        self.placed: dict[Hashable, Placement] = {}

    def place(self, run: Hashable, processes: int = 1) -> Placement | None:
        """Place `run` on the least occupied GPUs with room, one per process (ties: the first in the list),
        or return None while too few have room (the run waits for one to finish). A run of more processes
        than there are GPUs gets them all (and its launcher says why that cannot work)."""
        wanted = min(processes, len(self.gpus))
        free = [gpu for gpu in self.gpus if self.occupancy[gpu] < self.per_gpu]
        if len(free) < wanted:
            return None
        least = set(sorted(free, key=lambda gpu: self.occupancy[gpu])[:wanted])  # stable: list order on ties
        chosen = tuple(gpu for gpu in self.gpus if gpu in least)
        for gpu in chosen:
            self.occupancy[gpu] += 1
        self.placed[run] = Placement(chosen, self.memory_fraction)
        return self.placed[run]

    def release(self, run: Hashable) -> None:
        """`run` has ended: its GPUs have room again."""
        for gpu in self.placed.pop(run).gpus:
            self.occupancy[gpu] -= 1

    def describe(self) -> str:
        share = "" if self.memory_fraction is None else f", each with 1/{self.per_gpu} of its memory"
        return f"GPUs {', '.join(self.gpus)} (at most {self.per_gpu} runs per GPU{share})"

"""Multi-process training: the torchrun environment as a DistInfo, process-group life cycle, and collectives.

`harness run ... --nproc-per-node N` re-executes itself under torchrun (`harness.launch.torchrun`); each child
reads its place once with `dist_info_from_env`, calls `init_distributed`, trains, and ends with
`teardown`. Backend: nccl on GPUs, gloo on CPU. Every helper is a no-op for a single process, so the
trainer calls them unconditionally.

Failure behaviour (measured here, torch 2.14 CPU, gloo, 2 processes under torchrun --standalone): when
one rank raises, its process exits non-zero, torchrun's agent notices within its 0.1 s monitor
interval and sends SIGTERM to the other ranks; the whole job is gone in about a second and torchrun
exits non-zero. The process-group timeout (`timeout_s`) only matters for a rank that hangs while
staying alive: its peers' collectives raise after `timeout_s` instead of the default 30 minutes, and
torchrun then stops the hung rank.
"""

from __future__ import annotations

import gc
import logging
import math
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from harness.errors import UserError

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 120.0
# Set by a local sweep that places several runs on one GPU (harness.launch.gpus): this run's share of its memory.
MEMORY_FRACTION_VARIABLE = "HARNESS_GPU_MEMORY_FRACTION"


class MaskMismatchError(RuntimeError):
    """Ranks disagree on a value that must be identical everywhere (e.g. a mask checksum)."""


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job, read once from the torchrun environment."""

    rank: int
    world_size: int
    local_rank: int
    backend: str | None  # None for a single process: no process group at all
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int, minimum: int) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise UserError(f"{name}={raw!r}: must be an integer >= {minimum}") from None
    if value < minimum:
        raise UserError(f"{name}={raw!r}: must be an integer >= {minimum}")
    return value


def memory_fraction_from_env() -> float | None:
    """HARNESS_GPU_MEMORY_FRACTION as a number in (0, 1], or None when it is not set."""
    raw = os.environ.get(MEMORY_FRACTION_VARIABLE)
    if raw is None:
        return None
    try:
        fraction = float(raw)
    except ValueError:
        fraction = math.nan
    if not 0.0 < fraction <= 1.0:  # NaN fails this too
        raise UserError(
            f"{MEMORY_FRACTION_VARIABLE}={raw!r}: must be a number in (0, 1], this run's share of its GPU's memory"
        )
    return fraction


def dist_info_from_env(device_preference: str = "auto") -> DistInfo:
    """RANK, WORLD_SIZE and LOCAL_RANK as torchrun sets them (absent: one process), and the device to use.

    `device_preference` is `run.device`: auto (a GPU when there is one), cpu or cuda. On a GPU, the caching
    allocator is capped at HARNESS_GPU_MEMORY_FRACTION of the device's memory when it is set (checked on
    any device).
    """
    memory_fraction = memory_fraction_from_env()
    world_size = _env_int("WORLD_SIZE", 1, minimum=1)
    rank = _env_int("RANK", 0, minimum=0)
    local_rank = _env_int("LOCAL_RANK", 0, minimum=0)
    if rank >= world_size:
        raise UserError(f"RANK={rank}: must be below WORLD_SIZE={world_size}")
    if device_preference not in ("auto", "cpu", "cuda"):
        raise UserError(f"run.device: {device_preference!r} is not one of auto, cpu, cuda")
    if device_preference == "cuda" and not torch.cuda.is_available():
        raise UserError("run.device: 'cuda' was requested but no GPU is available; use 'cpu' or 'auto'")
    use_cuda = device_preference == "cuda" or (device_preference == "auto" and torch.cuda.is_available())
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise UserError(
                f"LOCAL_RANK={local_rank}: this machine has {torch.cuda.device_count()} GPUs; "
                "use at most that many --nproc-per-node"
            )
        device = torch.device("cuda", local_rank)
        if memory_fraction is not None:
            torch.cuda.set_per_process_memory_fraction(memory_fraction, device)
    else:
        device = torch.device("cpu")
    backend = None if world_size == 1 else ("nccl" if use_cuda else "gloo")
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, backend=backend, device=device)


def init_distributed(info: DistInfo, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    """Join the process group (env:// rendezvous set up by torchrun); nothing to do for one process.

    `timeout_s` bounds every collective: a peer that hangs fails the job after that long rather than
    after the 30-minute default. Keep it above the longest stretch one rank can spend alone (e.g. a
    dataset download on rank 0 while the others wait at a barrier).
    """
    if not info.is_distributed:
        return
    if dist.is_initialized():
        if dist.get_world_size() != info.world_size or dist.get_rank() != info.rank:
            raise RuntimeError("a different process group is already initialised in this process")
        return
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing:
        raise UserError(
            f"{', '.join(missing)}: not set; start multi-process runs with --nproc-per-node (torchrun sets them)"
        )
    device_id = None
    if info.device.type == "cuda":
        torch.cuda.set_device(info.device)
        device_id = info.device  # binds NCCL to this GPU at once, so barriers know the device
    dist.init_process_group(
        backend=info.backend,
        rank=info.rank,
        world_size=info.world_size,
        timeout=timedelta(seconds=timeout_s),
        device_id=device_id,
    )
    logger.debug("rank %d/%d joined the %s process group", info.rank, info.world_size, info.backend)


def teardown(info: DistInfo) -> None:
    """Leave the process group cleanly: garbage-collect, pass a barrier, then destroy the group.

    The caller deletes its model, DDP wrapper and optimizer first. Why (a pitfall measured on this torch
    version): gloo aborts at interpreter exit in a fraction of runs otherwise. DDP's reducer holds the
    process group, so the wrapper must be gone (deleted, then collected here) before the group is
    destroyed; and the barrier keeps one rank from destroying its end while a peer still communicates.
    """
    if not info.is_distributed or not dist.is_initialized():
        return
    gc.collect()
    barrier(info)
    dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    """Wait until every rank gets here (bounded by the process-group timeout). A no-op for one process."""
    if not info.is_distributed:
        return
    if info.backend == "nccl":
        dist.barrier(device_ids=[info.local_rank])
    else:
        dist.barrier()


def all_reduce_sum(info: DistInfo, tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over all ranks, in place; returns it. A no-op for one process."""
    if info.is_distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def check_identical(info: DistInfo, values: torch.Tensor, names: list[str], *, what: str, step: int) -> None:
    """Raise MaskMismatchError on every rank unless all ranks hold the same `values` (int64, one per name).

    The message names the first differing entry, each rank's value for it, `what` and `step`.
    """
    if values.dim() != 1 or values.numel() != len(names):
        raise ValueError(f"check_identical: {values.numel()} values for {len(names)} names")
    if not info.is_distributed:
        return
    local = values.detach().to(info.device, torch.int64)
    gathered = [torch.empty_like(local) for _ in range(info.world_size)]
    dist.all_gather(gathered, local)
    table = torch.stack(gathered).cpu()  # rank x entry
    differs = (table != table[0]).any(dim=0)
    if not bool(differs.any()):
        return
    index = int(differs.nonzero()[0])
    per_rank = ", ".join(f"rank {rank}: {int(table[rank, index])}" for rank in range(info.world_size))
    others = int(differs.sum()) - 1
    more = f" (and {others} more entries differ)" if others else ""
    raise MaskMismatchError(
        f"{what} differs across ranks at step {step}: {names[index]} has {per_rank}{more}"
    )


def broadcast_tensors(info: DistInfo, tensors: list[torch.Tensor], src: int = 0) -> None:
    """Overwrite `tensors` on every rank with rank `src`'s values, in place; one collective per dtype."""
    if not info.is_distributed or not tensors:
        return
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for tensor in tensors:
        by_dtype.setdefault(tensor.dtype, []).append(tensor)
    for group in by_dtype.values():
        flat = torch.cat([tensor.detach().reshape(-1).to(info.device) for tensor in group])
        dist.broadcast(flat, src=src)
        offset = 0
        for tensor in group:
            count = tensor.numel()
            with torch.no_grad():
                tensor.copy_(flat[offset : offset + count].view_as(tensor))
            offset += count

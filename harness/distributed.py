"""Multi-process training: the torchrun environment as a DistInfo, process-group life cycle, and collectives.

`harness run ... --nproc-per-node N` re-executes itself under torchrun (`torchrun_command`); each child
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
import os
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from harness.errors import UserError

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 120.0


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


def dist_info_from_env(device_preference: str = "auto") -> DistInfo:
    """RANK, WORLD_SIZE and LOCAL_RANK as torchrun sets them (absent: one process), and the device to use.

    `device_preference` is `run.device`: auto (a GPU when there is one), cpu or cuda.
    """
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


_PR_SET_PDEATHSIG = 1


def die_with_torchrun() -> None:
    """In a torchrun worker: ask Linux to send this process SIGTERM when torchrun dies, even by SIGKILL.

    Otherwise SIGKILL of torchrun (an OOM killer, `kill -9`, a scheduler's hard stop) leaves the workers
    training on as orphans that a re-run would race with. SIGTERM rather than SIGKILL: every worker gets
    it at once, so they agree to stop, checkpoint, and exit 3. Not available off Linux: a no-op there.
    """
    if not sys.platform.startswith("linux") or not under_torchrun():
        return
    import ctypes
    import signal

    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # torchrun died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def under_torchrun() -> bool:
    """Whether this process is a torchrun child (so it must not launch torchrun again)."""
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

"""Two launcher failures of issue 12, with real processes: a rank 0 that waits for another process's run
lock must not time out its peers, and SIGKILL of torchrun must not leave its workers training on."""

from __future__ import annotations

import fcntl
import os
import signal
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as multiprocessing
from test_ddp import (
    JOB_TIMEOUT_S,
    data_options,
    harness_command,
    job_environment,
    process_table,
    started,
    workspace,  # noqa: F401 (a fixture)
)
from test_distributed import _free_port

COLLECTIVE_TIMEOUT_S = 3.0  # the process-group timeout of the lock test's ranks
LOCK_HELD_S = 3 * COLLECTIVE_TIMEOUT_S  # well past it


def _lock_worker(rank: int, port: int, run_dir: str, out_dir: str) -> None:
    from harness.engine.distributed import all_reduce_sum, dist_info_from_env, init_distributed, teardown
    from harness.engine.lifecycle import run_lock

    os.environ.update(
        RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    info = dist_info_from_env("cpu")
    init_distributed(info, timeout_s=COLLECTIVE_TIMEOUT_S)
    Path(out_dir, f"started{rank}").touch()
    with run_lock(Path(run_dir), info):
        # The first collective after the lock: a peer that did not wait with rank 0 would time out here.
        total = all_reduce_sum(info, torch.tensor([float(rank + 1)]))
    teardown(info)
    Path(out_dir, f"rank{rank}.txt").write_text(f"sum {total.item()}\n")


@pytest.mark.slow
def test_ranks_wait_for_a_run_lock_held_longer_than_the_collective_timeout(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "default" / "granet-x"
    run_dir.parent.mkdir(parents=True)
    with open(run_dir.parent / f".{run_dir.name}.lock", "w") as other_process:
        fcntl.flock(other_process, fcntl.LOCK_EX)
        context = multiprocessing.spawn(
            _lock_worker, args=(_free_port(), str(run_dir), str(tmp_path)), nprocs=2, join=False
        )
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while not all((tmp_path / f"started{rank}").exists() for rank in (0, 1)):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(LOCK_HELD_S)  # both ranks are in the process group and rank 0 waits for the lock
        assert not (tmp_path / "rank0.txt").exists()  # nobody went ahead while the lock was held
        fcntl.flock(other_process, fcntl.LOCK_UN)
    while not context.join(timeout=JOB_TIMEOUT_S):
        pass
    for rank in (0, 1):
        assert (tmp_path / f"rank{rank}.txt").read_text() == "sum 3.0\n"


def children(pid: int) -> list[int]:
    return [child for child, (parent, _) in process_table().items() if parent == pid]


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def running(pid: int) -> bool:
    return process_table().get(pid, (0, "X"))[1] not in ("Z", "X")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc")
def test_workers_stop_and_checkpoint_when_torchrun_is_killed(
    workspace: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    runs_dir = tmp_path / "runs"
    options = [
        "granet", "--arch", "resnet20", "--dataset", "mnist1d", "--epochs", "200", "--batch-size", "128",
        "--wandb", "disabled", "--set", "data.num_samples=4000", "--set", "data.val_size=200",
        "--set", "model.width=0.25", *data_options(workspace, runs_dir),
    ]  # fmt: skip
    argv = harness_command("run", *options, "--nproc-per-node", "2")
    with started(argv, job_environment(), tmp_path) as launcher:
        deadline = time.monotonic() + JOB_TIMEOUT_S
        run_dirs: list[Path] = []
        while not any((run_dir / "checkpoints" / "last.pt").exists() for run_dir in run_dirs):
            assert launcher.poll() is None, launcher.stderr.read() if launcher.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.2)
            run_dirs = (
                list((runs_dir / "default").glob("granet-*")) if (runs_dir / "default").exists() else []
            )
        (torchrun,) = [pid for pid in children(launcher.pid) if "torch.distributed.run" in cmdline(pid)]
        workers = children(torchrun)
        assert len(workers) == 2
        os.kill(torchrun, signal.SIGKILL)
        while any(running(worker) for worker in workers):
            assert time.monotonic() < deadline, "workers still running after torchrun was killed"
            time.sleep(0.2)
        launcher.wait(timeout=JOB_TIMEOUT_S)
    (run_dir,) = run_dirs
    assert (run_dir / "status").read_text() != "completed\n"
    checkpoint = torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert checkpoint["step"] > 0

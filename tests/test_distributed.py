"""DistInfo from the environment, single-process no-ops, real 2-process gloo collectives, torchrun argv."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as multiprocessing

from harness.engine.distributed import (
    DistInfo,
    MaskMismatchError,
    all_reduce_sum,
    broadcast_tensors,
    check_identical,
    dist_info_from_env,
    init_distributed,
    teardown,
)
from harness.errors import UserError
from harness.launch.torchrun import torchrun_command

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def clean_env(monkeypatch) -> pytest.MonkeyPatch:
    for name in TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


SINGLE = DistInfo(rank=0, world_size=1, local_rank=0, backend=None, device=torch.device("cpu"))


# ---------------------------------------------------------------------------------------------------------
# DistInfo


def test_no_torchrun_environment_means_one_process(clean_env) -> None:
    info = dist_info_from_env("cpu")
    assert info == SINGLE
    assert info.is_main and not info.is_distributed


def test_torchrun_environment_is_read(clean_env) -> None:
    clean_env.setenv("RANK", "3")
    clean_env.setenv("WORLD_SIZE", "4")
    clean_env.setenv("LOCAL_RANK", "1")
    info = dist_info_from_env("cpu")
    assert info == DistInfo(rank=3, world_size=4, local_rank=1, backend="gloo", device=torch.device("cpu"))
    assert not info.is_main and info.is_distributed


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two': must be an integer >= 1"),
        ({"WORLD_SIZE": "0"}, "WORLD_SIZE='0': must be an integer >= 1"),
        ({"RANK": "-1"}, "RANK='-1': must be an integer >= 0"),
        ({"RANK": "2", "WORLD_SIZE": "2"}, "RANK=2: must be below WORLD_SIZE=2"),
    ],
)
def test_bad_torchrun_environment_is_a_user_error(clean_env, variables: dict, message: str) -> None:
    for name, value in variables.items():
        clean_env.setenv(name, value)
    with pytest.raises(UserError, match=f"^{message}$"):
        dist_info_from_env("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_cuda_without_a_gpu_is_a_user_error(clean_env) -> None:
    with pytest.raises(UserError, match="^run.device: 'cuda' was requested but no GPU is available"):
        dist_info_from_env("cuda")
    assert dist_info_from_env("auto").device == torch.device("cpu")


def test_single_process_helpers_do_nothing(clean_env) -> None:
    init_distributed(SINGLE)
    assert not torch.distributed.is_initialized()
    tensor = torch.tensor([1.0, 2.0])
    assert all_reduce_sum(SINGLE, tensor) is tensor
    assert tensor.tolist() == [1.0, 2.0]
    broadcast_tensors(SINGLE, [tensor])
    assert tensor.tolist() == [1.0, 2.0]
    check_identical(SINGLE, torch.tensor([1, 2]), ["a", "b"], what="mask", step=0)
    teardown(SINGLE)


def test_check_identical_wants_one_value_per_name() -> None:
    with pytest.raises(ValueError, match="3 values for 2 names"):
        check_identical(SINGLE, torch.tensor([1, 2, 3]), ["a", "b"], what="mask", step=0)


def test_multi_process_needs_the_rendezvous_address(clean_env) -> None:
    info = DistInfo(rank=0, world_size=2, local_rank=0, backend="gloo", device=torch.device("cpu"))
    with pytest.raises(UserError, match="^MASTER_ADDR, MASTER_PORT: not set"):
        init_distributed(info)


# ---------------------------------------------------------------------------------------------------------
# Two real gloo processes


NAMES = ["conv1.weight", "layer1.0.conv1.weight", "layer1.0.conv2.weight", "fc.weight"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _worker(rank: int, port: int, out_dir: str) -> None:
    """One rank: every collective the trainer uses, a mask mismatch, and teardown."""
    os.environ.update(
        RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    info = dist_info_from_env("cpu")
    init_distributed(info, timeout_s=30)
    report: list[str] = []

    check_identical(info, torch.tensor([11, 22, 33, 44]), NAMES, what="mask", step=100)
    report.append("equal: passed")

    perturbed = torch.tensor([11, 22, 33, 44]) if rank == 0 else torch.tensor([11, 22, 34, 45])
    try:
        check_identical(info, perturbed, NAMES, what="mask", step=300)
        report.append("perturbed: passed")
    except MaskMismatchError as error:
        report.append(f"perturbed: {error}")

    summed = all_reduce_sum(info, torch.tensor([float(rank + 1)]))
    report.append(f"sum: {summed.tolist()}")

    weights = torch.full((2, 3), float(rank))
    mask = torch.tensor([True, rank == 0, False])
    counter = torch.tensor([rank * 10], dtype=torch.int64)
    broadcast_tensors(info, [weights, mask, counter])
    report.append(f"broadcast: {weights.flatten().tolist()} {mask.tolist()} {counter.tolist()}")

    # (No DDP model here: building one costs ~4 s of lazy imports per process; the trainer's DDP test
    # covers teardown after training.)
    teardown(info)
    report.append(f"teardown: initialized={torch.distributed.is_initialized()}")
    Path(out_dir, f"rank{rank}.txt").write_text("\n".join(report) + "\n")


def test_two_gloo_processes_check_broadcast_and_tear_down(tmp_path: Path) -> None:
    multiprocessing.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)

    mismatch = (
        "perturbed: mask differs across ranks at step 300: layer1.0.conv2.weight has rank 0: 33, rank 1: 34 "
        "(and 1 more entries differ)"
    )
    for rank in (0, 1):
        assert (tmp_path / f"rank{rank}.txt").read_text().splitlines() == [
            "equal: passed",
            mismatch,
            "sum: [3.0]",
            "broadcast: [0.0, 0.0, 0.0, 0.0, 0.0, 0.0] [True, True, False] [0]",
            "teardown: initialized=False",
        ]


FAILING_JOB = """
import os
from pathlib import Path

import torch

from harness.engine.distributed import all_reduce_sum, dist_info_from_env, init_distributed, teardown

info = dist_info_from_env("cpu")
init_distributed(info, timeout_s=60)
attempt = int(os.environ["TORCHELASTIC_RESTART_COUNT"])
if info.rank == 1 and attempt < int(os.environ["FAILING_ATTEMPTS"]):
    raise RuntimeError(f"rank 1 fails before the collective (attempt {attempt})")
total = all_reduce_sum(info, torch.ones(1))
Path(os.environ["OUT_DIR"], f"rank{info.rank}-attempt{attempt}").write_text(str(total.item()))
teardown(info)
"""


def _run_job(tmp_path: Path, *, failing_attempts: int, max_restarts: int) -> subprocess.CompletedProcess:
    """FAILING_JOB under the exact torchrun argv the harness uses, with the module swapped for the job."""
    (tmp_path / "failing_job.py").write_text(FAILING_JOB)
    argv, additions = torchrun_command([], nproc_per_node=2, max_restarts=max_restarts)
    argv = ["failing_job" if token == "harness.cli" else token for token in argv]
    environment = {name: value for name, value in os.environ.items() if name not in TORCHRUN_VARIABLES}
    search_path = [str(tmp_path), str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")]
    environment |= additions | {
        "PYTHONPATH": os.pathsep.join(filter(None, search_path)),
        "OMP_NUM_THREADS": "1",
        "FAILING_ATTEMPTS": str(failing_attempts),
        "OUT_DIR": str(tmp_path),
    }
    # The timeout is a hang guard only: these jobs end in seconds (see harness.engine.distributed's docstring).
    return subprocess.run(argv, env=environment, capture_output=True, text=True, timeout=300)


def test_a_failing_rank_brings_the_torchrun_job_down(tmp_path: Path) -> None:
    completed = _run_job(tmp_path, failing_attempts=1, max_restarts=0)
    assert completed.returncode != 0
    assert "rank 1 fails before the collective (attempt 0)" in completed.stderr
    assert sorted(path.name for path in tmp_path.glob("rank*")) == []  # rank 0 never got past the collective


@pytest.mark.slow
def test_restarted_job_rejoins_with_the_launcher_environment(tmp_path: Path) -> None:
    # Without TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 the restarted ranks' gloo mesh times out connecting
    # (measured: "connectFullMesh failed ... Connect timeout" after ~110 s); with it they rejoin.
    completed = _run_job(tmp_path, failing_attempts=1, max_restarts=1)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert sorted(path.name for path in tmp_path.glob("rank*")) == ["rank0-attempt1", "rank1-attempt1"]
    assert (tmp_path / "rank0-attempt1").read_text() == "2.0"


# ---------------------------------------------------------------------------------------------------------
# torchrun command


def test_single_node_command_uses_standalone_rendezvous() -> None:
    argv, environment = torchrun_command(["run", "granet", "--epochs", "3"], nproc_per_node=2)
    assert argv == [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node=2",
        "--standalone",
        "--max-restarts=0",
        "-m",
        "harness.cli",
        "run",
        "granet",
        "--epochs",
        "3",
    ]
    assert environment == {}


@pytest.mark.parametrize(("node_rank", "is_host"), [(0, "true"), (2, "false")])
def test_multi_node_command_uses_c10d_hosted_by_node_zero(node_rank: int, is_host: str) -> None:
    argv, environment = torchrun_command(
        ["run", "granet"],
        nproc_per_node=8,
        nnodes=3,
        node_rank=node_rank,
        rdzv_endpoint="node0:29400",
        max_restarts=2,
    )
    assert argv == [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node=8",
        "--nnodes=3",
        "--rdzv-backend=c10d",
        "--rdzv-endpoint=node0:29400",
        f"--rdzv-conf=is_host={is_host}",
        "--max-restarts=2",
        "-m",
        "harness.cli",
        "run",
        "granet",
    ]
    assert environment == {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"nproc_per_node": 0}, "--nproc-per-node=0: must be at least 1"),
        ({"nproc_per_node": 2, "nnodes": 2}, "--rdzv-endpoint: required with --nnodes > 1"),
        (
            {"nproc_per_node": 2, "nnodes": 2, "node_rank": 2, "rdzv_endpoint": "h:1"},
            r"--node-rank=2: must be in \[0, 1\]",
        ),
        ({"nproc_per_node": 2, "max_restarts": -1}, "--max-restarts=-1: must be at least 0"),
    ],
)
def test_bad_launcher_options_are_user_errors(options: dict, message: str) -> None:
    with pytest.raises(UserError, match=f"^{message}"):
        torchrun_command(["run"], **options)

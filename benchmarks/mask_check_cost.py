"""Cost of one cross-rank mask check (checksums + all-gather) against one training step, on 2 gloo processes.

    .venv/bin/python benchmarks/mask_check_cost.py [--arch resnet20] [--width 0.25] [--repetitions 50]

Both are timed in the same 2-process job, interleaved, on a GraNet-masked ResNet-20 for MNIST-1D shapes
(batch 64 per rank, sequences of 40): one DDP training step (forward, backward, optimizer step, masks
applied) and one `harness.engine.lifecycle.check_masks` as `run.mask_check_every` triggers it. Medians over the
repetitions; rank 0 prints them and their ratio.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import time

import torch
import torch.multiprocessing as multiprocessing
from torch import nn


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def worker(rank: int, port: int, arch: str, width: float, repetitions: int) -> None:
    from types import SimpleNamespace

    from harness.engine.distributed import barrier, dist_info_from_env, init_distributed, teardown
    from harness.engine.lifecycle import check_masks
    from harness.models.build import build_model
    from harness.sparse import MaskSet

    os.environ.update(
        RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    info = dist_info_from_env("cpu")
    init_distributed(info)
    torch.manual_seed(0)
    model = build_model(arch, num_classes=10, input_shape=(1, 40), width=width)
    masks = MaskSet.for_model(model)
    for mask in masks.masks:
        mask.copy_(torch.rand(mask.shape) < 0.2)
    network = nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    inputs, targets = torch.randn(64, 1, 40), torch.randint(10, (64,))
    session = SimpleNamespace(dist=info, masks=masks)
    steps, checks = [], []
    for repetition in range(repetitions + 5):
        barrier(info)
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(network(inputs), targets).backward()
        optimizer.step()
        masks.apply()
        step_s = time.perf_counter() - started
        barrier(info)
        started = time.perf_counter()
        check_masks(session, repetition)
        check_s = time.perf_counter() - started
        if repetition >= 5:  # warm-up left out
            steps.append(step_s)
            checks.append(check_s)
    if info.is_main:
        step, check = statistics.median(steps), statistics.median(checks)
        print(
            f"{arch} width {width}: {masks.total} masked weights in {len(masks.names)} tensors; n={repetitions}; "
            f"median step {step * 1e3:.2f} ms, median mask check {check * 1e3:.3f} ms, ratio {check / step:.4f}"
        )
    del network, model, optimizer
    teardown(info)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet20")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--repetitions", type=int, default=50)
    args = parser.parse_args()
    multiprocessing.spawn(
        worker, args=(free_port(), args.arch, args.width, args.repetitions), nprocs=2, join=True
    )


if __name__ == "__main__":
    main()

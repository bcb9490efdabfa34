"""Command-line entry for the sparse-core benchmark (`harness.engine.bench.run_benchmarks`).

    .venv/bin/python benchmarks/bench_sparse.py --arch resnet20 --arch vgg19 --batch-size 128 --repetitions 5

Prints the environment and one row per architecture; `--json PATH` also writes the rows and environment.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from harness.engine.bench import environment, format_rows, run_benchmarks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--arch", action="append", help="architecture (repeatable); default resnet20 and vgg19"
    )
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    env = environment()
    rows = run_benchmarks(
        tuple(args.arch or ("resnet20", "vgg19")),
        batch_size=args.batch_size,
        repetitions=args.repetitions,
        warmup=args.warmup,
        sparsity=args.sparsity,
    )
    # Other processes share the machine: the load before and after says how much to trust the numbers.
    env["load_average_1min_after"] = environment()["load_average_1min"]
    print(format_rows(rows, env))
    if args.json is not None:
        args.json.write_text(
            json.dumps({"environment": env, "rows": [row.as_dict() for row in rows]}, indent=2)
        )


if __name__ == "__main__":
    main()

"""DDP on this machine: N consecutive 2-process runs without a crash at exit, and how fast a failing rank ends a job.

    .venv/bin/python benchmarks/ddp_stability.py --runs 20 --failures [--hang] [--json results.json]

Stability: `harness run granet ... --nproc-per-node 2` N times in a row (a small MNIST-1D run, a fresh
runs directory each time). A run is clean only if it exits 0, prints its run directory as the only stdout
line, its status reads `completed`, and stderr shows no sign of an abort at exit (gloo's "terminate
called", "Aborted", a core dump, a worker ended by a signal).

Failure timing (--failures): the same command under an outer torchrun, through a driver that makes rank 1,
right after optimizer step FAULT_STEP, raise an exception, SIGKILL itself, or flip one mask entry; with
--hang also sleep forever while alive (this one lasts the process-group timeout plus torchrun's grace
period, ~2.5 minutes). Reported: seconds from the fault (a wall-clock stamp the driver prints) to the end
of the whole job, its exit code, and the lines that name the failing rank and the error.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def run_options(epochs: int) -> list[str]:
    """A small GraNet run on MNIST-1D (700 training sequences, 11 steps per epoch, a mask update every 3)."""
    return [
        "run", "granet",
        "--arch", "resnet20",
        "--dataset", "mnist1d",
        "--epochs", str(epochs),
        "--batch-size", "64",
        "--update-frequency", "3",
        "--wandb", "disabled",
        "--set", "data.num_samples=1000",
        "--set", "data.val_size=100",
        "--set", "model.width=0.25",
    ]  # fmt: skip


# After the mask update at step 9 and before the epoch-end check at step 11, with no update in between:
# a flipped mask entry cannot be undone by an update before the check sees it.
FAULT_STEP = 10
ABORT_SIGNS = ("terminate called", "Aborted", "core dumped", "SIGABRT", "Signal 6", "Segmentation fault")
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")

FAULT_DRIVER = '''
"""Benchmark driver: `harness <argv>` in this torchrun worker; rank 1 fails right after step FAULT_STEP."""
import os
import signal
import sys
import time

from harness.sparse import SparsityMethod

original_step = SparsityMethod.step


def step(self):
    update = original_step(self)
    if self.steps == int(os.environ["FAULT_STEP"]) and os.environ["RANK"] == "1":
        fault = os.environ["FAULT"]
        print(f"FAULT {fault} {time.time():.3f}", file=sys.stderr, flush=True)
        if fault == "raise":
            raise RuntimeError("injected failure on rank 1")
        if fault == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        if fault == "hang":
            while True:
                time.sleep(3600)
        if fault == "perturb":
            flat = self.masks.masks[0].view(-1)
            flat[0] = 1 - flat[0]
    return update


SparsityMethod.step = step
from harness.cli import main

sys.argv = ["harness", *sys.argv[1:]]
main()
'''


def environment(**extra: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if name not in TORCHRUN_VARIABLES}
    return env | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TERM": "dumb"} | extra


def stability_run(index: int, root: Path) -> dict[str, Any]:
    runs_dir = root / f"stability-{index:02d}"
    argv = [sys.executable, "-m", "harness.cli", *run_options(epochs=2), "--runs-dir", str(runs_dir)]
    argv += ["--data-dir", str(root / "data"), "--nproc-per-node", "2"]
    started = time.monotonic()
    completed = subprocess.run(argv, env=environment(), capture_output=True, text=True, cwd=root)
    seconds = time.monotonic() - started
    lines = completed.stdout.splitlines()
    run_dir = Path(lines[-1]) if lines else None
    status = (run_dir / "status").read_text().strip() if run_dir and (run_dir / "status").exists() else None
    signs = [sign for sign in ABORT_SIGNS if sign in completed.stderr]
    clean = completed.returncode == 0 and len(lines) == 1 and status == "completed" and not signs
    if not clean:
        (root / f"stability-{index:02d}.stderr").write_text(completed.stderr)
    return {
        "run": index,
        "exit_code": completed.returncode,
        "status": status,
        "abort_signs": signs,
        "seconds": round(seconds, 1),
        "clean": clean,
    }


def fault_run(fault: str, root: Path, driver: Path) -> dict[str, Any]:
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(driver)]
    argv += run_options(epochs=4)
    argv += ["--runs-dir", str(root / f"fault-{fault}"), "--data-dir", str(root / "data")]
    env = environment(FAULT=fault, FAULT_STEP=str(FAULT_STEP))
    completed = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=root)
    ended = time.time()
    stamp = re.search(rf"^FAULT {fault} ([0-9.]+)$", completed.stderr, flags=re.MULTILINE)
    naming = [
        line.strip()
        for line in completed.stderr.splitlines()
        if re.search(r"injected failure|^error: |rank\s+: 1 |exitcode\s+: |Timed out|Connection", line)
    ]
    (root / f"fault-{fault}.stderr").write_text(completed.stderr)
    return {
        "fault": fault,
        "exit_code": completed.returncode,
        "seconds_to_down": round(ended - float(stamp.group(1)), 1) if stamp else None,
        "evidence": naming[:8],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="consecutive 2-process runs")
    parser.add_argument("--failures", action="store_true", help="also time failing ranks")
    parser.add_argument(
        "--hang", action="store_true", help="with --failures: also a rank that hangs (~2.5 min)"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--keep", type=Path, help="work in this directory (default: a temporary one)")
    args = parser.parse_args()

    from harness.data.datasets import load_mnist1d

    with tempfile.TemporaryDirectory(prefix="ddp-stability-") as temporary:
        root = (args.keep or Path(temporary)).resolve()
        root.mkdir(parents=True, exist_ok=True)
        load_mnist1d(root / "data" / "mnist1d" / "mnist1d-1000.npz", 1000)
        results: dict[str, Any] = {"stability": [], "failures": []}
        for index in range(args.runs):
            row = stability_run(index, root)
            results["stability"].append(row)
            print(json.dumps(row), flush=True)
        clean = sum(row["clean"] for row in results["stability"])
        print(f"stability: {clean}/{args.runs} clean 2-process runs", flush=True)
        if args.failures:
            driver = root / "fault_driver.py"
            driver.write_text(FAULT_DRIVER)
            for fault in ("raise", "sigkill", "perturb", *(("hang",) if args.hang else ())):
                row = fault_run(fault, root, driver)
                results["failures"].append(row)
                print(json.dumps(row, indent=1), flush=True)
        if args.json is not None:
            args.json.write_text(json.dumps(results, indent=1) + "\n")
    sys.exit(0 if clean == args.runs else 1)


if __name__ == "__main__":
    main()

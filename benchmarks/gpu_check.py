"""The GPU check (`make gpu-check`): what a CUDA machine does with ResNet-20 on CIFAR-10, in one JSON.

    python -m benchmarks.gpu_check --out gpu-check.json [--data-dir data] [--epochs 2] [--workers 8]

Parts, each timed and recorded on its own (a part that fails is recorded with its one-line reason and the
next one runs; the JSON is rewritten after every part, so an interrupted check keeps what it measured):

- `data`: the real CIFAR-10 under --data-dir if it is there, else CIFAR-10-sized CIFAR-format files with
  random images (50,000 training, 10,000 test) written to a temporary folder (no download).
- `pipeline_identity`: the device-resident pipeline's batches on the GPU against the torchvision pipeline's
  on the CPU, `torch.equal` (the run id leaves the pipeline out because they are the same bits: on a CPU
  tests/test_resident_pipeline.py shows it; on a GPU this part does): the first training batches of
  epochs 0 and 1, from batch 0 and mid-epoch, and the first test batch.
- `engine/<pipeline>/<variant>`: --epochs epochs of the paper's GraNet ResNet-20 recipe (160-epoch schedule,
  stopped after --epochs) through the real engine (`run_training`), for each input pipeline (torchvision,
  device) and step variant (eager = contiguous, channels_last, compiled = run.compile with the default
  layout): each epoch's `time/epoch_s` (training plus the validation and test passes), the first one
  including any compilation.
- `authors_loop`: the same network and batch trained the way the GraNet authors' code does, for reference:
  torchvision's CIFAR10 with per-image transforms in a DataLoader with workers, eager fp32, a Python loop
  multiplying each mask into its weight and momentum after every optimizer step, `.item()` of the loss and
  the correct count every step, and a test-set pass every epoch.
- `two_runs`: one engine run alone, then two at once on the same GPU (separate processes, the "several
  small runs per GPU" case): samples/s of the pair against one.
- `numerics`: one training batch through ResNet-20 in fp32, bf16 autocast, channels_last and both, against
  fp32 (TF32 as the engine leaves it) and float64: max |logit difference|, relative to the largest logit,
  and the loss difference.
- `host_syncs`: synchronising CUDA calls per training step under `torch.cuda.set_sync_debug_mode("warn")`
  (expected: exactly 1, the finiteness guard), with the code locations that made them.
- `projection`: the 160-epoch time from the measured epochs, and the issue's goals (epoch <= 2 s, >= 5x
  the authors' loop, 160 epochs <= 6 minutes) as measured.

Without CUDA it says in one line per part that it skips it and why, writes the JSON with every part
`skipped`, and exits 0. The whole check is meant to finish in under 10 minutes on one H100-class GPU.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger("gpu_check")
REPO = Path(__file__).resolve().parents[1]  # where `python -m benchmarks.gpu_check` finds this module

PIPELINES = ("torchvision", "device")
VARIANTS: dict[str, dict[str, Any]] = {
    "eager": {"memory_format": "contiguous", "compile": False},
    "channels_last": {"memory_format": "channels_last", "compile": False},
    "compiled": {"memory_format": "auto", "compile": True},
}
ENGINE_PARTS = [f"engine/{pipeline}/{variant}" for pipeline in PIPELINES for variant in VARIANTS]
PARTS = [
    "data",
    "pipeline_identity",
    *ENGINE_PARTS,
    "authors_loop",
    "two_runs",
    "numerics",
    "host_syncs",
    "projection",
]
IDENTITY_BATCHES = 8  # training batches compared per pass (and the first test batch)
TRAIN_IMAGES, TEST_IMAGES = 50_000, 10_000
PAPER_EPOCHS = 160
SYNC_STEPS = 20  # steps counted for host synchronisations, after as many warm-up steps
# Every part trains here; a module constant so that the check's own code paths can be exercised on a CPU
# (tests/test_gpu_check.py points it there with tiny sizes; the sync count and the numbers need CUDA).
DEVICE = "cuda"
GOALS = {"epoch_s": 2.0, "speedup_vs_authors": 5.0, "projected_160_epochs_s": 360.0}


class Check:
    """The parts' records, written to `out` after every part."""

    def __init__(self, out: Path, environment: dict[str, Any], settings: dict[str, Any]) -> None:
        self.out = out
        self.report: dict[str, Any] = {
            "environment": environment,
            "settings": settings,
            "parts": {name: {"status": "pending"} for name in PARTS},
        }
        self.results: dict[str, Any] = {}
        self.write()

    def skip(self, name: str, reason: str) -> None:
        print(f"gpu-check: skipping {name}: {reason}", flush=True)
        self.report["parts"][name] = {"status": "skipped", "reason": reason, "seconds": 0.0}
        self.write()

    def run(self, name: str, work: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
        print(f"gpu-check: {name} ...", flush=True)
        started = time.perf_counter()
        try:
            result = work()
        except Exception as error:  # recorded, and the next part runs
            seconds = time.perf_counter() - started
            reason = (
                f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
            )
            log.debug("%s failed:\n%s", name, traceback.format_exc())
            print(f"gpu-check: {name} failed after {seconds:.1f} s: {reason}", flush=True)
            self.report["parts"][name] = {"status": "failed", "reason": reason, "seconds": seconds}
            self.write()
            return None
        seconds = time.perf_counter() - started
        print(f"gpu-check: {name} done in {seconds:.1f} s", flush=True)
        self.report["parts"][name] = {"status": "ok", "seconds": seconds, "result": result}
        self.results[name] = result
        self.write()
        return result

    def write(self) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        partial = self.out.with_name(self.out.name + ".partial")
        partial.write_text(json.dumps(self.report, indent=2) + "\n")
        partial.replace(self.out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu_check", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", type=Path, required=True, help="the JSON report")
    parser.add_argument("--data-dir", type=Path, default=Path("data"), help="where the real CIFAR-10 may be")
    parser.add_argument(
        "--epochs", type=int, default=2, help="epochs per engine run (>= 2: one after compiling)"
    )
    parser.add_argument(
        "--workers", type=int, default=8, help="DataLoader workers of the torchvision loaders"
    )
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)  # one engine run, for two_runs
    args = parser.parse_args(argv)
    if args.child is not None:
        return child_run(args.child)
    if args.epochs < 1 or args.workers < 0:
        parser.error("--epochs must be >= 1 and --workers >= 0")
    if args.out.is_dir():
        parser.error(f"--out: {args.out} is a directory; give a file path")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import torch

    from harness.engine.bench import environment

    env = {**environment(), "cuda_available": torch.cuda.is_available()}
    settings = {"epochs": args.epochs, "workers": args.workers, "data_dir": str(args.data_dir)}
    check = Check(args.out, env, settings)
    if not torch.cuda.is_available():
        for name in PARTS:
            check.skip(name, "no CUDA device (torch.cuda.is_available() is False); this part times the GPU")
        print(f"gpu-check: nothing measured on this machine; {args.out}", flush=True)
        return 0
    env.update(gpu_facts(torch))
    check.write()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch, ExitStack() as stack:
        work = Path(scratch)
        data = check.run("data", lambda: prepare_data(args.data_dir, work))
        if data is None:
            for name in PARTS[1:]:
                check.skip(name, "no data: the data part failed")
            return 0
        if data["written"]:
            from harness.data.cifar_files import accept_unofficial_cifar

            stack.enter_context(accept_unofficial_cifar())  # the written files are not the official ones
        data_dir = Path(data["data_dir"])
        check.run("pipeline_identity", lambda: pipeline_identity(data_dir, work / "runs", DEVICE))
        for pipeline in PIPELINES:
            for variant in VARIANTS:
                check.run(
                    f"engine/{pipeline}/{variant}",
                    lambda pipeline=pipeline, variant=variant: engine_epochs(
                        data_dir, work / "runs", pipeline, variant, args.epochs, args.workers
                    ),
                )
        check.run("authors_loop", lambda: authors_loop(data_dir, args.epochs, args.workers))
        check.run("two_runs", lambda: two_runs(data_dir, work, data["written"], args.workers))
        check.run("numerics", lambda: numerics(data_dir))
        check.run("host_syncs", lambda: host_syncs(data_dir, work / "sync-runs", args.workers))
        check.run("projection", lambda: projection(check.results))
    print(f"gpu-check: {args.out}", flush=True)
    return 0


def gpu_facts(torch: Any) -> dict[str, Any]:
    import torchvision

    properties = torch.cuda.get_device_properties(0)
    return {
        "gpu": torch.cuda.get_device_name(0),
        "gpu_memory_gib": round(properties.total_memory / 2**30, 1),
        "gpu_count": torch.cuda.device_count(),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "torchvision": torchvision.__version__,
        "tf32_convolutions": torch.backends.cudnn.allow_tf32,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
    }


# ---------------------------------------------------------------------------------------------------------
# Data


def prepare_data(data_dir: Path, work: Path) -> dict[str, Any]:
    real = data_dir / "cifar-10-batches-py"
    if real.is_dir():
        return {"data_dir": str(data_dir), "written": False, "source": f"the real CIFAR-10 in {real}"}
    from harness.data.cifar_files import write_cifar_files

    written = work / "data"
    write_cifar_files(written, "cifar10", train=TRAIN_IMAGES, test=TEST_IMAGES, seed=0)
    return {
        "data_dir": str(written),
        "written": True,
        "source": f"CIFAR-format files with random images ({TRAIN_IMAGES:,} training, {TEST_IMAGES:,} test)",
    }


def engine_config(
    data_dir: Path, runs_dir: Path, pipeline: str, run: dict[str, Any], workers: int, epochs: int
) -> Any:
    """The paper's GraNet ResNet-20 CIFAR-10 recipe (160-epoch schedule) stopped after `epochs` epochs."""
    from harness.config import resolve

    overrides = {
        "data": {"data_dir": str(data_dir), "pipeline": pipeline, "num_workers": workers, "download": False},
        "optim": {"epochs": PAPER_EPOCHS},
        "tracking": {"runs_dir": str(runs_dir), "wandb": "disabled"},
        "run": {"device": DEVICE, "stop_after_epochs": epochs, **run},
    }
    return resolve("granet", dataset="cifar10", arch="resnet20", overrides=overrides)


def pipeline_identity(data_dir: Path, runs_dir: Path, device: str) -> dict[str, Any]:
    """Batches of the resident pipeline on `device` against the torchvision pipeline's on the CPU."""
    import torch

    from harness.data.datasets import build_datasets
    from harness.data.loaders import build_loaders

    def loaders(pipeline: str, where: str) -> Any:
        config = engine_config(data_dir, runs_dir, pipeline, {}, 0, 1)
        built = build_loaders(
            build_datasets(config.data), global_batch_size=config.optim.batch_size, seed=0,
            device=torch.device(where),
        )  # fmt: skip
        if built.pipeline != pipeline:
            raise RuntimeError(f"asked for the {pipeline} pipeline, got {built.pipeline}")
        return built

    resident, reference = loaders("device", device), loaders("torchvision", "cpu")
    compared = 0
    for epoch, start in ((0, 0), (1, 0), (1, 3)):
        pairs = zip(resident.train.iterate(epoch, start), reference.train.iterate(epoch, start), strict=False)
        for index, (ours, theirs) in enumerate(pairs):
            if index == IDENTITY_BATCHES:
                break
            for name, a, b in (("inputs", ours[0], theirs[0]), ("targets", ours[1], theirs[1])):
                if not torch.equal(a.cpu(), b):
                    difference = (a.cpu().double() - b.double()).abs().max().item()
                    raise RuntimeError(
                        f"epoch {epoch} batch {start + index} {name} differ (max |difference| {difference:g})"
                    )
            compared += 1
    ours, theirs = next(iter(resident.test.iterate())), next(iter(reference.test.iterate()))
    test_equal = torch.equal(ours[0].cpu(), theirs[0]) and torch.equal(ours[1].cpu(), theirs[1])
    if not test_equal:
        raise RuntimeError("the first test batch differs")
    return {"identical": True, "train_batches_compared": compared, "test_batches_compared": 1}


def engine_epochs(
    data_dir: Path, runs_dir: Path, pipeline: str, variant: str, epochs: int, workers: int
) -> dict[str, Any]:
    from harness.engine.distributed import dist_info_from_env
    from harness.engine.lifecycle import run_training

    config = engine_config(
        data_dir, runs_dir / pipeline / variant, pipeline, VARIANTS[variant], workers, epochs
    )
    started = time.perf_counter()
    result = run_training(config, dist_info_from_env(DEVICE))
    wall = time.perf_counter() - started
    lines = epoch_lines(result.run_dir)
    return {
        "run_id": result.run_dir.name,
        "epoch_s": [line["time/epoch_s"] for line in lines],
        "steps_per_epoch": lines[0]["step"] if lines else None,
        "test_acc": [line["test/acc"] for line in lines],
        "wall_s": wall,  # session building, data loading and the checkpoints included
    }


def epoch_lines(run_dir: Path) -> list[dict[str, Any]]:
    from harness.store.rundir import read_metrics

    return [line for line in read_metrics(run_dir / "metrics.jsonl") if line["kind"] == "epoch"]


# ---------------------------------------------------------------------------------------------------------
# The authors'-style loop


def authors_loop(data_dir: Path, epochs: int, workers: int) -> dict[str, Any]:
    """The GraNet authors' training pattern on the same network, masks and batch (see the module docstring)."""
    import torch
    import torchvision
    from torch import nn
    from torchvision import transforms

    from harness.data.datasets import CIFAR_STATS
    from harness.models.build import build_model
    from harness.sparse import MaskSet, build_method

    device = torch.device(DEVICE)
    mean, std = CIFAR_STATS["cifar10"]
    normalise = [transforms.ToTensor(), transforms.Normalize(mean, std)]
    train_set = torchvision.datasets.CIFAR10(
        str(data_dir),
        train=True,
        transform=transforms.Compose(
            [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(), *normalise]
        ),
    )
    test_set = torchvision.datasets.CIFAR10(
        str(data_dir), train=False, transform=transforms.Compose(normalise)
    )
    pinned = DEVICE == "cuda"
    loader = torch.utils.data.DataLoader(
        train_set, batch_size=128, shuffle=True, num_workers=workers, pin_memory=pinned
    )
    test_loader = torch.utils.data.DataLoader(
        test_set, batch_size=128, num_workers=workers, pin_memory=pinned
    )
    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=10, input_shape=(3, 32, 32)).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    # 90% sparse ERK masks, made by the harness's static method; applied below the authors' way.
    masks = MaskSet.for_model(model)
    build_method("static", masks, optimizer, {"sparsity": 0.9}, total_steps=1)
    masked = list(zip(masks.weights, masks.masks, strict=True))
    epoch_s, samples = [], []
    for _ in range(epochs):
        started = time.perf_counter()
        model.train()
        seen = correct = 0
        total_loss = 0.0
        for inputs, targets in loader:
            inputs, targets = inputs.to(device), targets.to(device)
            optimizer.zero_grad()
            output = model(inputs)
            loss = nn.functional.cross_entropy(output, targets)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                for weight, mask in masked:  # one multiply per tensor, weights then momentum
                    weight.data = weight.data * mask
                    state = optimizer.state[weight]
                    if "momentum_buffer" in state:
                        state["momentum_buffer"] = state["momentum_buffer"] * mask
            total_loss += loss.item()
            correct += output.argmax(dim=1).eq(targets).sum().item()
            seen += targets.numel()
        model.eval()
        with torch.no_grad():
            test_correct = sum(
                model(inputs.to(device)).argmax(dim=1).eq(targets.to(device)).sum().item()
                for inputs, targets in test_loader
            )
        synchronize(torch)
        epoch_s.append(time.perf_counter() - started)
        samples.append(seen)
    return {
        "epoch_s": epoch_s,
        "train_samples_per_epoch": samples[0] if samples else 0,
        "test_acc_last": test_correct / len(test_set),
        "workers": workers,
    }


# ---------------------------------------------------------------------------------------------------------
# Two runs on one GPU


def two_runs(data_dir: Path, work: Path, written: bool, workers: int) -> dict[str, Any]:
    """Engine runs (device pipeline, default layout, 3 epochs) in child processes: one alone, then two at
    once. Samples/s of each run from its second epoch (the one the pair most surely overlaps in)."""
    from harness.config import dump_yaml, run_directory

    def start(seed: int, runs_dir: Path) -> tuple[subprocess.Popen, Path, Path]:
        config = engine_config(data_dir, runs_dir, "device", {"seed": seed}, workers, 3)
        runs_dir.mkdir(parents=True, exist_ok=True)
        path, log_path = runs_dir / "config.yaml", runs_dir / "child.log"
        path.write_text(dump_yaml(config))
        command = [sys.executable, "-m", "benchmarks.gpu_check", "--out", os.devnull, "--child", str(path)]
        env = {**os.environ, "GPU_CHECK_UNOFFICIAL_CIFAR": "1" if written else "0"}
        with log_path.open("w") as log_file:  # the child keeps its own descriptor
            process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT)
        return process, run_directory(config), log_path

    def finish(processes: list[tuple[subprocess.Popen, Path, Path]]) -> list[float]:
        throughputs = []
        for process, run_dir, log_path in processes:
            if process.wait(timeout=300) != 0:
                last = (log_path.read_text().strip().splitlines() or [""])[-1]
                raise RuntimeError(f"a child run exited with {process.returncode}: {last}")
            throughputs.append(train_samples / epoch_lines(run_dir)[1]["time/epoch_s"])
        return throughputs

    train_samples = TRAIN_IMAGES - engine_config(data_dir, work, "device", {}, workers, 3).data.val_size

    started = time.perf_counter()
    alone = finish([start(0, work / "alone")])
    alone_wall = time.perf_counter() - started
    started = time.perf_counter()
    pair = finish([start(seed, work / f"pair-{seed}") for seed in (1, 2)])
    pair_wall = time.perf_counter() - started
    return {
        "alone_samples_per_s": alone[0],
        "pair_samples_per_s": pair,
        "pair_total_over_alone": sum(pair) / alone[0],
        "alone_wall_s": alone_wall,
        "pair_wall_s": pair_wall,
        "note": "training samples over the time of each run's second epoch (training + evaluation passes)",
    }


def child_run(config_path: Path) -> int:
    from harness.config import load_config_file
    from harness.engine.distributed import dist_info_from_env
    from harness.engine.lifecycle import run_training

    config = load_config_file(config_path)
    with ExitStack() as stack:
        if os.environ.get("GPU_CHECK_UNOFFICIAL_CIFAR") == "1":
            from harness.data.cifar_files import accept_unofficial_cifar

            stack.enter_context(accept_unofficial_cifar())
        run_training(config, dist_info_from_env(config.run.device))
    return 0


# ---------------------------------------------------------------------------------------------------------
# Numerics on one batch


def numerics(data_dir: Path) -> dict[str, Any]:
    import copy

    import torch
    from torch import nn

    from harness.config import DataConfig
    from harness.data.datasets import build_datasets
    from harness.data.loaders import build_loaders
    from harness.models.build import build_model

    device = torch.device(DEVICE)
    datasets = build_datasets(
        DataConfig(dataset="cifar10", data_dir=data_dir, pipeline="device", download=False, val_size=0)
    )
    loaders = build_loaders(datasets, global_batch_size=128, seed=0, device=device)
    inputs, targets = next(iter(loaders.train.iterate(0)))
    inputs, targets = inputs.to(device), targets.to(device)
    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=10, input_shape=(3, 32, 32)).to(device).train()

    def forward(
        dtype: torch.dtype, channels_last: bool, bf16: bool, tf32: bool = True
    ) -> tuple[torch.Tensor, float]:
        network = copy.deepcopy(model).to(dtype)  # a copy: train-mode BatchNorm updates its statistics
        batch = inputs.to(dtype)
        if channels_last:
            network, batch = (
                network.to(memory_format=torch.channels_last),
                batch.to(memory_format=torch.channels_last),
            )
        previous = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = tf32
        try:
            with torch.no_grad(), torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=bf16):
                logits = network(batch).double()
        finally:
            torch.backends.cudnn.allow_tf32 = previous
        return logits, float(nn.functional.cross_entropy(logits, targets))

    reference64 = forward(torch.float64, False, False)
    fp32 = forward(torch.float32, False, False)
    variants = {
        "fp32_without_tf32": forward(torch.float32, False, False, tf32=False),
        "bf16_autocast": forward(torch.float32, False, True),
        "channels_last": forward(torch.float32, True, False),
        "channels_last_bf16_autocast": forward(torch.float32, True, True),
    }

    def difference(
        candidate: tuple[torch.Tensor, float], reference: tuple[torch.Tensor, float]
    ) -> dict[str, float]:
        largest = float(reference[0].abs().max())
        absolute = float((candidate[0] - reference[0]).abs().max())
        return {
            "max_abs_logit": absolute,
            "max_rel_logit": absolute / largest if largest else float("nan"),
            "loss_difference": candidate[1] - reference[1],
        }

    return {
        "batch": int(inputs.shape[0]),
        "fp32_loss": fp32[1],
        "fp32_vs_float64": difference(fp32, reference64),
        "vs_fp32": {name: difference(result, fp32) for name, result in variants.items()},
        "vs_float64": {name: difference(result, reference64) for name, result in variants.items()},
        "note": "fp32 = the engine's fp32 (cuDNN TF32 as PyTorch leaves it); train-mode BatchNorm; initial weights",
    }


# ---------------------------------------------------------------------------------------------------------
# Host synchronisations per step


def host_syncs(data_dir: Path, runs_dir: Path, workers: int) -> dict[str, Any]:
    counts = {
        name: syncs_per_step(engine_config(data_dir, runs_dir, pipeline, run, workers, 1))
        for name, pipeline, run in (
            ("device/default", "device", {}),
            ("device/compiled", "device", {"compile": True}),
            ("torchvision/default", "torchvision", {}),
        )
    }
    return {"steps": SYNC_STEPS, "expected_per_step": 1, "counts": counts}


def syncs_per_step(config: Any) -> dict[str, Any]:
    """Synchronising calls per `train_step` (batches from the run's loader), after as many warm-up steps."""
    import torch
    from torch import nn

    from harness.engine.distributed import dist_info_from_env
    from harness.engine.loop import build_session, train_step

    session = build_session(config, dist_info_from_env(DEVICE))
    criterion = nn.CrossEntropyLoss(label_smoothing=config.optim.label_smoothing)
    parameters = [parameter for parameter in session.model.parameters() if parameter.requires_grad]
    session.network.train()
    batches = session.loaders.train.iterate(0)

    def steps(count: int) -> None:
        for _ in range(count):
            inputs, targets = next(batches)  # as fit moves them
            inputs = inputs.to(session.device, non_blocking=True, memory_format=session.input_format)
            targets = targets.to(session.device, non_blocking=True)
            train_step(session, criterion, parameters, inputs, targets)

    steps(SYNC_STEPS)  # warm-up: compilation, cuDNN's choices, the optimizer's state
    synchronize(torch)
    # The debug mode flags a synchronising call when it is issued, so nothing needs to finish in the block.
    with recorded_syncs(torch) as found:
        steps(SYNC_STEPS)
    return {"per_step": len(found) / SYNC_STEPS, "where": dict(Counter(found).most_common())}


def synchronize(torch: Any) -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


@contextmanager
def recorded_syncs(torch: Any) -> Iterator[list[str]]:
    """The code locations of every synchronising CUDA call inside the block (PyTorch's sync debug mode
    warns once per call; every warning is kept)."""
    found: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        previous = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield found
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    # A warning names the Python line that called into the synchronising operation.
    found.extend(
        f"{Path(warning.filename).name}:{warning.lineno}"
        for warning in caught
        if "synchroniz" in str(warning.message)
    )


# ---------------------------------------------------------------------------------------------------------
# Projection and goals


def projection(results: dict[str, Any]) -> dict[str, Any]:
    def projected(epoch_s: list[float]) -> dict[str, float] | None:
        if not epoch_s:
            return None
        steady = statistics.median(epoch_s[1:]) if len(epoch_s) > 1 else epoch_s[0]
        return {
            "first_epoch_s": epoch_s[0],
            "steady_epoch_s": steady,
            "projected_160_epochs_s": epoch_s[0] + (PAPER_EPOCHS - 1) * steady,
        }

    engine = {name: projected(results[name]["epoch_s"]) for name in ENGINE_PARTS if name in results}
    engine = {name: value for name, value in engine.items() if value is not None}
    authors = projected(results["authors_loop"]["epoch_s"]) if "authors_loop" in results else None
    if not engine:
        raise RuntimeError("no engine run finished: nothing to project")
    best = min(engine, key=lambda name: engine[name]["steady_epoch_s"])
    fastest = engine[best]
    goals: dict[str, Any] = {
        "epoch_at_most_2_s": fastest["steady_epoch_s"] <= GOALS["epoch_s"],
        "projected_160_epochs_at_most_6_min": fastest["projected_160_epochs_s"]
        <= GOALS["projected_160_epochs_s"],
    }
    if authors is not None:
        speedup = authors["steady_epoch_s"] / fastest["steady_epoch_s"]
        goals["speedup_vs_authors"] = speedup
        goals["at_least_5x_authors"] = speedup >= GOALS["speedup_vs_authors"]
    return {"engine": engine, "authors_loop": authors, "fastest": best, "goals": goals}


if __name__ == "__main__":
    sys.exit(main())

"""Where the seed-to-seed spread of CPU plasticity comes from: re-runs probes of a completed run store and
measures each continuation epoch on the recipe's test split and on a larger fresh test set.

    .venv/bin/python experiments/plasticity_noise_sources.py RUNS_DIR [--probe-epoch 4 ...] [--workers 2]
        [--test-samples 5000] [--markdown reports/cpu/noise_sources.md]

For every completed probe and control at the chosen probe epochs (default: the CPU study's epoch 4 and
the filter study's epoch 10), the continuation is trained again from the base checkpoint exactly as the
probe trained it (the same code path, one intra-op thread), and after each epoch the test accuracy is read
with BatchNorm statistics recomputed over the training set (the CPU protocol's measurement) on
- the recipe's test split (500 samples for harness/recipes/mnist1d.yaml), and
- `--test-samples` new MNIST-1D samples from the same generator with another dataset seed (a test set
  the size of which no longer limits the measurement).
The report gives, per group of settings, the pooled and the largest seed-to-seed std (pp) of
- acc_pre, the unpruned checkpoint's accuracy, on either test set (the same for every setting of a group),
- the paper's plasticity (final accuracy - acc_pre), and the same with the accuracy averaged over the last
  3 continuation epochs (the CPU protocol), on either test set (acc_pre too),
- the final accuracy against the control's (plasticity_vs_control), on either test set, and
- the same with both accuracies averaged over the last 3 continuation epochs.
A measurement that removed noise would show up as a lower std; what no measurement removes is the
networks' own seed-to-seed difference. Training is not changed: these are the probes' own trajectories.
"""

from __future__ import annotations

import collections
import concurrent.futures
import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from probe_rerun import nothing_to_do, probe_session, publish, store_arguments

from harness.data.datasets import InMemoryDataset, generate_mnist1d
from harness.data.loaders import EvalLoader
from harness.engine.loop import Hooks, fit
from harness.store import checkpoint as checkpoints
from harness.store import rundir
from harness.store.tracking import Tracker
from harness.studies.probe import measure, prune_and_measure

FRESH_TEST_SEED = 1234  # the mnist1d generator's default dataset seed is 42
LAST = 3  # epochs averaged in the "last 3" variants


def fresh_test_set(samples: int) -> InMemoryDataset:
    data = generate_mnist1d(samples, seed=FRESH_TEST_SEED)
    inputs = np.concatenate([data["x"], data["x_test"]])
    targets = np.concatenate([data["y"], data["y_test"]])
    return InMemoryDataset(torch.from_numpy(inputs).unsqueeze(1), torch.from_numpy(targets))


def trajectory(run_dir: Path, runs_dir: Path, data_dir: str, test_samples: int) -> dict:
    """acc_pre and, per continuation epoch, the accuracy on the recipe's and on the fresh test set."""
    session, probe, checkpoint = probe_session(run_dir, runs_dir, data_dir)
    recipe_test = session.loaders.test
    fresh = EvalLoader(fresh_test_set(test_samples), batch_size=recipe_test.batch_size, rank=0, world_size=1)
    # acc_pre on the fresh test set: the checkpoint read before prune_and_measure loads it again (measure
    # restores the statistics and the RNG it touches, and loading restores the rest).
    session.load_state_dict(checkpoints.load_checkpoint(checkpoint))
    session.loaders.test = fresh
    acc_pre_fresh = measure(session, True)[0]
    session.loaders.test = recipe_test
    record = prune_and_measure(
        session, Tracker(), checkpoint, probe, None
    )  # the do-nothing base: no run directory here
    epochs = []
    for _ in range(probe.continue_epochs or 0):
        fit(session, Hooks(), until_epoch=session.epoch + 1)
        on_recipe = measure(session, True)[0]
        session.loaders.test = fresh
        on_fresh = measure(session, True)[0]
        session.loaders.test = recipe_test
        epochs.append((on_recipe, on_fresh))
    summary = rundir.read_summary(run_dir)
    return {
        "summary": summary,
        "acc_pre": (record.acc_pre, acc_pre_fresh),
        "epochs": epochs,
    }


def selected_runs(runs_dir: Path, probe_epochs: Iterable[int]) -> list[Path]:
    wanted = set(probe_epochs)
    chosen = []
    for summary_file in sorted((runs_dir / "plasticity").glob("*/summary.json")):
        summary = json.loads(summary_file.read_text())
        if summary.get("probe_epoch") in wanted and summary.get("recalibrate_bn"):
            chosen.append(summary_file.parent)
    return chosen


def variants(probe: dict, control: dict) -> dict[str, float]:
    mine, theirs = np.array(probe["epochs"]), np.array(control["epochs"])
    pre = np.array(probe["acc_pre"])
    return {
        "acc_pre (recipe test set)": pre[0],
        "acc_pre (fresh test set)": pre[1],
        "plasticity, final (recipe test set)": mine[-1, 0] - pre[0],
        f"plasticity, last {LAST} (recipe test set)": mine[-LAST:, 0].mean() - pre[0],
        f"plasticity, last {LAST} (fresh test set)": mine[-LAST:, 1].mean() - pre[1],
        "vs control, final (recipe test set)": mine[-1, 0] - theirs[-1, 0],
        "vs control, final (fresh test set)": mine[-1, 1] - theirs[-1, 1],
        f"vs control, last {LAST} (recipe test set)": mine[-LAST:, 0].mean() - theirs[-LAST:, 0].mean(),
        f"vs control, last {LAST} (fresh test set)": mine[-LAST:, 1].mean() - theirs[-LAST:, 1].mean(),
    }


def report(results: list[dict], test_samples: int) -> str:
    by_seed = {}
    for result in results:
        s = result["summary"]
        if s["pruning_rate"] == 0:
            by_seed[(s["seed"], s["pretrained_sparsity"], s["probe_epoch"])] = result
    settings: dict[tuple, list[dict[str, float]]] = collections.defaultdict(list)
    for result in results:
        s = result["summary"]
        control = by_seed.get((s["seed"], s["pretrained_sparsity"], s["probe_epoch"]))
        if s["pruning_rate"] == 0 or control is None:
            continue
        key = (
            s["criterion"],
            s["pretrained_sparsity"],
            s["probe_epoch"],
            s["pruning_rate"],
            s["regeneration"],
        )
        settings[key].append(variants(result, control))
    groups: dict[tuple, dict[str, list[float]]] = collections.defaultdict(
        lambda: collections.defaultdict(list)
    )
    seeds: dict[tuple, int] = {}
    for (criterion, pretrained, epoch, _rate, _regen), values in sorted(settings.items()):
        group = (criterion, pretrained, epoch)
        seeds[group] = min(seeds.get(group, len(values)), len(values))
        for name in values[0]:
            groups[group][name].append(float(np.std([100 * v[name] for v in values], ddof=1)))
    names = list(next(iter(settings.values()))[0]) if settings else []
    # The protocol's own column, read again, must be the store's plasticity: the re-run is the probe.
    protocol = [
        r for r in results if r["summary"]["pruning_rate"] > 0 and r["summary"].get("average_last") == LAST
    ]
    reproduced = sum(
        abs(np.array(r["epochs"])[-LAST:, 0].mean() - r["acc_pre"][0] - r["summary"]["plasticity"]) < 1e-9
        for r in protocol
    )
    lines = [
        "# Where the spread of CPU plasticity comes from",
        "",
        f"Written by `experiments/plasticity_noise_sources.py` from {len(results)} probes and controls of the run "
        f"store, trained again along their own trajectories (one intra-op thread). Recipe test set: the "
        f"recipe's split; fresh test set: {test_samples} new MNIST-1D samples (dataset seed "
        f"{FRESH_TEST_SEED}). Every accuracy with BatchNorm statistics recomputed. Seed-to-seed std in pp "
        "(ddof = 1), per group over its settings (pruning rates, regeneration off/on): pooled / largest. "
        f"`plasticity, last {LAST} (recipe test set)` is the CPU protocol's measurement: it reproduces the "
        f"store's plasticity exactly for {reproduced} of the {len(protocol)} probes measured that way.",
        "",
        "| criterion | pre-trained sparsity | probe epoch | min n | " + " | ".join(names) + " |",
        "|---|---|---|---|" + "---|" * len(names),
    ]
    for (criterion, pretrained, epoch), stds in sorted(groups.items()):
        cells = [f"{np.sqrt(np.mean(np.square(stds[name]))):.2f} / {max(stds[name]):.2f}" for name in names]
        lines.append(f"| {criterion} | {pretrained:.0%} | {epoch} | {seeds[(criterion, pretrained, epoch)]} | "
                     + " | ".join(cells) + " |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = store_arguments(__doc__.splitlines()[0])
    parser.add_argument("--test-samples", type=int, default=5000)
    args = parser.parse_args(argv)
    runs = selected_runs(args.runs_dir, args.probe_epoch or (4, 10))
    if not runs:
        return nothing_to_do(args.runs_dir, "probes with recomputed BatchNorm statistics")
    with concurrent.futures.ProcessPoolExecutor(args.workers) as pool:
        jobs = [pool.submit(trajectory, run, args.runs_dir, args.data_dir, args.test_samples) for run in runs]
        results = [job.result() for job in jobs]
    publish(report(results, args.test_samples), args.markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

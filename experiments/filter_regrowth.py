"""Why regeneration lowers the plasticity of filter pruning at CPU scale: the revived filters, re-trained.

    .venv/bin/python experiments/filter_regrowth.py RUNS_DIR [--probe-epoch 4 ...] [--workers 2]
        [--data-dir data] [--markdown reports/cpu/filter_regrowth.md]

Filter regeneration (SPEC section 7) regrows whole filters that pruning left without an active weight,
and, like every regrowth of the paper, with zero weights. A filter whose weights are all zero puts out a
constant, so the BatchNorm after it sees a batch variance of 0 and divides the gradient it passes back by
sqrt(0 + eps) (eps = 1e-5): the first gradient the revived filter gets is about 316 times what it would get
with a variance of 1. This script checks that mechanism on the shipped filter study. For every completed
filter probe with regeneration at the chosen probe epochs (default 4 and 10) it trains the continuation
again from the base checkpoint, along the probe's own trajectory (the same code path, one intra-op thread;
its accuracy must equal the store's, and the report counts how many do), and records the mean |w| per
active weight of the revived filters and of the other filters of the same layers: right after regrowth,
after the first step, after the first epoch and at the end. It then trains the same probe once more with
one change, a diagnostic and not a method of the paper: the revived filters' active weights start from
N(0, s²), s the std of the layer's surviving active weights, so that their output has a variance from the
first step. Plasticity without regeneration comes from the store. Seed-to-seed numbers are mean ± std
(ddof = 1) over the seeds both sides have, with the per-seed difference (paired, as in claims.md).
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

from harness.engine.loop import Hooks, Interrupted, fit
from harness.engine.session import Session
from harness.store import rundir
from harness.store.tracking import Tracker
from harness.studies.probe import measure, prune_and_measure

ZERO, SCALED = "zero (as the paper)", "scaled N(0, s²) (diagnostic)"


class StopAfterOneStep(Hooks):
    def __init__(self, session: Session):
        self.session, self.start = session, session.step

    def stop_requested(self) -> bool:
        return self.session.step >= self.start + 1


def revived_filters(session: Session) -> list[torch.Tensor | None]:
    """Per masked layer, the filters that are active but all zero right after regrowth (None: no filters)."""
    revived: list[torch.Tensor | None] = []
    for weight, mask in zip(session.masks.weights, session.masks.masks, strict=True):
        if weight.dim() < 3:
            revived.append(None)
            continue
        active = mask.reshape(mask.shape[0], -1).bool().any(dim=1)
        zero = (weight.detach().reshape(weight.shape[0], -1) == 0).all(dim=1)
        revived.append(active & zero)
    return revived


def mean_magnitudes(session: Session, revived: list[torch.Tensor | None]) -> tuple[float, float]:
    """Mean |w| per active weight of the revived filters and of the other active filters of their layers."""
    sums = np.zeros(2)
    counts = np.zeros(2)
    for weight, mask, chosen in zip(session.masks.weights, session.masks.masks, revived, strict=True):
        if chosen is None or not bool(chosen.any()):
            continue
        magnitude = weight.detach().reshape(weight.shape[0], -1).abs()
        active = mask.reshape(mask.shape[0], -1).bool()
        others = ~chosen & active.any(dim=1)
        for slot, rows in enumerate((chosen, others)):
            sums[slot] += float(magnitude[rows][active[rows]].sum())
            counts[slot] += int(active[rows].sum())
    revived_mean, others_mean = sums / np.maximum(counts, 1)
    return float(revived_mean), float(others_mean)


@torch.no_grad()
def scale_revived(session: Session, revived: list[torch.Tensor | None], seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for weight, mask, chosen in zip(session.masks.weights, session.masks.masks, revived, strict=True):
        if chosen is None or not bool(chosen.any()):
            continue
        surviving = weight[~chosen][mask[~chosen].bool()]
        noise = torch.randn(weight[chosen].shape, generator=generator, dtype=weight.dtype)
        weight[chosen] = noise.to(weight.device) * float(surviving.std()) * mask[chosen]


def retrain(run_dir: Path, runs_dir: Path, data_dir: str, init: str) -> dict:
    """The probe's continuation again; acc_continue measured as the probe measured it."""
    session, probe, checkpoint = probe_session(run_dir, runs_dir, data_dir)
    assert probe.regeneration, run_dir
    # The do-nothing Tracker: no run directory here.
    record = prune_and_measure(session, Tracker(), checkpoint, probe, None)
    revived = revived_filters(session)
    if init == SCALED:
        scale_revived(session, revived, session.config.run.seed)
    magnitudes = {"after regrowth": mean_magnitudes(session, revived)}
    try:
        fit(session, StopAfterOneStep(session), until_epoch=session.epoch + 1)
    except Interrupted:  # the one step is done; the epoch goes on below, as if never stopped
        pass
    magnitudes["after 1 step"] = mean_magnitudes(session, revived)
    end = probe.probe_epoch + (probe.continue_epochs or 0)
    measured = []
    while session.epoch < end:
        fit(session, Hooks(), until_epoch=session.epoch + 1)
        if session.epoch == probe.probe_epoch + 1:
            magnitudes["after 1 epoch"] = mean_magnitudes(session, revived)
        if session.epoch > end - probe.average_last:
            measured.append(measure(session, probe.recalibrate_bn)[0])
    magnitudes["at the end"] = mean_magnitudes(session, revived)
    return {
        "summary": rundir.read_summary(run_dir),
        "init": init,
        "revived": sum(int(chosen.sum()) for chosen in revived if chosen is not None),
        "magnitudes": magnitudes,
        "acc_continue": float(np.mean(measured)),
        "plasticity": float(np.mean(measured)) - record.acc_pre,
    }


def filter_probes(runs_dir: Path, probe_epochs: Iterable[int]) -> tuple[list[Path], dict[tuple, float]]:
    """The filter probes with regeneration to re-train, and every filter probe's stored plasticity."""
    wanted = set(probe_epochs)
    chosen, stored = [], {}
    for summary_file in sorted((runs_dir / "plasticity").glob("*/summary.json")):
        summary = json.loads(summary_file.read_text())
        if summary.get("criterion") != "filter" or summary.get("probe_epoch") not in wanted:
            continue
        if summary.get("pruning_rate", 0) <= 0 or "plasticity" not in summary:
            continue
        stored[key(summary) + (summary["regeneration"],)] = summary["plasticity"]
        if summary["regeneration"]:
            chosen.append(summary_file.parent)
    return chosen, stored


def key(summary: dict) -> tuple:
    return (summary["pretrained_sparsity"], summary["probe_epoch"], summary["pruning_rate"], summary["seed"])


def _mean_std(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:+.2f} (1)" if values else "—"
    return f"{np.mean(values):+.2f} ± {np.std(values, ddof=1):.2f} ({len(values)})"


def report(results: list[dict], stored: dict[tuple, float]) -> str:
    zero = [result for result in results if result["init"] == ZERO]
    reproduced = sum(abs(r["plasticity"] - r["summary"]["plasticity"]) < 1e-9 for r in zero)
    cells: dict[tuple, dict[str, list]] = collections.defaultdict(lambda: collections.defaultdict(list))
    by_seed: dict[str, dict[int, list[float]]] = collections.defaultdict(
        lambda: collections.defaultdict(list)
    )
    for result in results:
        k = key(result["summary"])
        without = stored.get(k + (False,))
        if without is None:
            continue
        setting = cells[k[:3]]
        gain = 100 * (result["plasticity"] - without)
        by_seed[result["init"]][k[3]].append(gain)
        if result["init"] == ZERO:
            setting["zero gain"].append(gain)
            setting["revived"].append(result["revived"])
            for moment, (revived, others) in result["magnitudes"].items():
                setting[moment].append(revived / others)
        else:
            setting["scaled gain"].append(gain)
    moments = ("after 1 step", "after 1 epoch", "at the end")
    lines = [
        "# Filter regeneration: the revived filters under BatchNorm",
        "",
        f"Written by `experiments/filter_regrowth.py` from {len(zero)} filter probes with regeneration of the run "
        "store, each trained again along its own trajectory (one intra-op thread): it reproduces the store's "
        f"plasticity exactly for {reproduced} of the {len(zero)}. Gain = plasticity with regeneration − "
        "without (pp, per seed: the paired difference, as in claims.md), mean ± std (n). Revived filters are "
        "the filters that regrowth made active, all zero (as every regrowth of the paper). Magnitude ratio = "
        "mean |w| per active weight of the revived filters / of the other filters of the same layers (right after "
        "regrowth the revived ones are 0). The last column trains each probe once more with the revived "
        "filters' active weights drawn from N(0, s²), s the std of the layer's surviving active weights: a "
        "diagnostic, not a method of the paper.",
        "",
        "| pre-trained sparsity | probe epoch | pruning rate | revived filters | magnitude ratio "
        + " | magnitude ratio ".join(moments)
        + " | gain, zero init (pp) | gain, N(0, s²) init (pp) |",
        "|---|---|---|---|" + "---|" * len(moments) + "---|---|",
    ]
    for (pretrained, epoch, rate), setting in sorted(cells.items()):
        ratios = [f"{np.mean(setting[moment]):.1f}" if setting[moment] else "—" for moment in moments]
        lines.append(
            f"| {pretrained:.0%} | {epoch} | {rate:.0%} | {np.mean(setting['revived']):.0f} | "
            + " | ".join(ratios)
            + f" | {_mean_std(setting['zero gain'])} | {_mean_std(setting['scaled gain'])} |"
        )
    # As claims.md does: per seed, the mean over the settings it has; then mean ± std over the seeds.
    pooled = {init: [float(np.mean(gains)) for gains in seeds.values()] for init, seeds in by_seed.items()}
    lines += [
        "",
        f"Per seed, the mean gain over these settings, then mean ± std over the seeds: with zero init "
        f"{_mean_std(pooled.get(ZERO, []))} pp, with N(0, s²) init {_mean_std(pooled.get(SCALED, []))} pp.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = store_arguments(__doc__.splitlines()[0]).parse_args(argv)
    runs, stored = filter_probes(args.runs_dir, args.probe_epoch or (4, 10))
    if not runs:
        return nothing_to_do(args.runs_dir, "filter probes with regeneration")
    with concurrent.futures.ProcessPoolExecutor(args.workers) as pool:
        jobs = [
            pool.submit(retrain, run, args.runs_dir, args.data_dir, init)
            for init in (ZERO, SCALED)
            for run in runs
        ]
        results = [job.result() for job in jobs]
    publish(report(results, stored), args.markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

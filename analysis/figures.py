"""The study's figures, one function per figure, and `write_figures` that writes every one the runs support.

Each figure function takes the runs frame (`analysis.load_runs`) and returns a matplotlib `Figure`, or
raises `NotSupported` with a one-line reason when the runs lack what it shows. `write_figures` saves each
as PNG and PDF, writes the comparison table as Markdown and LaTeX, and lists everything in `index.md`.

Conventions: accuracies are drawn in percent and plasticity in percentage points (pp); error bars and
bands are ± one standard deviation over seeds; LR-decay epochs come from each run's config
(`optim.lr_decay_at` fractions x `optim.epochs`).

Over 450 lines on purpose: one function per figure, all following the conventions above, with
`write_figures` their one caller.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from analysis import collapse, style
from analysis.aggregate import (
    comparison_table,
    measured_as,
    plasticity_table,
    probe_runs,
    regeneration_gain,
    training_runs,
)
from analysis.claims import write_claims
from analysis.dynamics import global_dynamics, mask_dynamics, snapshot_paths
from analysis.runs import CurvesLoader, load_curves, warn_damaged
from analysis.tables import comparison_with_paper, paper_results, to_latex, to_markdown
from harness.errors import UserError
from harness.store.rundir import DamagedFile

logger = logging.getLogger(__name__)

UNSTRUCTURED = ("global", "layerwise")
CRITERION_LABELS = {
    "global": "global magnitude",
    "layerwise": "layer-wise magnitude",
    "filter": "filter (structured)",
}


class NotSupported(Exception):
    """The runs cannot support a figure; the message is the one-line reason."""


# ---------------------------------------------------------------------------------------------------------
# Shared helpers


def _probes(runs: pd.DataFrame) -> pd.DataFrame:
    probes = probe_runs(runs)
    if probes.empty:
        raise NotSupported("no plasticity probe runs (job_type probe) among the runs")
    probes = probes.copy()
    probes["regeneration"] = probes["regeneration"].astype(bool)
    probes["pretrained_sparsity"] = probes["pretrained_sparsity"].fillna(0.0)
    # Every figure draws one panel per (arch, dataset): naming the way accuracy was measured in the
    # dataset's label keeps probes measured differently (BN recomputed or not, averaged over the last
    # epochs or not) in panels of their own, as the claims report does, instead of one curve mixing them.
    probes["dataset"] = [
        measured_as(dataset, recalibrated, averaged)
        for dataset, recalibrated, averaged in zip(
            probes["dataset"], probes["recalibrate_bn"], probes["average_last"], strict=True
        )
    ]
    return probes


def _unstructured_dense_probes(runs: pd.DataFrame) -> pd.DataFrame:
    probes = _probes(runs)
    chosen = probes[probes["criterion"].isin(UNSTRUCTURED) & (probes["pretrained_sparsity"] == 0)]
    if chosen.empty:
        raise NotSupported("no unstructured (global or layer-wise) probes of dense base runs")
    return chosen


def main_criterion(probes: pd.DataFrame) -> str:
    """The paper's default (global magnitude) when present, else layer-wise."""
    present = set(probes["criterion"])
    return next(criterion for criterion in UNSTRUCTURED if criterion in present)


def panels(frame: pd.DataFrame) -> list[tuple[str, str]]:
    """The (arch, dataset) pairs in `frame`, one panel each."""
    return sorted(set(zip(frame["arch"], frame["dataset"], strict=True)))


def pair_label(arch: str, dataset: str) -> str:
    """A panel's network and data, the measurement a pair can carry ("(BN recomputed, mean of the last 3
    epochs)") on a line of its own: on one line, titles of side-by-side panels ran into each other."""
    return f"{arch} / {dataset}".replace(" (", "\n(")


def decay_epochs(runs: pd.DataFrame) -> list[float]:
    """LR-decay epochs of the runs: `optim.lr_decay_at` fractions x `optim.epochs`, over all distinct configs."""
    if "optim.lr_decay_at" not in runs.columns or "optim.epochs" not in runs.columns:
        return []
    epochs: set[float] = set()
    for fractions, total in set(zip(runs["optim.lr_decay_at"], runs["optim.epochs"], strict=True)):
        epochs.update(round(fraction * total, 6) for fraction in fractions)
    return sorted(epochs)


def _mark_decays(axis: Axes, decays: list[float]) -> None:
    for epoch in decays:
        axis.axvline(epoch, color="0.45", linestyle=(0, (4, 3)), linewidth=1.0, zorder=0)
        # Written up along the line, on its left: horizontal text ran out of the panel for a decay near the
        # right edge (e.g. epoch 22.5 of 30 with the last probe at 22) and into the legend.
        axis.annotate(
            "LR decay",
            xy=(epoch, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(-2, -3),
            textcoords="offset points",
            rotation=90,
            ha="right",
            va="top",
            fontsize=8,
            color="0.35",
        )


def _band(
    axis: Axes, x: pd.Series, mean: pd.Series, std: pd.Series, *, scale: float = 100.0, **line: object
) -> None:
    """A mean line with markers and a ± std band (no band where std is NaN, i.e. a single seed)."""
    # In x order: a curve can gather rows from several groups (e.g. continuation lengths cut at the end
    # of the schedule), which would otherwise be joined out of order.
    order = np.argsort(np.asarray(x, dtype=float), kind="stable")
    x, mean, std = (series.iloc[order] for series in (pd.Series(x), pd.Series(mean), pd.Series(std)))
    axis.plot(x, scale * mean, marker="o", **line)
    spread = scale * std.fillna(0.0)
    axis.fill_between(
        x, scale * mean - spread, scale * mean + spread, color=line.get("color"), alpha=0.15, linewidth=0
    )


def _seeds_note(table: pd.DataFrame) -> str:
    counts = sorted(set(int(n) for n in table["n"]))
    if counts == [1]:
        return "one seed: no spread shown"
    seeds = ", ".join(str(n) for n in counts)
    return f"mean ± std over {seeds} seed{'s' if counts != [1] else ''}"


def _continue_note(table: pd.DataFrame) -> str:
    epochs = [f"{value:g}" for value in sorted(set(table["continue_epochs"]))]
    # "k = 2/3" read as two thirds: several lengths are listed in words.
    listed = epochs[0] if len(epochs) == 1 else f"{', '.join(epochs[:-1])} or {epochs[-1]}"
    return f"k = {listed} fine-tuning epochs"


def _rate_legend(axis: Axes, colours: dict[float, object]) -> None:
    handles = [
        Line2D([], [], color=colour, marker="o", label=f"{100 * rate:g}%") for rate, colour in colours.items()
    ]
    # Outside the panel, on the right: inside, it covered curves or the "LR decay" labels.
    axis.legend(
        handles=handles, title="pruning rate", loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0
    )


def _empty_panel(axis: Axes, text: str) -> None:
    # Hide the axes rather than clearing ticks: ticks of shared axes belong to every panel that shares them.
    axis.set_axis_off()
    axis.text(0.5, 0.5, text, ha="center", va="center", transform=axis.transAxes, color="0.4")


def _plasticity_axes(axis: Axes, decays: list[float]) -> None:
    axis.axhline(0.0, color="0.2", linewidth=0.8, zorder=0)
    _mark_decays(axis, decays)
    axis.set_xlabel("probe epoch (epochs of base training)")
    axis.set_ylabel("plasticity (pp test accuracy)")
    style.integer_ticks(axis)
    style.keep_span(axis, PLASTICITY_SPAN)


# The least y span of a panel, in percentage points: differences smaller than seed noise stay small.
PLASTICITY_SPAN = 2.0
ACCURACY_SPAN = 5.0


def _smallest_gap(values: pd.Series) -> float:
    distinct = np.unique(values.to_numpy(dtype=float))
    return float(np.diff(distinct).min()) if len(distinct) > 1 else 1.0


def _dodge(count: int, gap: float) -> list[float]:
    """Sideways offsets for `count` series spread over a tenth of the smallest gap between x values: enough
    to keep error bars apart, small enough that no point seems to sit at another sparsity."""
    if count <= 1:
        return [0.0] * count
    return list(np.linspace(-gap / 20, gap / 20, count))


def _figure_legend(figure: Figure, axes: np.ndarray) -> None:
    """One legend below all panels with every label used in any of them (colours are shared)."""
    handles: dict[str, object] = {}
    for axis in axes.flat:
        for handle, label in zip(*axis.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    figure.legend(handles.values(), handles.keys(), loc="outside lower center", ncol=min(len(handles), 5))


# ---------------------------------------------------------------------------------------------------------
# 1. Plasticity vs probe epoch


@style.styled
def plasticity_vs_epoch(runs: pd.DataFrame) -> Figure:
    """Plasticity vs probe epoch without regeneration, one curve per pruning rate, one panel per architecture
    (rows: unstructured criteria present), LR decays marked."""
    probes = _unstructured_dense_probes(runs)
    probes = probes[~probes["regeneration"]]
    if probes.empty:
        raise NotSupported("no unstructured probes without regeneration")
    table = plasticity_table(probes)
    criteria = [criterion for criterion in UNSTRUCTURED if criterion in set(table["criterion"])]
    pairs = panels(table)
    colours = style.rate_colours(table["pruning_rate"])
    decays = decay_epochs(probes)
    figure, axes = style.new_figure(len(pairs), len(criteria), sharey=True)
    for row, criterion in enumerate(criteria):
        for column, (arch, dataset) in enumerate(pairs):
            axis = axes[row, column]
            cell = table[
                (table["arch"] == arch) & (table["dataset"] == dataset) & (table["criterion"] == criterion)
            ]
            axis.set_title(f"{CRITERION_LABELS[criterion]}\n{pair_label(arch, dataset)}")
            if cell.empty:
                _empty_panel(axis, f"no {CRITERION_LABELS[criterion]} probes")
                continue
            for rate, curve in cell.groupby("pruning_rate"):
                _band(
                    axis,
                    curve["probe_epoch"],
                    curve["plasticity_mean"],
                    curve["plasticity_std"],
                    color=colours[rate],
                )
            _plasticity_axes(axis, decays)
            _rate_legend(axis, {rate: colours[rate] for rate in sorted(set(cell["pruning_rate"]))})
    figure.suptitle(
        "Pruning plasticity without regeneration: test accuracy after fine-tuning − before pruning\n"
        f"({_continue_note(table)}; {_seeds_note(table)})"
    )
    return figure


# ---------------------------------------------------------------------------------------------------------
# 2. With and without regeneration, and the regeneration gain


@style.styled
def plasticity_regeneration(runs: pd.DataFrame) -> Figure:
    """Per architecture: plasticity without | with regeneration (shared y axis) | regeneration gain."""
    probes = _unstructured_dense_probes(runs)
    criterion = main_criterion(probes)
    probes = probes[probes["criterion"] == criterion]
    if probes["regeneration"].nunique() < 2:
        raise NotSupported(f"the {criterion} probes lack regeneration on/off pairs")
    table = plasticity_table(probes)
    gain = regeneration_gain(probes)
    if gain.empty:
        raise NotSupported(
            f"no {criterion} probe has both a with- and a without-regeneration run for one seed"
        )
    pairs = panels(table)
    colours = style.rate_colours(table["pruning_rate"])
    decays = decay_epochs(probes)
    figure, axes = style.new_figure(3, len(pairs))
    for row, (arch, dataset) in enumerate(pairs):
        here = table[(table["arch"] == arch) & (table["dataset"] == dataset)]
        pair = pair_label(arch, dataset)
        for column, regeneration in enumerate((False, True)):
            axis = axes[row, column]
            for rate, curve in here[here["regeneration"] == regeneration].groupby("pruning_rate"):
                _band(
                    axis,
                    curve["probe_epoch"],
                    curve["plasticity_mean"],
                    curve["plasticity_std"],
                    color=colours[rate],
                )
            _plasticity_axes(axis, decays)
            # Short titles, the panel pair on a second line: one line each ran into its neighbour.
            axis.set_title(f"{'with' if regeneration else 'without'} regeneration\n{pair}")
        # One y range for both panels, covering both: sharing after plotting would keep only the first's.
        limits = [axes[row, column].get_ylim() for column in (0, 1)]
        axes[row, 1].sharey(axes[row, 0])
        axes[row, 0].set_ylim(min(low for low, _ in limits), max(high for _, high in limits))
        axis = axes[row, 2]
        gains = gain[(gain["arch"] == arch) & (gain["dataset"] == dataset)]
        for rate, curve in gains.groupby("pruning_rate"):
            _band(axis, curve["probe_epoch"], curve["gain_mean"], curve["gain_std"], color=colours[rate])
        axis.axhline(0.0, color="0.2", linewidth=0.8, zorder=0)
        _mark_decays(axis, decays)
        axis.set_xlabel("probe epoch (epochs of base training)")
        axis.set_ylabel("regeneration gain (pp plasticity)")
        axis.set_title(f"gain = with − without\n{pair}")
        style.integer_ticks(axis)
        style.keep_span(axis, PLASTICITY_SPAN)
        _rate_legend(axis, {rate: colours[rate] for rate in sorted(set(here["pruning_rate"]))})
    figure.suptitle(
        f"Plasticity with and without neuroregeneration ({CRITERION_LABELS[criterion]} pruning)\n"
        f"({_continue_note(table)}; {_seeds_note(table)}; gain paired by seed)"
    )
    return figure


# ---------------------------------------------------------------------------------------------------------
# 3. Damage vs recovery


def _pick_epochs(epochs: list[float], most: int = 4) -> list[float]:
    """Up to `most` probe epochs spread evenly over those available, first and last included."""
    if len(epochs) <= most:
        return epochs
    positions = np.linspace(0, len(epochs) - 1, most).round().astype(int)
    return [epochs[index] for index in positions]


def _regeneration_line(stage: str, regeneration: bool) -> dict[str, object]:
    """Probes with regeneration differ from those without in colour (a darker shade of the stage's), marker
    (hollow triangles) and line (dashed): one rate alone, with no curve to follow, is still told apart."""
    colour = style.STAGE_COLOURS[stage]
    if not regeneration:
        return {"color": colour, "linestyle": "-", "marker": "o"}
    return {
        "color": style.shade(colour),
        "linestyle": "--",
        "marker": "^",
        "markerfacecolor": "white",
        "markersize": 7,
    }


@style.styled
def damage_recovery(runs: pd.DataFrame) -> Figure:
    """Accuracy before pruning, right after (damage) and after fine-tuning (recovery) vs pruning rate, with the
    unpruned control; with regeneration darker, dashed, hollow triangles; one column per probe epoch."""
    probes = _unstructured_dense_probes(runs)
    criterion = main_criterion(probes)
    table = plasticity_table(probes[probes["criterion"] == criterion])
    pairs = panels(table)
    epochs = _pick_epochs(sorted(set(table["probe_epoch"])))
    figure, axes = style.new_figure(len(epochs), len(pairs), panel=(3.6, 3.2), sharey="row")
    for row, (arch, dataset) in enumerate(pairs):
        for column, epoch in enumerate(epochs):
            axis = axes[row, column]
            cell = table[
                (table["arch"] == arch) & (table["dataset"] == dataset) & (table["probe_epoch"] == epoch)
            ]
            # Probes with and without regeneration share the checkpoint and the control, so these agree.
            stages = ["acc_pre_mean", "acc_pre_std", "acc_control_mean", "acc_control_std"]
            reference = cell.groupby("pruning_rate")[stages].mean()
            for stage in ("acc_pre", "acc_control"):
                axis.errorbar(
                    100 * reference.index,
                    100 * reference[f"{stage}_mean"],
                    yerr=100 * reference[f"{stage}_std"].fillna(0.0),
                    color=style.STAGE_COLOURS[stage],
                    linestyle=":",
                    marker=".",
                )
            for regeneration in (False, True):
                part = cell[cell["regeneration"] == regeneration].sort_values("pruning_rate")
                for stage in ("acc_post", "acc_continue"):
                    axis.errorbar(
                        100 * part["pruning_rate"],
                        100 * part[f"{stage}_mean"],
                        yerr=100 * part[f"{stage}_std"].fillna(0.0),
                        **_regeneration_line(stage, regeneration),
                    )
            style.keep_span(axis, ACCURACY_SPAN)
            axis.set_xticks(sorted(100 * cell["pruning_rate"].unique()))  # the rates probed, no others
            axis.set_title(f"pruned at epoch {epoch:g}\n{pair_label(arch, dataset)}")
            axis.set_xlabel("pruning rate (% of remaining weights)")
            axis.set_ylabel("test accuracy (%)")
    handles = [
        Line2D(
            [],
            [],
            color=style.STAGE_COLOURS[stage],
            linestyle=":" if stage in ("acc_pre", "acc_control") else "-",
            marker="o",
            label=style.STAGE_LABELS[stage],
        )
        for stage in style.STAGE_COLOURS
    ]
    if table["regeneration"].nunique() > 1:
        handles += [
            Line2D(
                [], [], **_regeneration_line(stage, True), label=f"{style.STAGE_LABELS[stage]}, regenerated"
            )
            for stage in ("acc_post", "acc_continue")
        ]
    figure.legend(handles=handles, loc="outside lower center", ncol=3)
    figure.suptitle(
        f"Damage and recovery per pruning rate ({CRITERION_LABELS[criterion]} pruning; "
        f"{_continue_note(table)}; {_seeds_note(table)})"
    )
    return figure


# ---------------------------------------------------------------------------------------------------------
# 4. Structured (filter) plasticity by pre-trained sparsity


@style.styled
def structured_plasticity(runs: pd.DataFrame) -> Figure:
    """Filter-pruning plasticity vs probe epoch, one curve per pre-trained sparsity; solid without, dashed
    with regeneration; one column per architecture, one row per pruning rate."""
    probes = _probes(runs)
    probes = probes[probes["criterion"] == "filter"]
    if probes.empty:
        raise NotSupported("no filter-pruning probes (criterion filter)")
    table = plasticity_table(probes)
    pairs = panels(table)
    rates = sorted(set(table["pruning_rate"]))
    sparsities = sorted(set(table["pretrained_sparsity"]))
    colours = dict(zip(sparsities, style.sequential_colours(len(sparsities), "plasma"), strict=True))
    decays = decay_epochs(probes)
    figure, axes = style.new_figure(len(pairs), len(rates), sharey=True)
    for column, (arch, dataset) in enumerate(pairs):
        for row, rate in enumerate(rates):
            axis = axes[row, column]
            cell = table[
                (table["arch"] == arch) & (table["dataset"] == dataset) & (table["pruning_rate"] == rate)
            ]
            for (sparsity, regeneration), curve in cell.groupby(["pretrained_sparsity", "regeneration"]):
                _band(
                    axis,
                    curve["probe_epoch"],
                    curve["plasticity_mean"],
                    curve["plasticity_std"],
                    color=colours[sparsity],
                    linestyle="--" if regeneration else "-",
                )
            _plasticity_axes(axis, decays)
            axis.set_title(f"{100 * rate:g}% of filters pruned\n{pair_label(arch, dataset)}")
    handles = [
        Line2D([], [], color=colours[s], marker="o", label=f"pre-trained sparsity {100 * s:g}%")
        for s in sparsities
    ]
    if table["regeneration"].nunique() > 1:
        handles += [
            Line2D([], [], color="0.3", linestyle="-", label="without regeneration"),
            Line2D([], [], color="0.3", linestyle="--", label="with regeneration"),
        ]
    figure.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 3))
    figure.suptitle(
        f"Structured (filter) pruning plasticity by pre-trained sparsity\n"
        f"({_continue_note(table)}; {_seeds_note(table)})"
    )
    return figure


# ---------------------------------------------------------------------------------------------------------
# 5. GraNet vs baselines: accuracy vs sparsity


def _comparison(runs: pd.DataFrame) -> pd.DataFrame:
    if training_runs(runs).empty:
        raise NotSupported("no training runs (job_type train) to compare methods")
    return comparison_table(runs)


@style.styled
def accuracy_vs_sparsity(runs: pd.DataFrame, paper: pd.DataFrame | None = None) -> Figure:
    """Final test accuracy vs sparsity per method (± std over seeds), dense as a band, one panel per
    (arch, dataset); published numbers for the same setting as hollow markers."""
    table = _comparison(runs)
    paper = paper_results() if paper is None else paper
    pairs = panels(table)
    figure, axes = style.new_figure(len(pairs), 1, panel=(4.8, 3.6))
    for column, (arch, dataset) in enumerate(pairs):
        axis = axes[0, column]
        here = table[(table["arch"] == arch) & (table["dataset"] == dataset)]
        sparse = here[here["method"] != "dense"]
        labels = sorted(set(sparse["label"]), key=style.method_sort_key)
        # Methods share the sparsities: shift each a little sideways so error bars do not hide each other.
        dodge = _dodge(len(labels), _smallest_gap(100 * sparse["sparsity"]))
        for label, shift in zip(labels, dodge, strict=True):
            curve = sparse[sparse["label"] == label].sort_values("sparsity")
            axis.errorbar(
                100 * curve["sparsity"] + shift,
                100 * curve["test_acc_mean"],
                yerr=100 * curve["test_acc_std"].fillna(0),
                color=style.method_colour(label),
                marker="o",
                label=label,
            )
        for dense in here[here["method"] == "dense"].itertuples():
            mean, spread = (
                100 * dense.test_acc_mean,
                100 * (0.0 if np.isnan(dense.test_acc_std) else dense.test_acc_std),
            )
            axis.axhline(mean, color=style.method_colour("dense"), linewidth=1.0, label="dense (band: ± std)")
            axis.axhspan(
                mean - spread, mean + spread, color=style.method_colour("dense"), alpha=0.1, linewidth=0
            )
        published = paper[(paper["model"] == arch) & (paper["dataset"] == dataset) & (paper["sparsity"] > 0)]
        for row in published.itertuples():
            axis.plot(
                100 * row.sparsity,
                row.test_acc_mean,
                linestyle="none",
                marker="D",
                markerfacecolor="none",
                color=style.method_colour(row.method),
                markersize=7,
            )
        if not published.empty:
            axis.plot(
                [], [], linestyle="none", marker="D", markerfacecolor="none", color="0.3", label="published"
            )
        axis.set_xticks(sorted(100 * sparse["sparsity"].unique()))
        axis.set_xticks([], minor=True)
        dodged = "; methods shifted slightly sideways to keep bars apart" if len(labels) > 1 else ""
        axis.set_xlabel(f"sparsity (% of weights removed{dodged})")
        style.keep_span(axis, ACCURACY_SPAN)
        axis.set_ylabel("final test accuracy (%)")
        axis.set_title(f"{arch} / {dataset}")
    _figure_legend(figure, axes)
    figure.suptitle(f"GraNet vs baselines: final test accuracy vs sparsity ({_seeds_note(table)})")
    return figure


# ---------------------------------------------------------------------------------------------------------
# 6. Training dynamics of one run


def pick_dynamics_run(runs: pd.DataFrame, run_key: str | None = None) -> pd.Series:
    """The run shown by `training_dynamics`: `run_key` if given, else a local GraNet run with snapshots
    (dense-to-sparse, highest sparsity, lowest seed), else any training run with snapshots."""
    if run_key is not None:
        chosen = runs[runs["run_key"] == run_key]
        if chosen.empty:
            raise UserError(f"dynamics run {run_key!r}: no such run among the loaded runs")
        return chosen.iloc[0]
    # A dense run's masks never change: its dynamics are four flat lines, so it is never picked by default.
    candidates = training_runs(runs)
    candidates = candidates[candidates["method"] != "dense"]
    if "run_dir" in candidates.columns:
        candidates = candidates[
            [isinstance(path, str) and bool(snapshot_paths(path)) for path in candidates["run_dir"]]
        ]
    else:
        candidates = candidates.iloc[0:0]
    if candidates.empty:
        raise NotSupported(
            "no local sparse training run with mask snapshots (masks/) to show training dynamics"
        )
    ranked = candidates.assign(
        _granet=candidates["method"] != "granet",
        _init=candidates["init_sparsity"].fillna(0.0),
        _sparsity=-candidates["sparsity"],
    ).sort_values(["_granet", "_init", "_sparsity", "seed", "run_key"])
    return ranked.iloc[0]


def _log_percent(axis: Axes) -> None:
    """Densities of sparse runs span 1-100%: a log axis keeps the sparse end readable."""
    axis.set_yscale("log")
    style.log_ticks(axis, "y")


@style.styled
def training_dynamics(run: pd.Series, events: pd.DataFrame, dynamics: pd.DataFrame) -> Figure:
    """Target vs achieved density, regeneration rate, per-layer density (mask snapshots) and mask turnover
    between consecutive snapshots, all against training epochs."""
    steps_per_epoch = run["steps"] / run["epochs"]
    figure, axes = style.new_figure(2, 2, panel=(5.0, 3.3))
    whole = global_dynamics(dynamics)
    # Density is constant between mask updates: draw steps, starting from the initial masks (step 0).
    if (events["step"] > 0).all():  # runs log their initial masks as a step-0 event; older ones may not
        start = whole[whole["step"] == 0]
        initial = float(start["density"].iloc[0]) if len(start) else float(events["density"].iloc[0])
        first = pd.DataFrame({"step": [0], "density": [initial], "target_density": [initial]})
        events = pd.concat([first, events], ignore_index=True)
    _density_panel(axes[0, 0], run, events, steps_per_epoch)
    _regeneration_panel(axes[0, 1], run, events, steps_per_epoch)
    _layer_density_panel(figure, axes[1, 0], dynamics, whole, steps_per_epoch)
    _turnover_panel(axes[1, 1], run, whole, steps_per_epoch)
    for axis in axes.flat:
        axis.set_xlabel("epoch")
        axis.set_xlim(left=0)
    figure.suptitle(
        f"Training dynamics of {run['run_key']}\n({run['method']}, {run['arch']} / {run['dataset']}, "
        f"target sparsity {100 * run['sparsity']:g}%, seed {run['seed']})"
    )
    return figure


def _density_panel(density: Axes, run: pd.Series, events: pd.DataFrame, steps_per_epoch: float) -> None:
    """Achieved and scheduled global density as steps from one mask update to the next."""
    epoch = np.append(events["step"] / steps_per_epoch, run["epochs"])
    achieved = 100 * np.append(events["density"], events["density"].iloc[-1])
    target = 100 * np.append(events["target_density"], events["target_density"].iloc[-1])
    density.step(
        epoch,
        achieved,
        where="post",
        color=style.method_colour(run["method"]),
        linewidth=2.4,
        label="achieved",
    )
    density.step(
        epoch, target, where="post", color="black", linestyle="--", linewidth=1.0, label="target (schedule)"
    )
    density.plot(
        epoch[1:-1], achieved[1:-1], linestyle="none", marker="o", color=style.method_colour(run["method"])
    )
    if "sparsity.prune_end" in run.index and not pd.isna(run["sparsity.prune_end"]):
        density.axvline(run["sparsity.prune_end"] * run["epochs"], color="0.45", linestyle=":", linewidth=1.0)
        density.annotate(
            "pruning ends",
            xy=(run["sparsity.prune_end"] * run["epochs"], 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(3, -3),
            textcoords="offset points",
            va="top",
            fontsize=8,
            color="0.35",
        )
    density.set_ylabel("global density (% kept, log scale)")
    _log_percent(density)
    density.set_title("density at each mask update")
    density.legend(loc="center right")


def _regeneration_panel(regen: Axes, run: pd.Series, events: pd.DataFrame, steps_per_epoch: float) -> None:
    epoch = events["step"] / steps_per_epoch
    if "regen/rate" in events.columns:
        regen.plot(epoch, 100 * events["regen/rate"], marker="o", color=style.method_colour(run["method"]))
        regen.set_ylabel("regeneration rate (% of active weights)")
        regen.set_ylim(bottom=0)
    else:
        _empty_panel(regen, f"{run['method']} does not regrow weights")
    regen.set_title("regeneration rate (drop-and-grow fraction)")


def _layer_density_panel(
    figure: Figure, layers: Axes, dynamics: pd.DataFrame, whole: pd.DataFrame, steps_per_epoch: float
) -> None:
    """Every layer's density from the mask snapshots, coloured by depth, with the global density dashed."""
    names = list(dict.fromkeys(dynamics["layer"]))
    colours = style.sequential_colours(len(names), "viridis")
    for index, name in enumerate(names):
        layer = dynamics[dynamics["layer"] == name]
        # Steps, as in the global panel: a mask holds its density until the next snapshot.
        layers.step(
            layer["step"] / steps_per_epoch,
            100 * layer["density"],
            where="post",
            color=colours[index],
            linewidth=1.1,
        )
    layers.step(
        whole["step"] / steps_per_epoch,
        100 * whole["density"],
        where="post",
        color="black",
        linestyle="--",
        label="global",
    )
    bar = figure.colorbar(ScalarMappable(Normalize(0, len(names) - 1), "viridis"), ax=layers, pad=0.01)
    bar.set_label("layer depth (0 = first)")
    bar.locator = MaxNLocator(integer=True)
    bar.update_ticks()
    layers.set_ylabel("layer density (%, log scale)")
    _log_percent(layers)
    layers.set_title(f"per-layer density from {len(whole)} mask snapshots")
    layers.legend(loc="upper right")


def _turnover_panel(turnover: Axes, run: pd.Series, whole: pd.DataFrame, steps_per_epoch: float) -> None:
    """Weights new and removed between consecutive snapshots, as a share of the active weights."""
    changed = whole.dropna(subset=["turnover"])
    turnover.set_title("mask turnover between updates")
    if changed.empty:  # one snapshot (or a dense run): nothing to compare it with
        _empty_panel(turnover, f"{len(whole)} mask snapshot(s): no turnover to show")
        return
    turnover.plot(
        changed["step"] / steps_per_epoch,
        100 * changed["turnover"],
        marker="o",
        color=style.method_colour(run["method"]),
        label="new since previous snapshot",
    )
    removed = changed["removed"] / (changed["active"] - changed["added"] + changed["removed"])
    turnover.plot(
        changed["step"] / steps_per_epoch,
        100 * removed,
        marker="x",
        color="0.4",
        linestyle=":",
        label="removed since previous snapshot",
    )
    turnover.set_ylabel("mask turnover (% of active weights)")
    highest = np.nanmax(
        np.append(100 * removed.to_numpy(dtype=float), 100 * changed["turnover"].to_numpy(dtype=float))
    )
    turnover.set_ylim(0, 1.35 * highest if highest > 0 else 1)  # headroom: the legend sits above the curves
    turnover.legend(loc="upper right")


def dynamics_figure(
    runs: pd.DataFrame, curves_loader: CurvesLoader = load_curves, run_key: str | None = None
) -> Figure:
    """Figure 6 for the chosen run (see `pick_dynamics_run`), reading its events and mask snapshots."""
    run = pick_dynamics_run(runs, run_key)
    if not isinstance(run.get("run_dir"), str) or not snapshot_paths(run["run_dir"]):
        raise NotSupported(f"run {run['run_key']} has no local mask snapshots (masks/)")
    events = curves_loader(run.to_frame().T, "mask_update")
    if events.empty:
        raise NotSupported(f"run {run['run_key']} logged no mask_update events")
    try:
        dynamics = mask_dynamics(run["run_dir"])
    except DamagedFile as damage:
        warn_damaged(run["run_key"], damage, "the training-dynamics figure is skipped")
        raise NotSupported(f"run {run['run_key']} is damaged: {damage}") from None
    return training_dynamics(run, events, dynamics)


# ---------------------------------------------------------------------------------------------------------
# 7. Accuracy vs training FLOPs


SPARSITY_MARKERS = ("o", "s", "^", "D", "v", "P", "X")


@style.styled
def accuracy_vs_train_flops(runs: pd.DataFrame) -> Figure:
    """Final test accuracy vs training FLOPs relative to dense training: colour = method, marker = sparsity."""
    table = _comparison(runs)
    if "train_flops_rel_mean" not in table.columns or table["train_flops_rel_mean"].isna().all():
        raise NotSupported("the training runs' summaries lack train_flops_rel")
    pairs = panels(table)
    sparsities = sorted(set(table.loc[table["method"] != "dense", "sparsity"]))
    markers = {
        sparsity: SPARSITY_MARKERS[index % len(SPARSITY_MARKERS)] for index, sparsity in enumerate(sparsities)
    }
    figure, axes = style.new_figure(len(pairs), 1, panel=(4.8, 3.6))
    for column, (arch, dataset) in enumerate(pairs):
        axis = axes[0, column]
        here = table[(table["arch"] == arch) & (table["dataset"] == dataset)]
        for label in sorted(set(here["label"]), key=style.method_sort_key):
            curve = here[here["label"] == label].sort_values("sparsity")
            colour = style.method_colour(label)
            axis.plot(curve["train_flops_rel_mean"], 100 * curve["test_acc_mean"], color=colour, label=label)
            for point in curve.itertuples():
                axis.errorbar(
                    point.train_flops_rel_mean,
                    100 * point.test_acc_mean,
                    yerr=0 if np.isnan(point.test_acc_std) else 100 * point.test_acc_std,
                    color=colour,
                    marker="o" if label == "dense" else markers[point.sparsity],
                )
        axis.set_xscale("log")
        style.log_ticks(axis)
        style.keep_span(axis, ACCURACY_SPAN)
        axis.set_xlabel("training FLOPs (× dense training, log scale)")
        axis.set_ylabel("final test accuracy (%)")
        axis.set_title(f"{arch} / {dataset}")
    for sparsity, marker in markers.items():
        axes[0, 0].plot(
            [], [], linestyle="none", marker=marker, color="0.35", label=f"sparsity {100 * sparsity:g}%"
        )
    _figure_legend(figure, axes)
    figure.suptitle(f"Accuracy vs training cost ({_seeds_note(table)})")
    return figure


# ---------------------------------------------------------------------------------------------------------
# Writing everything


@dataclass(frozen=True)
class FigureSpec:
    name: str
    title: str
    make: Callable[[pd.DataFrame, dict[str, object]], Figure]


def collapse_ablation(runs: pd.DataFrame) -> Figure:
    """The high-sparsity collapse ablation (analysis.collapse), when the runs hold it."""
    table = collapse.ablation_table(runs)
    if table.empty:
        raise NotSupported("no collapse-ablation runs (job_type ablation, sweeps/collapse-mnist1d.yaml)")
    return collapse.ablation_figure(table)


FIGURES = (
    FigureSpec(
        "plasticity_vs_epoch",
        "Pruning plasticity vs probe epoch, per pruning rate",
        lambda runs, options: plasticity_vs_epoch(runs),
    ),
    FigureSpec(
        "plasticity_regeneration",
        "Plasticity with and without regeneration, and the regeneration gain",
        lambda runs, options: plasticity_regeneration(runs),
    ),
    FigureSpec(
        "damage_recovery",
        "Damage (right after pruning) vs recovery (after fine-tuning) per pruning rate",
        lambda runs, options: damage_recovery(runs),
    ),
    FigureSpec(
        "structured_plasticity",
        "Structured (filter) plasticity by pre-trained sparsity",
        lambda runs, options: structured_plasticity(runs),
    ),
    FigureSpec(
        "accuracy_vs_sparsity",
        "GraNet vs baselines: test accuracy vs sparsity",
        lambda runs, options: accuracy_vs_sparsity(runs, options.get("paper")),
    ),
    FigureSpec(
        "training_dynamics",
        "Training dynamics of one run",
        lambda runs, options: dynamics_figure(runs, options["curves_loader"], options.get("dynamics_run")),
    ),
    FigureSpec(
        "accuracy_vs_train_flops",
        "Test accuracy vs training FLOPs",
        lambda runs, options: accuracy_vs_train_flops(runs),
    ),
    FigureSpec(
        "collapse_ablation",
        "The high-sparsity collapse: one candidate cause changed at a time",
        lambda runs, options: collapse_ablation(runs),
    ),
)
FIGURE_NAMES = tuple(spec.name for spec in FIGURES)


@dataclass
class FigureReport:
    """What `write_figures` did: figure name -> files written, figure name -> reason skipped."""

    out_dir: Path
    written: dict[str, list[Path]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    tables: list[Path] = field(default_factory=list)
    claims: Path | None = None
    index: Path | None = None


def write_tables(runs: pd.DataFrame, out_dir: Path, paper: pd.DataFrame | None = None) -> list[Path]:
    """`comparison_table.md` and `comparison_table.tex`: our results next to the published numbers."""
    table = comparison_with_paper(runs, paper)
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = out_dir / "comparison_table.md"
    latex = out_dir / "comparison_table.tex"
    markdown.write_text(to_markdown(table))
    latex.write_text(to_latex(table))
    return [markdown, latex]


def write_figures(
    runs: pd.DataFrame,
    out_dir: Path | str,
    *,
    curves_loader: CurvesLoader = load_curves,
    dynamics_run: str | None = None,
    paper: pd.DataFrame | None = None,
) -> FigureReport:
    """Write every figure the runs support (PNG + PDF), the comparison tables, `claims.md` (see
    `analysis.claims`) and `index.md` in `out_dir`.

    `curves_loader(runs, kind)` reads metrics lines (pass `functools.partial(load_curves, api=api)` for
    runs loaded from W&B); `dynamics_run` is the `run_key` of the run for the training-dynamics figure
    (default: see `pick_dynamics_run`); `paper` replaces the shipped published numbers.
    Figures the runs cannot support are skipped with a one-line reason in the report and the index.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir}: exists and is not a directory")
    if dynamics_run is not None:
        pick_dynamics_run(runs, dynamics_run)  # a mistaken run key fails before any figure is written
    out_dir.mkdir(parents=True, exist_ok=True)
    report = FigureReport(out_dir)
    options: dict[str, object] = {
        "curves_loader": curves_loader,
        "dynamics_run": dynamics_run,
        "paper": paper,
    }
    for spec in FIGURES:
        try:
            figure = spec.make(runs, options)
        except NotSupported as reason:
            report.skipped[spec.name] = str(reason)
            logger.debug("skipped %s: %s", spec.name, reason)  # the command prints the report
            continue
        report.written[spec.name] = style.save(figure, out_dir, spec.name)
        logger.debug("wrote %s", spec.name)  # (info would repeat each line the command prints)
    if not training_runs(runs).empty:
        report.tables = write_tables(runs, out_dir, paper)
    ablation = collapse.ablation_table(runs)
    if not ablation.empty:
        path = out_dir / "collapse_table.md"
        path.write_text(collapse.to_markdown(ablation))
        report.tables.append(path)
    report.claims = write_claims(runs, out_dir / "claims.md", paper)
    report.index = write_index(report, runs)
    return report


def write_index(report: FigureReport, runs: pd.DataFrame) -> Path:
    titles = {spec.name: spec.title for spec in FIGURES}
    counts = (
        runs["job_type"].value_counts().sort_index() if "job_type" in runs.columns else pd.Series(dtype=int)
    )
    lines = [
        "# Figures",
        "",
        f"From {len(runs)} runs ({', '.join(f'{count} {kind}' for kind, count in counts.items())}). "
        "Error bars and bands: ± one standard deviation over seeds.",
        "",
    ]
    for number, name in enumerate(FIGURE_NAMES, start=1):
        if name in report.written:
            files = " · ".join(f"[{path.suffix[1:].upper()}]({path.name})" for path in report.written[name])
            lines += [f"## {number}. {titles[name]}", "", f"![{titles[name]}]({name}.png)", "", files, ""]
    if report.tables:
        lines += [
            "## Comparison table",
            "",
            " · ".join(f"[{path.name}]({path.name})" for path in report.tables),
            "",
        ]
    if report.claims is not None:
        lines += [
            "## Claims report",
            "",
            f"[{report.claims.name}]({report.claims.name}): every claim of the paper the runs can test, "
            "with a computed verdict",
            "",
        ]
    if report.skipped:
        lines += ["## Skipped", ""]
        lines += [f"- {name}: {reason}" for name, reason in report.skipped.items()]
        lines.append("")
    path = report.out_dir / "index.md"
    path.write_text("\n".join(lines))
    return path

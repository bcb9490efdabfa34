"""The paper's claims checked against a run store: one row per claim, each verdict computed by one rule.

`evaluate_claims(runs)` turns the tidy frame of `analysis.load_runs` into `Claim`s; `to_markdown` renders
them as the report `claims.md` (`write_claims`), which `harness figures` writes next to the figures.

Every claim is a set of tests "A > B" (A is the side the paper says is larger), one per condition
(a sparsity, a pruning rate, an architecture...). A test takes one value per seed on each side and the
difference of the means with its interval: paired by seed where both sides are probes of the same base
runs (the plasticity claims), Welch's between independent training runs (the method comparisons). It
decides by `RULE`; a claim decides from its tests by `OVERALL_RULE`. Missing data make a test (or the whole claim) say what is missing, never a guess:
non-finite values count as missing, and n counts only the seeds with finite values.

Over 450 lines on purpose: one small table of tests per claim, all decided by the shared rules above.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from analysis.aggregate import (
    GRADUAL_METHODS,
    NOISE_TARGET_PP,
    PROBE_KEYS,
    PROBE_VALUES,
    measured_as,
    method_label,
    plasticity_noise,
    probe_runs,
    training_runs,
)
from analysis.tables import TRANSCRIPTION_MARK, _paper_match, paper_results
from harness.errors import UserError

HOLDS = "holds"
FAILS = "does not hold"
INCONCLUSIVE = "inconclusive"
LEVEL = 0.95
# The sparsities of the paper's comparison (Table 2): a claim "at 90/95/98%" is tested at each of them,
# plus any other sparsity the runs hold.
PAPER_SPARSITIES = (0.9, 0.95, 0.98)
UNSTRUCTURED = ("global", "layerwise")

RULE = (
    "Each test compares two sides, A and B, where the paper says A is larger. Each side has one value per "
    "seed (finite values only; n counts them). The test's statistic is mean(A) − mean(B) with its 95% "
    "interval. Tests of plasticity (claims 1, 2, 3 and 7) are **paired**: a seed's values on both sides "
    "are probes of that seed's base run, which share its checkpoints (and, at one probe epoch, acc_pre), "
    "so the interval is the Student t interval of the per-seed differences A − B (n − 1 degrees of "
    "freedom, n = the seeds both sides have), and the statistic is their mean. Tests between independent "
    "training runs (the method comparisons) use the Welch interval (Student t quantile at the "
    "Welch–Satterthwaite degrees of freedom). An interval is the point itself when there is no spread. "
    "**holds**: the interval lies entirely above 0. **does not hold**: it lies entirely below 0. "
    "**inconclusive**: it contains 0, or fewer than 2 seeds (paired) or a side with n < 2 (Welch), or "
    "data are missing."
)
OVERALL_RULE = (
    "A claim tested under several conditions **holds** when every condition holds, **does not hold** "
    "when at least one condition does not hold, and is **inconclusive** otherwise (including a condition "
    "with missing data)."
)


class MissingData(Exception):
    """The runs cannot support a test or a claim; the message says what is missing."""


# ---------------------------------------------------------------------------------------------------------
# The statistics


@dataclass(frozen=True)
class Side:
    """One side of a test: a label and one finite value per seed, in the report's units (% or pp)."""

    label: str
    values: tuple[float, ...]
    seeds: tuple[int, ...] = ()  # the seed of each value, in order; a paired test needs them

    def __post_init__(self) -> None:
        if self.seeds and len(self.seeds) != len(self.values):
            raise ValueError(f"{self.label}: {len(self.seeds)} seeds for {len(self.values)} values")

    def by_seed(self) -> dict[int, float]:
        if not self.seeds and self.values:
            raise ValueError(f"{self.label}: a paired test needs the seed of each value")
        return dict(zip(self.seeds, self.values, strict=True))

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return float(np.mean(self.values)) if self.values else math.nan

    @property
    def std(self) -> float:
        return float(np.std(self.values, ddof=1)) if self.n > 1 else math.nan


@dataclass(frozen=True)
class Interval:
    difference: float
    low: float
    high: float


def _t_interval(
    difference: float, squared_error: float, freedom: Callable[[], float], level: float
) -> Interval:
    """difference ± the Student t quantile at `freedom()` degrees of freedom x the standard error."""
    # Seeds with identical values leave rounding-level variances (mean of [x, x, x] need not be x): that
    # is no spread, and the Welch degrees of freedom would be 0/0 (so `freedom` is only called past here).
    if squared_error <= 1e-20 * max(1.0, difference * difference):
        return Interval(difference, difference, difference)
    half = float(stats.t.ppf(0.5 + level / 2, freedom())) * math.sqrt(squared_error)
    return Interval(difference, difference - half, difference + half)


def welch_interval(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> Interval:
    """mean(a) − mean(b) with its Welch interval; both sides need at least two values."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError("welch_interval needs at least two values per side")
    var_a = float(np.var(a, ddof=1)) / len(a)
    var_b = float(np.var(b, ddof=1)) / len(b)
    squared_error = var_a + var_b
    return _t_interval(
        float(np.mean(a) - np.mean(b)),
        squared_error,
        lambda: squared_error**2 / (var_a**2 / (len(a) - 1) + var_b**2 / (len(b) - 1)),
        level,
    )


def paired_interval(a: Side, b: Side, level: float = LEVEL) -> Interval | None:
    """The mean of the per-seed differences A − B over the seeds both sides have, with its Student t
    interval (n − 1 degrees of freedom); None for fewer than two common seeds."""
    first, second = a.by_seed(), b.by_seed()
    differences = [first[seed] - second[seed] for seed in sorted(set(first) & set(second))]
    if len(differences) < 2:
        return None
    squared_error = float(np.var(differences, ddof=1)) / len(differences)
    return _t_interval(float(np.mean(differences)), squared_error, lambda: len(differences) - 1, level)


@dataclass(frozen=True)
class Condition:
    """One condition of a claim: is A > B? `missing` says what data the test lacks, if any."""

    condition: str
    a: Side | None = None
    b: Side | None = None
    missing: str | None = None
    paper: str = ""  # the published numbers of A and B, formatted; empty when there are none
    # Both sides' values of a seed come from the same base run: test the per-seed differences.
    paired: bool = False

    @property
    def interval(self) -> Interval | None:
        if self.missing or self.a is None or self.b is None:
            return None
        if self.paired:
            return paired_interval(self.a, self.b)
        if min(self.a.n, self.b.n) < 2:
            return None
        return welch_interval(self.a.values, self.b.values)

    @property
    def verdict(self) -> str:
        interval = self.interval
        if interval is None:
            return INCONCLUSIVE
        if interval.low > 0:
            return HOLDS
        if interval.high < 0:
            return FAILS
        return INCONCLUSIVE


@dataclass(frozen=True)
class Claim:
    number: int
    text: str
    metric: str
    tests: tuple[Condition, ...] = ()
    missing: str | None = None  # the whole claim lacks data
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def verdict(self) -> str:
        if self.missing or not self.tests:
            return INCONCLUSIVE
        verdicts = [test.verdict for test in self.tests]
        if all(verdict == HOLDS for verdict in verdicts):
            return HOLDS
        if FAILS in verdicts:
            return FAILS
        return INCONCLUSIVE


# ---------------------------------------------------------------------------------------------------------
# One value per seed


def _finite(frame: pd.DataFrame, value: str) -> pd.DataFrame:
    numbers = pd.to_numeric(frame[value], errors="coerce").astype(float)
    return frame.assign(**{value: numbers})[np.isfinite(numbers)]


def _check_unique(frame: pd.DataFrame, cells: Sequence[str], what: str) -> None:
    repeated = frame.duplicated(["seed", *cells], keep=False)
    if repeated.any():
        first = frame.loc[repeated, ["seed", *cells]].iloc[0].to_dict()
        where = ", ".join(
            f"{key} {value:g}" if isinstance(value, float) else f"{key} {value}"
            for key, value in first.items()
        )
        raise MissingData(f"{what}: two runs for {where} (a setting this report does not separate)")


def _cell_key(frame: pd.DataFrame, cells: Sequence[str]) -> pd.Series:
    if not cells:
        return pd.Series([()] * len(frame), index=frame.index, dtype=object)
    return pd.Series(
        list(zip(*(frame[cell] for cell in cells), strict=True)), index=frame.index, dtype=object
    )


def seed_means(
    sides: Sequence[tuple[str, pd.DataFrame]], value: str, cells: Sequence[str], scale: float
) -> list[dict[int, float]]:
    """Per side, seed -> mean of `value` x `scale` over the cells (combinations of `cells`) that every side
    has a finite value in; a seed lacking a finite value in one of those cells is left out."""
    finite = []
    for label, frame in sides:
        if frame.empty:
            raise MissingData(f"no runs for {label}")
        _check_unique(frame, cells, label)
        kept = _finite(frame, value)
        if kept.empty:
            raise MissingData(f"no finite {value} for {label}")
        finite.append(kept.assign(_cell=_cell_key(kept, cells)))
    common = set.intersection(*(set(frame["_cell"]) for frame in finite))
    if not common:
        raise MissingData(f"no {', '.join(cells)} that {' and '.join(label for label, _ in sides)} share")
    means = []
    for frame in finite:
        frame = frame[frame["_cell"].isin(common)]
        per_seed: dict[int, float] = {}
        for seed, rows in frame.groupby("seed", sort=True):
            if len(rows) == len(common):
                per_seed[int(seed)] = scale * float(rows[value].mean())
        means.append(per_seed)
    return means


def versus(
    condition: str,
    a: tuple[str, pd.DataFrame],
    b: tuple[str, pd.DataFrame],
    value: str,
    cells: Sequence[str],
    scale: float,
    paper: str = "",
    paired: bool = False,
) -> Condition:
    """A test of A > B on `value`, each seed's value averaged over the cells both sides have; `paired`
    when a seed's values on both sides come from the same base run."""
    try:
        first, second = seed_means([a, b], value, cells, scale)
    except MissingData as missing:
        return Condition(condition, missing=str(missing), paper=paper, paired=paired)
    return Condition(condition, side(a[0], first), side(b[0], second), paper=paper, paired=paired)


def side(label: str, per_seed: dict[int, float]) -> Side:
    seeds = sorted(per_seed)
    return Side(label, tuple(per_seed[seed] for seed in seeds), tuple(seeds))


def gain_side(
    label: str, with_frame: pd.DataFrame, without_frame: pd.DataFrame, value: str, cells: Sequence[str]
) -> Side:
    """Per seed: its mean `value` with minus its mean without (over the cells both have), in pp."""
    with_means, without_means = seed_means(
        [(f"{label} with regeneration", with_frame), (f"{label} without regeneration", without_frame)],
        value,
        cells,
        100.0,
    )
    seeds = sorted(set(with_means) & set(without_means))
    return side(label, {seed: with_means[seed] - without_means[seed] for seed in seeds})


# ---------------------------------------------------------------------------------------------------------
# The claims


def _percent(value: float) -> str:
    return f"{100 * value:g}%"


def _rates(values: Iterable[float]) -> str:
    return "/".join(f"{100 * value:g}" for value in sorted(set(values))) + "%"


def _probes(runs: pd.DataFrame) -> pd.DataFrame:
    probes = probe_runs(runs)
    needed = ("arch", "dataset", "criterion", "regeneration", "pruning_rate", "probe_epoch", "seed")
    missing = [column for column in (*needed, "plasticity") if column not in probes.columns]
    if probes.empty or missing:
        raise MissingData(
            "no plasticity probe runs (job_type probe)"
            if probes.empty
            else f"the probe runs lack {', '.join(missing)}"
        )
    probes = probes.copy()
    probes["regeneration"] = probes["regeneration"].astype(bool)
    pretrained = probes["pretrained_sparsity"] if "pretrained_sparsity" in probes.columns else 0.0
    probes["pretrained_sparsity"] = pd.Series(pretrained, index=probes.index).fillna(0.0)
    return probes


def _unstructured(runs: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """Probes of dense base runs with the main unstructured criterion (global magnitude, else layer-wise)."""
    probes = _probes(runs)
    probes = probes[probes["criterion"].isin(UNSTRUCTURED) & (probes["pretrained_sparsity"] == 0)]
    if probes.empty:
        raise MissingData("no unstructured (global or layer-wise) probes of dense base runs")
    criterion = next(name for name in UNSTRUCTURED if name in set(probes["criterion"]))
    return probes[probes["criterion"] == criterion], criterion


def _panels(frame: pd.DataFrame) -> list[tuple[str, str, pd.DataFrame]]:
    """One panel per architecture and dataset and, for probes, per way of measuring accuracy: probes
    measured with recomputed BatchNorm statistics, or averaged over several final epochs, are never pooled
    with probes measured otherwise."""
    if "recalibrate_bn" not in frame.columns:
        groups = frame.groupby(["arch", "dataset"], sort=True)
        return [(arch, dataset, part) for (arch, dataset), part in groups]
    panels = []
    for (arch, dataset, recalibrated, averaged), part in frame.groupby(
        ["arch", "dataset", "recalibrate_bn", "average_last"], sort=True
    ):
        panels.append((arch, measured_as(dataset, recalibrated, averaged), part))
    return panels


def _decays(probes: pd.DataFrame) -> list[float]:
    """LR-decay epochs of the probes' schedules (`optim.lr_decay_at` fractions x `optim.epochs`)."""
    if "optim.lr_decay_at" not in probes.columns or "optim.epochs" not in probes.columns:
        return []
    epochs: set[float] = set()
    for fractions, total in set(zip(probes["optim.lr_decay_at"], probes["optim.epochs"], strict=True)):
        if isinstance(fractions, tuple):
            epochs.update(round(fraction * total, 6) for fraction in fractions)
    return sorted(epochs)


PLASTICITY = "plasticity (pp) = acc_continue − acc_pre"


def regeneration_claim(runs: pd.DataFrame) -> Claim:
    text = "Regeneration raises plasticity, most at high pruning rates"
    try:
        probes, criterion = _unstructured(runs)
    except MissingData as missing:
        return Claim(1, text, PLASTICITY, missing=str(missing))
    metric = (
        f"{PLASTICITY}, {criterion} magnitude pruning of dense base runs; per seed, the mean over the "
        "probe epochs (and pruning rates) both sides have"
    )
    tests = []
    for arch, dataset, part in _panels(probes):
        with_regen, without_regen = part[part["regeneration"]], part[~part["regeneration"]]
        tests.append(
            versus(
                f"{arch} / {dataset}: with vs without regeneration, rates {_rates(part['pruning_rate'])}",
                ("with", with_regen),
                ("without", without_regen),
                "plasticity",
                ("pruning_rate", "probe_epoch"),
                100.0,
                paired=True,
            )
        )
        rates = sorted(set(part["pruning_rate"]))
        condition = f"{arch} / {dataset}: regeneration gain at the highest vs the lowest pruning rate"
        if len(rates) < 2:
            tests.append(Condition(condition, missing=f"only one pruning rate ({_rates(rates)})"))
            continue
        high, low = rates[-1], rates[0]
        try:
            sides = [
                gain_side(
                    f"gain at {_percent(rate)}",
                    with_regen[with_regen["pruning_rate"] == rate],
                    without_regen[without_regen["pruning_rate"] == rate],
                    "plasticity",
                    ("probe_epoch",),
                )
                for rate in (high, low)
            ]
        except MissingData as missing:
            tests.append(Condition(condition, missing=str(missing)))
            continue
        tests.append(Condition(condition, *sides, paired=True))
    return Claim(1, text, metric, tuple(tests))


def training_time_claim(runs: pd.DataFrame) -> Claim:
    text = "Plasticity falls as training proceeds and drops after each LR decay"
    try:
        probes, criterion = _unstructured(runs)
    except MissingData as missing:
        return Claim(2, text, PLASTICITY, missing=str(missing))
    probes = probes[~probes["regeneration"]]
    metric = f"{PLASTICITY}, {criterion} magnitude pruning without regeneration, one probe per seed"
    if probes.empty:
        return Claim(2, text, metric, missing="no probes without regeneration")
    tests, notes = [], []
    for arch, dataset, part in _panels(probes):
        epochs = sorted(set(part["probe_epoch"]))
        decays = _decays(part)
        # "After" a decay = the first probe whose checkpoint has trained at the decayed rate; a decay
        # with no probe on one side cannot be tested, and the report says so.
        spans = []
        for decay in decays:
            before = [epoch for epoch in epochs if epoch <= decay]
            after = [epoch for epoch in epochs if epoch > decay]
            if before and after:
                spans.append((decay, before[-1], after[0]))
            else:
                notes.append(
                    f"{arch} / {dataset}: the LR decay at epoch {decay:g} has no probe epoch on one side"
                )
        for rate, at_rate in part.groupby("pruning_rate", sort=True):
            label = f"{arch} / {dataset}, rate {_percent(rate)}"
            if len(epochs) < 2:
                tests.append(Condition(f"{label}: first vs last probe epoch", missing="only one probe epoch"))
                continue
            pairs = [("first vs last probe epoch", epochs[0], epochs[-1])]
            pairs += [
                (f"before vs after the LR decay at {decay:g}", early, late) for decay, early, late in spans
            ]
            for what, early, late in pairs:
                tests.append(
                    versus(
                        f"{label}: {what}",
                        (f"epoch {early:g}", at_rate[at_rate["probe_epoch"] == early]),
                        (f"epoch {late:g}", at_rate[at_rate["probe_epoch"] == late]),
                        "plasticity",
                        (),
                        100.0,
                        paired=True,
                    )
                )
    return Claim(2, text, metric, tuple(tests), notes=tuple(notes))


def pruning_rate_claim(runs: pd.DataFrame) -> Claim:
    text = "Higher pruning rates lower plasticity"
    try:
        probes, criterion = _unstructured(runs)
    except MissingData as missing:
        return Claim(3, text, PLASTICITY, missing=str(missing))
    probes = probes[~probes["regeneration"]]
    metric = (
        f"{PLASTICITY}, {criterion} magnitude pruning without regeneration; per seed, the mean over the "
        "probe epochs both rates have; each rate against the next higher one"
    )
    if probes.empty:
        return Claim(3, text, metric, missing="no probes without regeneration")
    tests = []
    for arch, dataset, part in _panels(probes):
        rates = sorted(set(part["pruning_rate"]))
        if len(rates) < 2:
            tests.append(Condition(f"{arch} / {dataset}", missing=f"only one pruning rate ({_rates(rates)})"))
        for lower, higher in itertools.pairwise(rates):
            tests.append(
                versus(
                    f"{arch} / {dataset}: rate {_percent(lower)} vs {_percent(higher)}",
                    (_percent(lower), part[part["pruning_rate"] == lower]),
                    (_percent(higher), part[part["pruning_rate"] == higher]),
                    "plasticity",
                    ("probe_epoch",),
                    100.0,
                    paired=True,
                )
            )
    return Claim(3, text, metric, tuple(tests))


TEST_ACC = "final-epoch test accuracy (%), one run per seed"


def _method_runs(trained: pd.DataFrame, method: str, init: float | None) -> pd.DataFrame:
    chosen = trained[trained["method"] == method]
    if method in GRADUAL_METHODS and init is not None:
        chosen = chosen[np.isclose(chosen["init_sparsity"], init)]
    return chosen


def _published(
    paper: pd.DataFrame, arch: str, dataset: str, method: str, init: float, sparsity: float
) -> str:
    match = _paper_match(paper, arch, dataset, method, init, sparsity)
    if match.empty:
        return ""
    row = match.iloc[0]
    return f"{row['test_acc_mean']:.2f}" + (TRANSCRIPTION_MARK if row["transcribed"] else "")


def comparison_claim(
    number: int,
    text: str,
    runs: pd.DataFrame,
    winner: tuple[str, float],
    losers: Sequence[tuple[str, float]],
    paper: pd.DataFrame,
) -> Claim:
    """`winner` (method, s_i) beats each of `losers` at every sparsity of the paper's and the runs'."""
    trained = training_runs(runs)
    needed = ("arch", "dataset", "method", "sparsity", "epochs", "seed", "test_acc")
    lacking = [column for column in needed if column not in trained.columns]
    if trained.empty or lacking:
        missing = (
            "no training runs (job_type train)" if trained.empty else f"the runs lack {', '.join(lacking)}"
        )
        return Claim(number, text, TEST_ACC, missing=missing)
    initial = trained["init_sparsity"] if "init_sparsity" in trained.columns else 0.0
    # W&B and JSON nulls can leave object columns; a run without s_i started dense.
    trained = trained.assign(
        init_sparsity=pd.to_numeric(pd.Series(initial, index=trained.index), errors="coerce").fillna(0.0),
        sparsity=pd.to_numeric(trained["sparsity"], errors="coerce"),
    )
    involved = [winner, *losers]
    tests = []
    contexts = trained.groupby(["arch", "dataset", "epochs"], sort=True)
    several_lengths = trained["epochs"].nunique() > 1
    for (arch, dataset, epochs), context in contexts:
        present = set(
            pd.concat([_method_runs(context, method, init)["sparsity"] for method, init in involved])
        )
        sparsities = sorted(set(PAPER_SPARSITIES) | {float(value) for value in present if np.isfinite(value)})
        where = f"{arch} / {dataset}" + (f", {epochs:g} epochs" if several_lengths else "")
        for loser in losers:
            for sparsity in sparsities:
                sides = []
                for method, init in (winner, loser):
                    label = method_label(method, init)
                    runs_here = _method_runs(context, method, init)
                    runs_here = runs_here[np.isclose(runs_here["sparsity"], sparsity)]
                    sides.append(
                        ((label, runs_here), _published(paper, arch, dataset, method, init, sparsity))
                    )
                published = [found for _, found in sides]
                published_text = " vs ".join(found or "—" for found in published) if any(published) else ""
                tests.append(
                    versus(
                        f"{where}: {sides[0][0][0]} vs {sides[1][0][0]} at {_percent(sparsity)}",
                        sides[0][0],
                        sides[1][0],
                        "test_acc",
                        (),
                        100.0,
                        published_text,
                    )
                )
    return Claim(number, text, TEST_ACC, tuple(tests))


def filter_claim(runs: pd.DataFrame) -> Claim:
    text = "With filter pruning, regeneration raises plasticity at every pre-trained sparsity"
    metric = (
        f"{PLASTICITY}, filter pruning of base runs trained at a fixed pre-trained sparsity; per seed, the "
        "mean over the pruning rates and probe epochs both sides have"
    )
    try:
        probes = _probes(runs)
    except MissingData as missing:
        return Claim(7, text, metric, missing=str(missing))
    probes = probes[probes["criterion"] == "filter"]
    if probes.empty:
        return Claim(7, text, metric, missing="no filter-pruning probes (criterion filter)")
    tests = []
    for arch, dataset, part in _panels(probes):
        for sparsity, at_sparsity in part.groupby("pretrained_sparsity", sort=True):
            condition = f"{arch} / {dataset}, pre-trained sparsity {_percent(sparsity)}"
            tests.append(
                versus(
                    f"{condition}: with vs without regeneration",
                    ("with", at_sparsity[at_sparsity["regeneration"]]),
                    ("without", at_sparsity[~at_sparsity["regeneration"]]),
                    "plasticity",
                    ("pruning_rate", "probe_epoch"),
                    100.0,
                    paired=True,
                )
            )
    return Claim(7, text, metric, tuple(tests))


# Each name once (a repeated column would be selected twice).
USED_COLUMNS = tuple(dict.fromkeys((
    "job_type", "arch", "dataset", "seed", "method", "init_sparsity", "sparsity", "epochs", "test_acc",
    "criterion", "pretrained_sparsity", "regeneration", "pruning_rate", "probe_epoch", "plasticity",
    "optim.lr_decay_at", "optim.epochs", *PROBE_KEYS, *PROBE_VALUES,
)))  # fmt: skip


def evaluate_claims(runs: pd.DataFrame, paper: pd.DataFrame | None = None) -> list[Claim]:
    """Every claim of the paper this report checks, in the paper's order, from the runs frame."""
    paper = paper_results() if paper is None else paper
    # Only the columns the claims read: selecting rows of the full frame (hundreds of config columns)
    # costs seconds per claim.
    runs = runs[[column for column in USED_COLUMNS if column in runs.columns]]
    makers: list[Callable[[], Claim]] = [
        lambda: regeneration_claim(runs),
        lambda: training_time_claim(runs),
        lambda: pruning_rate_claim(runs),
        lambda: comparison_claim(
            4,
            "GraNet (s_i = 0) beats GMP at 90/95/98% sparsity",
            runs,
            ("granet", 0.0),
            [("gmp", 0.0)],
            paper,
        ),
        lambda: comparison_claim(
            5,
            "GraNet (s_i = 0) beats RigL and SET at equal sparsity",
            runs,
            ("granet", 0.0),
            [("rigl", 0.0), ("set", 0.0)],
            paper,
        ),
        lambda: comparison_claim(
            6, "Sparse-to-sparse GraNet (s_i = 0.5) beats RigL", runs, ("granet", 0.5), [("rigl", 0.0)], paper
        ),
        lambda: filter_claim(runs),
    ]
    return [make() for make in makers]


# ---------------------------------------------------------------------------------------------------------
# Rendering


def _signed(value: float) -> str:
    return f"{value:+.2f}"


def format_side(side: Side | None) -> str:
    if side is None:
        return "—"
    if side.n == 0:
        return f"{side.label}: no seed with every value (0)"
    if side.n == 1:
        return f"{side.label}: {side.mean:.2f} (1)"
    return f"{side.label}: {side.mean:.2f} ± {side.std:.2f} ({side.n})"


def format_difference(test: Condition) -> str:
    if test.missing:
        return f"missing: {test.missing}"
    assert test.a is not None and test.b is not None
    interval = test.interval
    if interval is None:
        difference = test.a.mean - test.b.mean
        shown = "—" if math.isnan(difference) else _signed(difference)
        return f"{shown} (no interval: n < 2)"
    shown = f"{_signed(interval.difference)} [{_signed(interval.low)}, {_signed(interval.high)}]"
    return f"{shown} paired" if test.paired else shown


def _escape(text: str) -> str:
    return text.replace("|", "\\|")


HEADERS = (
    "#",
    "claim / condition",
    "A: mean ± std (n)",
    "B: mean ± std (n)",
    "A − B [95% CI]",
    "paper (A vs B)",
    "verdict",
)


def claim_rows(claim: Claim) -> list[str]:
    """The claim's Markdown table rows: the claim with its overall verdict, then one row per condition."""
    head = f"**{claim.text}**<br>{claim.metric}"
    verdict = f"**{claim.verdict}**"
    if claim.missing:
        cells = [str(claim.number), head, "—", "—", f"missing: {claim.missing}", "—", verdict]
    else:
        cells = [str(claim.number), head, "", "", "", "", verdict]
    rows = [cells]
    for index, test in enumerate(claim.tests, start=1):
        rows.append(
            [
                f"{claim.number}.{index}",
                test.condition,
                format_side(test.a),
                format_side(test.b),
                format_difference(test),
                test.paper or "—",
                test.verdict,
            ]
        )
    return ["| " + " | ".join(_escape(cell) for cell in cells) + " |" for cells in rows]


def to_markdown(claims: Sequence[Claim], runs: pd.DataFrame) -> str:
    counts = (
        runs["job_type"].value_counts().sort_index() if "job_type" in runs.columns else pd.Series(dtype=int)
    )
    kinds = ", ".join(f"{count} {kind}" for kind, count in counts.items())
    lines = [
        "# The paper's claims, checked against these runs",
        "",
        f"From {len(runs)} runs ({kinds}). "
        "Every verdict is computed from the run store by `analysis/claims.py`; none is typed.",
        "",
        f"**Rule.** {RULE}",
        "",
        f"**Claims over several conditions.** {OVERALL_RULE}",
        "",
        "Accuracies in %, plasticity in percentage points (pp). Paper: the published test accuracy "
        f"(`analysis/data/paper_results.csv`; {TRANSCRIPTION_MARK} a third-party transcription), where it "
        "has the setting.",
        "",
        "## Summary",
        "",
        "| # | claim | verdict |",
        "|---|---|---|",
    ]
    lines += [f"| {claim.number} | {claim.text} | {claim.verdict} |" for claim in claims]
    lines += [
        "",
        "## Details",
        "",
        "| " + " | ".join(HEADERS) + " |",
        "|" + "|".join("---" for _ in HEADERS) + "|",
    ]
    for claim in claims:
        lines += claim_rows(claim)
    notes = [f"- Claim {claim.number}: {note}" for claim in claims for note in claim.notes]
    if notes:
        lines += ["", "## Notes", "", *notes]
    lines += noise_section(runs)
    return "\n".join(lines) + "\n"


def noise_section(runs: pd.DataFrame) -> list[str]:
    """How noisy the plasticity measurements are: the seed-to-seed std per probe epoch, against the
    protocol's target of NOISE_TARGET_PP after the first tenth of training."""
    try:
        noise = plasticity_noise(runs[[column for column in USED_COLUMNS if column in runs.columns]])
    except UserError as error:  # probes without the columns the table needs: say so, do not guess
        return ["", "## Measurement noise", "", f"Not computed: {error}."]
    if noise.empty:
        return []
    lines = [
        "",
        "## Measurement noise",
        "",
        "Seed-to-seed std (pp, ddof = 1) of two plasticity measures at each probe epoch, over the settings "
        "probed at that epoch (pruning rates, regeneration off/on): pooled (the root mean of the settings' "
        "variances), the largest (and its setting), the median, and the fewest seeds a setting has. "
        "`plasticity` is the paper's acc_continue − acc_pre (the headline of every claim above); "
        "`plasticity_vs_control` is acc_continue − acc_control: the same continuation measured against the "
        "unpruned control of the same checkpoint, so that acc_pre, which differs by seed early in training, "
        "cancels. The CPU protocol's target is a std of at most "
        f"{NOISE_TARGET_PP:g} pp at every probe epoch after the first tenth of training, judged on the pooled "
        "std: with 3 seeds each setting's std has 2 degrees of freedom, and the largest of several such "
        "estimates lies above the spread they share most of the time.",
        "",
        "| arch / dataset | criterion | pre-trained sparsity | probe epoch | measure | pooled std (pp) | "
        "max std (pp) | setting with the max | median std (pp) | min n | within target |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in noise.itertuples(index=False):
        dataset = measured_as(row.dataset, row.recalibrate_bn, row.average_last)
        if not row.after_first_tenth:
            within = "— (first tenth)"
        elif not np.isfinite(row.pooled_std_pp) or row.min_n < 2:
            within = "— (n < 2)"
        else:
            within = "yes" if row.pooled_std_pp <= NOISE_TARGET_PP else "no"
        lines.append(
            f"| {row.arch} / {dataset} | {row.criterion} | {_percent(row.pretrained_sparsity)} | "
            f"{row.probe_epoch:g} | {row.measure} | {row.pooled_std_pp:.2f} | {row.max_std_pp:.2f} | "
            f"{row.worst_setting} | {row.median_std_pp:.2f} | {row.min_n} | {within} |"
        )
    return lines


def write_claims(runs: pd.DataFrame, path: Path | str, paper: pd.DataFrame | None = None) -> Path:
    """Evaluate every claim and write the report (Markdown) to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_markdown(evaluate_claims(runs, paper), runs))
    return path

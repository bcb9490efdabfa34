"""Aggregation over seeds: the replication unit of every setting is the seed.

Every statistic is reported as `<value>_mean`, `<value>_std` (ddof=1, NaN for a single seed) and `n`
(the number of seeds with a finite value of the first, headline value). Non-finite values (NaN, inf, a
missing value) are missing: means and stds skip them and `n` does not count them. A setting that holds the same seed twice means the grouping misses a column that
distinguishes runs; that raises instead of silently averaging different settings.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

from harness.errors import UserError
from harness.sparse.methods.registry import methods_with_setting

# The built-in methods whose initial sparsity s_i is a setting of their own (the gradual magnitude family);
# for the others s_i is fixed by the method (dense: 0; static, RigL, SET: the final sparsity).
GRADUAL_METHODS = methods_with_setting("init_sparsity")

logger = logging.getLogger(__name__)

# What identifies a probe setting of the plasticity study (besides the seed).
PROBE_KEYS = (
    "arch",
    "dataset",
    "criterion",
    "pretrained_sparsity",
    "continue_epochs",
    "regeneration",
    "pruning_rate",
    "probe_epoch",
    "recalibrate_bn",
    "average_last",
)
PROBE_VALUES = ("plasticity", "acc_pre", "acc_post", "acc_continue", "acc_control")
# Derived by probe_runs: the paper's plasticity with the probe's own control as the reference instead of
# acc_pre. Probe and control continue the same checkpoint for the same epochs, so acc_pre (the base
# network's accuracy at the probe epoch, which differs by seed early in training) cancels; what is left is
# what the pruning cost after recovery. acc_continue - acc_pre = this + (acc_control - acc_pre).
RELATIVE = "plasticity_vs_control"
# What identifies a setting of the method comparison (besides the seed).
COMPARISON_KEYS = ("arch", "dataset", "method", "init_sparsity", "sparsity", "epochs")
COMPARISON_VALUES = (
    "test_acc",
    "test_acc_at_best_val",
    "density",
    "inference_flops_rel",
    "train_flops_rel",
)


def require_columns(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise UserError(f"{what}: the runs lack column(s) {', '.join(missing)}")


def seed_stats(
    frame: pd.DataFrame, by: Sequence[str], values: Sequence[str], *, seed: str = "seed"
) -> pd.DataFrame:
    """Mean, std (ddof=1) and n over seeds of each value, per setting `by`; one row per setting, sorted."""
    require_columns(frame, [*by, *values, seed], "seed_stats")
    by = list(by)
    if frame.empty:
        columns = [*by, *(f"{value}_{stat}" for value in values for stat in ("mean", "std")), "n"]
        return pd.DataFrame(columns=columns)
    repeated = frame.duplicated([*by, seed], keep=False)
    if repeated.any():
        first = frame.loc[repeated, [*by, seed]].iloc[0].to_dict()
        raise UserError(
            f"seed_stats: two runs share the setting and seed {first}; group by the column that differs"
        )
    # W&B and JSON nulls can leave a value column of dtype object; the statistics need numbers, and an
    # inf is no more a measurement than a NaN is.
    frame = frame.assign(
        **{value: pd.to_numeric(frame[value]).replace([np.inf, -np.inf], np.nan) for value in values}
    )
    grouped = frame.groupby(by, dropna=False, sort=True)
    table = grouped[list(values)].agg(["mean", "std"])
    table.columns = [f"{value}_{stat}" for value, stat in table.columns]
    table["n"] = grouped[values[0]].count()
    return table.reset_index()


def probe_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The probes of the plasticity study (job_type `probe`)."""
    if "job_type" not in runs.columns:
        return runs.iloc[0:0]
    probes = runs[runs["job_type"] == "probe"]
    # Probes from before the setting existed measured with the running BatchNorm statistics.
    recalibrated = probes["recalibrate_bn"] if "recalibrate_bn" in probes.columns else False
    recalibrated = pd.Series(recalibrated, index=probes.index, dtype=object).fillna(False).astype(bool)
    # ... and with the final epoch's accuracy as acc_continue.
    averaged = probes["average_last"] if "average_last" in probes.columns else 1
    averaged = pd.to_numeric(pd.Series(averaged, index=probes.index)).fillna(1).astype(int)
    probes = probes.assign(recalibrate_bn=recalibrated, average_last=averaged)
    if {"acc_continue", "acc_control"} <= set(probes.columns):  # otherwise the tables name what is missing
        continued, control = (pd.to_numeric(probes[column]) for column in ("acc_continue", "acc_control"))
        probes = probes.assign(**{RELATIVE: continued - control})
    return probes


def measured_as(dataset: str, recalibrated: bool, average_last: int) -> str:
    """The dataset's label with the way its probes measured accuracy (figures and claims draw and judge
    probes measured differently apart, each labelled so)."""
    ways = ["BN recomputed"] if recalibrated else []
    if average_last > 1:
        ways.append(f"mean of the last {average_last} epochs")
    return f"{dataset} ({', '.join(ways)})" if ways else dataset


def training_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Ordinary training runs (job_type `train`): the method comparison, without the study's base runs."""
    if "job_type" not in runs.columns:
        return runs.iloc[0:0]
    return runs[runs["job_type"] == "train"]


def plasticity_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Plasticity (= acc_continue - acc_pre) and the accuracies behind it, per probe setting over seeds."""
    probes = probe_runs(runs)
    require_columns(probes, [*PROBE_KEYS, *PROBE_VALUES], "plasticity_table")
    return seed_stats(probes, PROBE_KEYS, [*PROBE_VALUES, RELATIVE])


# The seed-to-seed spread the CPU plasticity protocol aims at (pp), at every probe epoch after the first
# tenth of training.
NOISE_TARGET_PP = 2.0
NOISE_KEYS = (
    "arch",
    "dataset",
    "criterion",
    "pretrained_sparsity",
    "recalibrate_bn",
    "average_last",
    "probe_epoch",
)
NOISE_MEASURES = ("plasticity", RELATIVE)


def plasticity_noise(runs: pd.DataFrame) -> pd.DataFrame:
    """The seed-to-seed std (pp) of each plasticity measure per probe epoch, over the settings at that epoch
    (pruning rates, regeneration off/on): pooled, largest and median, the setting with the largest, the
    fewest seeds any setting has, and whether the epoch lies after the first tenth of training.

    The pooled std, sqrt(mean of the settings' variances), estimates the common spread from every
    setting's seeds together (with n = 3, each setting's own std rests on 2 degrees of freedom, and the
    largest of several such estimates overstates the spread that all of them share)."""
    table = plasticity_table(runs)
    columns = [
        *NOISE_KEYS,
        "measure",
        "pooled_std_pp",
        "max_std_pp",
        "median_std_pp",
        "worst_setting",
        "min_n",
        "after_first_tenth",
    ]
    if table.empty:
        return pd.DataFrame(columns=columns)
    probes = probe_runs(runs)
    total = pd.to_numeric(probes["optim.epochs"]).max() if "optim.epochs" in probes.columns else np.nan
    # seed_stats' n counts the headline value; a probe without a control has plasticity but no RELATIVE.
    for measure in NOISE_MEASURES:
        counts = seed_stats(probes, PROBE_KEYS, [measure])[[*PROBE_KEYS, "n"]]
        table = table.merge(counts.rename(columns={"n": f"{measure}_n"}), on=list(PROBE_KEYS), how="left")
    rows = []
    for key, part in table.groupby(list(NOISE_KEYS), sort=True, dropna=False):
        setting = dict(zip(NOISE_KEYS, key, strict=True))
        for measure in NOISE_MEASURES:
            std = part[f"{measure}_std"] * 100.0
            measured = std.notna()
            worst = part.loc[std.idxmax()] if measured.any() else None
            rows.append(
                {
                    **setting,
                    "measure": measure,
                    "pooled_std_pp": float(np.sqrt((std[measured] ** 2).mean()))
                    if measured.any()
                    else np.nan,
                    "max_std_pp": float(std.max()),
                    "median_std_pp": float(std.median()),
                    "worst_setting": ""
                    if worst is None
                    else f"rate {worst['pruning_rate']:g}, regeneration {'on' if worst['regeneration'] else 'off'}",
                    "min_n": int(part[f"{measure}_n"].min()),
                    "after_first_tenth": bool(np.isfinite(total) and setting["probe_epoch"] > total / 10),
                }
            )
    return pd.DataFrame(rows, columns=columns)


def regeneration_gain(runs: pd.DataFrame) -> pd.DataFrame:
    """Plasticity with regeneration minus without, paired by seed, then mean/std/n over seeds.

    Pairing by seed compares probes of the same base run, so base-run noise cancels. Settings where a seed
    has only one side are left out (and logged).
    """
    probes = probe_runs(runs)
    require_columns(probes, [*PROBE_KEYS, "plasticity", "seed"], "regeneration_gain")
    keys = [key for key in PROBE_KEYS if key != "regeneration"]
    with_regen = probes[probes["regeneration"].astype(bool)]
    without_regen = probes[~probes["regeneration"].astype(bool)]
    pairs = with_regen[[*keys, "seed", "plasticity"]].merge(
        without_regen[[*keys, "seed", "plasticity"]],
        on=[*keys, "seed"],
        how="inner",
        suffixes=("_with", "_without"),
        validate="one_to_one",
    )
    unpaired = len(with_regen) + len(without_regen) - 2 * len(pairs)
    if unpaired:
        logger.info("regeneration_gain: left out %d probes without a counterpart", unpaired)
    pairs["gain"] = pairs["plasticity_with"] - pairs["plasticity_without"]
    return seed_stats(pairs, keys, ["gain", "plasticity_with", "plasticity_without"])


def method_label(method: str, init_sparsity: float) -> str:
    """A gradual method's sparse-to-sparse variant is a different curve from its dense-to-sparse one."""
    if method in GRADUAL_METHODS and init_sparsity and not np.isnan(init_sparsity):
        return f"{method} (s_i={init_sparsity:g})"
    return method


def comparison_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Test accuracy, density and FLOPs per (arch, dataset, method, init_sparsity, sparsity, epochs)."""
    trained = training_runs(runs)
    require_columns(trained, [*COMPARISON_KEYS, "test_acc", "seed"], "comparison_table")
    values = [value for value in COMPARISON_VALUES if value in trained.columns]
    trained = trained.assign(init_sparsity=trained["init_sparsity"].fillna(0.0))
    table = seed_stats(trained, COMPARISON_KEYS, values)
    if "test_acc_at_best_val" in values:
        # Runs without a validation split have no best-validation epoch: that column's own n.
        numeric = pd.to_numeric(trained["test_acc_at_best_val"])
        counts = numeric.notna().groupby([trained[key] for key in COMPARISON_KEYS], dropna=False).sum()
        keys = list(zip(*(table[key] for key in COMPARISON_KEYS), strict=True))
        table["test_acc_at_best_val_n"] = [int(counts.get(key, 0)) for key in keys]
    table.insert(
        3, "label", [method_label(m, s) for m, s in zip(table["method"], table["init_sparsity"], strict=True)]
    )
    return table

"""The claims report over a generated run store: the verdict rule (holds, does not hold, inconclusive),
missing data, non-finite values, the exact rendered rows, `harness claims` and `make reproduce-cpu`."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import runstore_factory as factory
from typer.testing import CliRunner

from analysis import figures, load_runs
from analysis.claims import (
    FAILS,
    HOLDS,
    INCONCLUSIVE,
    RULE,
    Claim,
    Condition,
    Side,
    claim_rows,
    evaluate_claims,
    paired_interval,
    to_markdown,
    welch_interval,
    write_claims,
)
from harness.cli import commands as cli

REPO = Path(__file__).resolve().parent.parent
# Seeds 0, 1, 2 sit at -1, 0, +1 SEED_STEP around each comparison formula: every side's std is 0.40 pp.
SPEC = factory.StoreSpec(
    archs=("resnet20",),
    methods=("gmp", "rigl", "set", "granet", "granet-0.5"),
    sparsities=(0.9, 0.95, 0.98),
    probe_epochs=(0, 8, 12, 16),
    rates=(0.2, 0.5, 0.95),
    layerwise_archs=(),
    filter_rates=(0.5,),
    pretrained_sparsities=(0.0, 0.5),
    incomplete_runs=False,
    snapshot_seeds=(),
)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return factory.build_store(tmp_path_factory.mktemp("claims-store"), SPEC).root


@pytest.fixture
def store(pristine: Path, tmp_path: Path) -> Path:
    """A private copy of the generated store, so a test may damage it."""
    return Path(shutil.copytree(pristine, tmp_path / "runs"))


def claims_of(root: Path | list[Path]) -> dict[int, Claim]:
    runs = load_runs(root)
    return {claim.number: claim for claim in evaluate_claims(runs)}


def row(claim: Claim, index: int) -> str:
    """The rendered Markdown row of the claim (index 0) or of its condition `index` (1-based)."""
    return claim_rows(claim)[index]


def edit_summaries(
    root: Path, values: dict[int, float | None], key: str = "test_acc", **where: object
) -> int:
    """Set `key` to values[seed] in the summary of every run matching `where`; returns how many changed."""
    changed = 0
    for path in sorted(root.glob("*/*/summary.json")):
        summary = json.loads(path.read_text())
        if all(summary.get(column) == value for column, value in where.items()) and summary["seed"] in values:
            summary[key] = values[summary["seed"]]
            path.write_text(json.dumps(summary))  # NaN is written as JSON's NaN, as Python's json does
            changed += 1
    return changed


# ---------------------------------------------------------------------------------------------------------
# The rule


def test_welch_interval_exact_values():
    # Equal variances 1 and n = 3 per side: Welch's degrees of freedom are exactly 4.
    interval = welch_interval([2.0, 3.0, 4.0], [0.0, 1.0, 2.0])
    half = 2.7764451051977987 * math.sqrt(2 / 3)  # t(0.975, 4) x the standard error
    assert interval.difference == pytest.approx(2.0)
    assert (interval.low, interval.high) == pytest.approx((2.0 - half, 2.0 + half))
    # No spread on either side: the interval is the point, even where rounding leaves a tiny variance.
    point = welch_interval([0.1, 0.1, 0.1], [0.0, 0.0])
    assert point.low == point.high == point.difference == pytest.approx(0.1)
    with pytest.raises(ValueError, match="at least two values per side"):
        welch_interval([1.0], [0.0, 1.0])


def test_verdicts_of_single_tests_and_the_overall_rule():
    above = Condition("a", Side("A", (3.0, 4.0, 5.0)), Side("B", (0.0, 1.0, 2.0)))
    below = Condition("b", Side("A", (0.0, 1.0, 2.0)), Side("B", (3.0, 4.0, 5.0)))
    straddles = Condition("c", Side("A", (0.0, 2.0, 4.0)), Side("B", (1.0, 2.0, 3.0)))
    one_seed = Condition("d", Side("A", (9.0,)), Side("B", (0.0, 1.0)))
    missing = Condition("e", missing="no runs for rigl")
    assert [t.verdict for t in (above, below, straddles, one_seed, missing)] == [
        HOLDS,
        FAILS,
        INCONCLUSIVE,
        INCONCLUSIVE,
        INCONCLUSIVE,
    ]
    claim = lambda *tests: Claim(9, "x", "m", tests).verdict  # noqa: E731
    assert claim(above, above) == HOLDS
    assert claim(above, below, straddles) == FAILS
    assert claim(above, straddles) == INCONCLUSIVE
    assert claim(above, missing) == INCONCLUSIVE
    assert claim() == INCONCLUSIVE
    assert Claim(9, "x", "m", missing="no training runs").verdict == INCONCLUSIVE


def test_paired_interval_exact_values_over_the_seeds_both_sides_have():
    # Differences 2, 2, 3 (seeds 0, 1, 2): mean 7/3, std 1/sqrt(3), t(0.975, 2) = 4.3027.
    interval = paired_interval(Side("A", (3.0, 4.0, 6.0), (0, 1, 2)), Side("B", (1.0, 2.0, 3.0), (0, 1, 2)))
    half = 4.302652729911275 * (1 / math.sqrt(3)) / math.sqrt(3)
    assert interval is not None
    assert interval.difference == pytest.approx(7 / 3)
    assert (interval.low, interval.high) == pytest.approx((7 / 3 - half, 7 / 3 + half))
    # Only the seeds both sides have are paired: seeds 1 and 2 here, differences 2 and 3.
    shifted = paired_interval(Side("A", (3.0, 4.0, 6.0), (0, 1, 2)), Side("B", (2.0, 3.0, 9.0), (1, 2, 3)))
    half = 12.706204736174698 * (1 / math.sqrt(2)) / math.sqrt(2)
    assert shifted is not None
    assert (shifted.difference, shifted.low, shifted.high) == pytest.approx((2.5, 2.5 - half, 2.5 + half))
    # One common seed: no interval, and the test is inconclusive.
    lone = Condition("x", Side("A", (1.0, 2.0), (0, 1)), Side("B", (0.0, 5.0), (1, 2)), paired=True)
    assert paired_interval(lone.a, lone.b) is None and lone.verdict == INCONCLUSIVE
    # The same differences on every seed: the interval is the point.
    point = paired_interval(Side("A", (1.1, 2.1, 3.1), (0, 1, 2)), Side("B", (1.0, 2.0, 3.0), (0, 1, 2)))
    assert point is not None and point.low == point.high == pytest.approx(0.1)
    with pytest.raises(ValueError, match="needs the seed of each value"):
        paired_interval(Side("A", (1.0, 2.0)), Side("B", (0.0, 1.0)))
    with pytest.raises(ValueError, match="2 seeds for 3 values"):
        Side("A", (1.0, 2.0, 3.0), (0, 1))


def test_pairing_by_seed_separates_a_shared_seed_offset_from_the_effect():
    # Seeds differ by 10 points on both sides; within each seed A is 0.9-1.1 above B.
    a, b = Side("A", (11.0, 20.9, 31.1), (0, 1, 2)), Side("B", (10.0, 20.0, 30.0), (0, 1, 2))
    assert Condition("welch", a, b).verdict == INCONCLUSIVE
    assert Condition("paired", a, b, paired=True).verdict == HOLDS
    assert Condition("paired", b, a, paired=True).verdict == FAILS


# ---------------------------------------------------------------------------------------------------------
# On a generated run store


def test_a_claim_that_holds_and_one_that_is_inconclusive(pristine):
    claims = claims_of(pristine)
    granet_vs_set = claims[5].tests[3]
    assert granet_vs_set.verdict == HOLDS
    assert row(claims[5], 4) == (
        "| 5.4 | resnet20 / mnist1d: granet vs set at 90% | granet: 89.20 ± 0.40 (3) | set: 87.80 ± 0.40 (3) "
        "| +1.40 [+0.49, +2.31] | — | holds |"
    )
    # GraNet 0.4 points above GMP at 90% with 0.4 points of seed spread: not resolved by 3 seeds.
    assert row(claims[4], 1) == (
        "| 4.1 | resnet20 / mnist1d: granet vs gmp at 90% | granet: 89.20 ± 0.40 (3) | gmp: 88.80 ± 0.40 (3) "
        "| +0.40 [-0.51, +1.31] | — | inconclusive |"
    )
    assert [test.verdict for test in claims[4].tests] == [INCONCLUSIVE] * 3
    assert claims[4].verdict == INCONCLUSIVE
    assert claims[5].verdict == INCONCLUSIVE  # 5.1, granet vs rigl at 90%, is inconclusive
    # The plasticity claims hold on the fake study (its formulas have every trend the paper reports).
    assert {number: claims[number].verdict for number in (1, 2, 3, 7)} == dict.fromkeys((1, 2, 3, 7), HOLDS)
    assert [test.condition for test in claims[2].tests] == [
        f"resnet20 / mnist1d, rate {rate}%: {what}"
        for rate in (20, 50, 95)
        for what in (
            "first vs last probe epoch",
            "before vs after the LR decay at 10",
            "before vs after the LR decay at 15",
        )
    ]
    assert [len(claims[number].tests) for number in range(1, 8)] == [2, 9, 2, 3, 6, 3, 2]


def test_plasticity_sides_are_per_seed_means_of_the_closed_form(pristine):
    claims = claims_of(pristine / "plasticity")
    with_regen, without_regen = claims[1].tests[0].a, claims[1].tests[0].b

    def mean_plasticity(seed: int, regeneration: bool) -> float:
        values = [
            factory.probe_values(
                factory.Probe("resnet20", epoch, rate, regeneration, "global", 0.0, seed),
                SPEC.plasticity_epochs,
                SPEC.continue_epochs,
            )["plasticity"]
            for epoch in SPEC.probe_epochs
            for rate in SPEC.rates
        ]
        return 100 * sum(values) / len(values)

    assert with_regen.values == pytest.approx([mean_plasticity(seed, True) for seed in SPEC.seeds])
    assert without_regen.values == pytest.approx([mean_plasticity(seed, False) for seed in SPEC.seeds])


def test_plasticity_tests_are_paired_by_seed_and_the_comparisons_are_not(store):
    # Filter probes of the dense base runs: a 5-point spread between seeds shared by both sides, and
    # regeneration 0.9 / 1.1 / 1.0 pp above no regeneration within each seed.
    without = {0: 0.100, 1: 0.150, 2: 0.200}
    with_regen = {0: 0.109, 1: 0.161, 2: 0.210}
    where = {"criterion": "filter", "pretrained_sparsity": 0.0}
    assert edit_summaries(store, without, "plasticity", regeneration=False, **where) == 3 * len(
        SPEC.probe_epochs
    )
    assert edit_summaries(store, with_regen, "plasticity", regeneration=True, **where) == 3 * len(
        SPEC.probe_epochs
    )
    claims = claims_of(store)
    test = claims[7].tests[0]
    assert test.paired and test.verdict == HOLDS
    assert (
        welch_interval(test.a.values, test.b.values).low
        < 0
        < welch_interval(test.a.values, test.b.values).high
    )
    half = 4.302652729911275 * 0.1 / math.sqrt(3)
    assert test.interval is not None
    assert (test.interval.low, test.interval.high) == pytest.approx((1.0 - half, 1.0 + half))
    assert row(claims[7], 1).endswith(
        "| with: 16.00 ± 5.05 (3) | without: 15.00 ± 5.00 (3) | +1.00 [+0.75, +1.25] paired | — | holds |"
    )
    # Regeneration 1 pp below instead, within each seed: does not hold.
    assert edit_summaries(
        store, {0: 0.091, 1: 0.139, 2: 0.190}, "plasticity", regeneration=True, **where
    ) == 3 * len(SPEC.probe_epochs)
    assert claims_of(store)[7].tests[0].verdict == FAILS
    # Every plasticity test is paired; no comparison of training runs is.
    assert all(test.paired for number in (1, 2, 3, 7) for test in claims[number].tests)
    assert not any(test.paired for number in (4, 5, 6) for test in claims[number].tests)
    assert not row(claims[5], 4).endswith("paired | — | holds |")


def test_a_claim_that_does_not_hold(store):
    # GraNet (s_i = 0) at 98% now ends 2.45 points below GMP (87.85 ± 0.40).
    assert (
        edit_summaries(
            store, {0: 0.850, 1: 0.854, 2: 0.858}, method="granet", init_sparsity=0.0, sparsity=0.98
        )
        == 3
    )
    claims = claims_of(store / "compare")
    assert [test.verdict for test in claims[4].tests] == [INCONCLUSIVE, INCONCLUSIVE, FAILS]
    assert claims[4].verdict == FAILS
    assert row(claims[4], 3) == (
        "| 4.3 | resnet20 / mnist1d: granet vs gmp at 98% | granet: 85.40 ± 0.40 (3) | gmp: 87.85 ± 0.40 (3) "
        "| -2.45 [-3.36, -1.54] | — | does not hold |"
    )
    assert row(claims[4], 0).endswith("| **does not hold** |")
    markdown = to_markdown(list(claims.values()), load_runs(store / "compare"))
    assert "| 4 | GraNet (s_i = 0) beats GMP at 90/95/98% sparsity | does not hold |" in markdown


def test_missing_data_are_rows_that_say_what_is_missing(store):
    plasticity_only = claims_of(store / "plasticity")
    for number in (4, 5, 6):
        assert plasticity_only[number].missing == "no training runs (job_type train)"
        assert plasticity_only[number].verdict == INCONCLUSIVE
    assert row(plasticity_only[4], 0) == (
        "| 4 | **GraNet (s_i = 0) beats GMP at 90/95/98% sparsity**<br>final-epoch test accuracy (%), one run "
        "per seed | — | — | missing: no training runs (job_type train) | — | **inconclusive** |"
    )
    compare_only = claims_of(store / "compare")
    for number in (1, 2, 3, 7):
        assert compare_only[number].missing == "no plasticity probe runs (job_type probe)"

    # One condition missing: no RigL runs at 95%; the others are still tested.
    for path in store.glob("compare/*/summary.json"):
        summary = json.loads(path.read_text())
        if summary["method"] == "rigl" and summary["sparsity"] == 0.95:
            shutil.rmtree(path.parent)
    claims = claims_of(store / "compare")
    assert row(claims[5], 2) == (
        "| 5.2 | resnet20 / mnist1d: granet vs rigl at 95% | — | — | missing: no runs for rigl | — | inconclusive |"
    )
    assert [test.verdict for test in claims[5].tests] == [
        INCONCLUSIVE,
        INCONCLUSIVE,
        HOLDS,
        HOLDS,
        HOLDS,
        HOLDS,
    ]
    assert claims[5].verdict == INCONCLUSIVE


def test_a_sparsity_of_the_paper_that_was_not_run_is_a_missing_condition(store):
    for path in store.glob("compare/*/summary.json"):
        if json.loads(path.read_text())["sparsity"] == 0.95:
            shutil.rmtree(path.parent)
    claims = claims_of(store / "compare")
    assert [test.condition for test in claims[4].tests] == [
        f"resnet20 / mnist1d: granet vs gmp at {sparsity}%" for sparsity in (90, 95, 98)
    ]
    assert claims[4].tests[1].missing == "no runs for granet"


def test_non_finite_values_are_missing_and_n_counts_only_finite_ones(store):
    assert edit_summaries(store, {0: math.nan}, method="granet", init_sparsity=0.0, sparsity=0.9) == 1
    claims = claims_of(store / "compare")
    assert row(claims[5], 4) == (
        "| 5.4 | resnet20 / mnist1d: granet vs set at 90% | granet: 89.40 ± 0.28 (2) | set: 87.80 ± 0.40 (3) "
        "| +1.60 [+0.60, +2.60] | — | holds |"
    )
    # A JSON null too; with one finite seed left there is no interval.
    assert edit_summaries(store, {1: None}, method="granet", init_sparsity=0.0, sparsity=0.9) == 1
    claims = claims_of(store / "compare")
    assert row(claims[5], 4) == (
        "| 5.4 | resnet20 / mnist1d: granet vs set at 90% | granet: 89.60 (1) | set: 87.80 ± 0.40 (3) "
        "| +1.80 (no interval: n < 2) | — | inconclusive |"
    )
    # A NaN plasticity leaves that seed out of its side only (its other probes cannot stand in for it).
    assert (
        edit_summaries(
            store,
            {2: math.nan},
            "plasticity",
            criterion="filter",
            regeneration=True,
            pretrained_sparsity=0.0,
            probe_epoch=8,
        )
        == 1
    )
    filter_test = claims_of(store / "plasticity")[7].tests[0]
    assert (filter_test.a.n, filter_test.b.n) == (2, 3)
    assert filter_test.verdict == HOLDS


def test_two_runs_of_one_seed_and_setting_are_named_not_averaged(store):
    source = next(
        path.parent
        for path in store.glob("compare/*/summary.json")
        if json.loads(path.read_text())["method"] == "set"
        and json.loads(path.read_text())["sparsity"] == 0.98
        and json.loads(path.read_text())["seed"] == 1
    )
    shutil.copytree(source, source.parent / "copy-of-a-run")
    test = claims_of(store / "compare")[5].tests[5]
    assert test.missing == "set: two runs for seed 1 (a setting this report does not separate)"
    assert test.verdict == INCONCLUSIVE


def test_published_numbers_appear_where_the_paper_has_the_setting(pristine):
    paper = pd.DataFrame(
        {
            "model": ["resnet20", "resnet20"],
            "dataset": ["mnist1d", "mnist1d"],
            "method": ["granet", "gmp"],
            "init_sparsity": [0.0, 0.0],
            "sparsity": [0.9, 0.9],
            "test_acc_mean": [93.8, 93.59],
            "test_acc_std": [0.1, 0.1],
            "source": ["third-party transcription of Table 2", "paper Table 2 (verified)"],
            "transcribed": [True, False],
        }
    )
    claims = {claim.number: claim for claim in evaluate_claims(load_runs(pristine / "compare"), paper)}
    assert claims[4].tests[0].paper == "93.80† vs 93.59"
    assert claims[4].tests[1].paper == ""
    assert claims[5].tests[0].paper == "93.80† vs —"


# ---------------------------------------------------------------------------------------------------------
# Commands


def test_harness_claims_writes_or_prints_the_report(pristine, tmp_path):
    out = tmp_path / "report" / "claims.md"
    pristine = pristine / "compare"  # one group: the command is what is tested here
    result = CliRunner().invoke(cli.app, ["claims", str(pristine), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == str(out)
    runs = load_runs(pristine)
    assert out.read_text() == to_markdown(evaluate_claims(runs), runs)
    assert f"**Rule.** {RULE}" in out.read_text()
    printed = CliRunner().invoke(cli.app, ["claims", str(pristine)])
    assert printed.exit_code == 0 and printed.stdout == out.read_text()

    refused = CliRunner().invoke(cli.app, ["claims", str(pristine), "--out", str(tmp_path)])
    assert refused.exit_code == 2
    assert (
        refused.stderr
        == f"error: --out {tmp_path}: is a directory; give the report's file name, e.g. {tmp_path}/claims.md\n"
    )
    nothing = CliRunner().invoke(cli.app, ["claims", str(tmp_path / "nowhere")])
    assert nothing.exit_code == 2
    assert nothing.stderr == (
        f"error: {tmp_path / 'nowhere'}: not a directory (expected a runs directory, a group or a run)\n"
    )


def test_write_claims_creates_the_directory(pristine, tmp_path):
    path = write_claims(load_runs(pristine / "compare"), tmp_path / "a" / "b" / "claims.md")
    assert path.read_text().startswith("# The paper's claims, checked against these runs\n")


def test_write_figures_writes_claims_md_and_lists_it_in_the_index(pristine, tmp_path):
    # Base runs only: every figure is skipped, so this costs no drawing; the report is written regardless.
    runs = load_runs(pristine / "plasticity")
    runs = runs[runs["job_type"] == "base"]
    report = figures.write_figures(runs, tmp_path / "figures")
    assert set(report.skipped) == set(figures.FIGURE_NAMES)
    assert report.claims == tmp_path / "figures" / "claims.md"
    assert report.claims.read_text() == to_markdown(evaluate_claims(runs), runs)
    assert "## Claims report\n\n[claims.md](claims.md)" in report.index.read_text()


def _fake_project(tmp_path: Path, with_collapse: bool) -> Path:
    """A directory with the Makefile, the CPU sweep files (empty) and a venv whose `harness` only logs its
    arguments, so the target's plumbing runs for real without training anything."""
    project = tmp_path / "project"
    (project / "sweeps").mkdir(parents=True)
    shutil.copy(REPO / "Makefile", project / "Makefile")
    (project / "pyproject.toml").write_text("")
    names = ["plasticity-mnist1d", "plasticity-structured-mnist1d", "granet-mnist1d"]
    for name in names + (["collapse-mnist1d"] if with_collapse else []):
        (project / "sweeps" / f"{name}.yaml").write_text("")
    bin_dir = project / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    harness = bin_dir / "harness"
    harness.write_text(
        '#!/bin/sh\necho "$@" >> "$HARNESS_CALLS"\n[ "$1" != sweep ] || [ -z "$FAIL_SWEEP" ]\n'
    )
    harness.chmod(0o755)
    stamp = project / ".venv" / ".installed"
    stamp.write_text("")
    later = (project / "pyproject.toml").stat().st_mtime + 10
    os.utime(stamp, (later, later))  # the venv is up to date: no install step
    return project


def _make(
    project: Path, calls: Path, *arguments: str, fail_sweep: bool = False
) -> subprocess.CompletedProcess:
    env = {**os.environ, "HARNESS_CALLS": str(calls), "FAIL_SWEEP": "1" if fail_sweep else ""}
    return subprocess.run(
        ["make", "--no-print-directory", "reproduce-cpu", *arguments],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_make_reproduce_cpu_runs_every_cpu_sweep_then_figures_and_ends_with_claims(tmp_path):
    project = _fake_project(tmp_path, with_collapse=True)
    calls = tmp_path / "calls.log"
    result = _make(project, calls, "RUNS_DIR=store", "FIGURES_DIR=out", "WORKERS=3")
    assert result.returncode == 0, result.stderr
    sweep = "sweep run --workers 3 --runs-dir store --wandb disabled sweeps/"
    claim_methods = "--only method=gmp --only method=rigl --only method=set --only method=granet"
    assert calls.read_text().splitlines() == [
        f"{sweep}plasticity-mnist1d.yaml",
        f"{sweep}plasticity-structured-mnist1d.yaml",
        f"{sweep}granet-mnist1d.yaml {claim_methods} --only init_sparsity=0.0",
        f"{sweep}granet-mnist1d.yaml --only method=granet --only init_sparsity=0.5",
        "figures store --out out",
    ]  # the collapse ablation is not part of it (make sweep-collapse)
    assert result.stdout.splitlines()[-1] == "out/claims.md"

    # A failed sweep: the other sweeps and the figures still run, and the exit status says it failed.
    calls.unlink()
    failed = _make(
        project, calls, "RUNS_DIR=store", "FIGURES_DIR=out", "REPRO_WANDB=offline", fail_sweep=True
    )
    assert failed.returncode != 0
    lines = calls.read_text().splitlines()
    assert len(lines) == 5 and all("--wandb offline" in line for line in lines[:4])
    assert failed.stdout.splitlines()[-1] == "out/claims.md"


def test_the_report_states_the_seed_to_seed_std_of_plasticity_per_probe_epoch(pristine):
    from analysis.aggregate import plasticity_noise

    runs = load_runs(pristine)
    noise = plasticity_noise(runs)
    unstructured = noise[(noise["criterion"] == "global") & (noise["pretrained_sparsity"] == 0)]
    assert list(unstructured["probe_epoch"]) == [e for e in SPEC.probe_epochs for _ in range(2)]
    assert list(unstructured["measure"][:2]) == ["plasticity", "plasticity_vs_control"]
    epoch = 8
    at_epoch = unstructured[unstructured["probe_epoch"] == epoch]

    def seed_std(measure: str, rate: float, regen: bool) -> float:
        values = []
        for seed in (0, 1, 2):
            probe = factory.Probe("resnet20", epoch, rate, regen, "global", 0.0, seed)
            value = factory.probe_values(probe, SPEC.plasticity_epochs, SPEC.continue_epochs)
            values.append(
                100
                * (
                    value["plasticity"]
                    if measure == "plasticity"
                    else value["acc_continue"] - value["acc_control"]
                )
            )
        return float(pd.Series(values).std())

    text = to_markdown(evaluate_claims(runs), runs)
    section = text[text.index("## Measurement noise") :]
    for measure in ("plasticity", "plasticity_vs_control"):
        (row,) = at_epoch[at_epoch["measure"] == measure].itertuples(index=False)
        stds = [seed_std(measure, rate, regen) for rate in SPEC.rates for regen in (False, True)]
        assert row.max_std_pp == pytest.approx(max(stds))
        assert row.pooled_std_pp == pytest.approx(float(np.sqrt(np.mean(np.square(stds)))))
        assert row.median_std_pp == pytest.approx(float(np.median(stds)))
        assert row.min_n == 3 and row.after_first_tenth is (epoch > SPEC.plasticity_epochs / 10)
        within = "yes" if row.pooled_std_pp <= 2.0 else "no"
        assert (
            f"| resnet20 / mnist1d | global | 0% | {epoch} | {measure} | {row.pooled_std_pp:.2f} | "
            f"{row.max_std_pp:.2f} |" in section
        )
        assert section.count(f"| {epoch} | {measure} | {row.pooled_std_pp:.2f} |") >= 1
        assert any(
            line.endswith(f"| {within} |") and f"| {epoch} | {measure} |" in line
            for line in section.splitlines()
        )
    # The generated store's relative measure is less noisy than the paper's: its acc_pre jitter cancels.
    pooled = at_epoch.set_index("measure")["pooled_std_pp"]
    assert pooled["plasticity_vs_control"] < pooled["plasticity"]
    assert bool(unstructured.iloc[0]["after_first_tenth"]) is False  # epoch 0
    assert "— (first tenth)" in section


def test_noise_pools_the_settings_variances_and_counts_each_measures_own_seeds():
    from analysis.aggregate import plasticity_noise

    base = {
        "job_type": "probe", "arch": "resnet20", "dataset": "mnist1d", "criterion": "global",
        "pretrained_sparsity": 0.0, "continue_epochs": 6, "probe_epoch": 10, "recalibrate_bn": True,
        "acc_post": 0.5, "optim.epochs": 30,
    }  # fmt: skip
    rows = []
    # Setting A: plasticity 0.10/0.12/0.14 (std 2 pp), vs control -0.01/-0.01/-0.01 (std 0).
    # Setting B: plasticity 0.10/0.14/0.18 (std 4 pp); seed 2 has no control (an older probe).
    for seed, (pre_a, pre_b) in enumerate([(0.80, 0.80), (0.78, 0.76), (0.76, 0.72)]):
        rows.append({**base, "seed": seed, "pruning_rate": 0.2, "regeneration": False, "acc_pre": pre_a,
                     "acc_continue": 0.90, "acc_control": 0.91, "plasticity": 0.90 - pre_a})  # fmt: skip
        control = 0.92 + 0.02 * seed if seed < 2 else None
        rows.append({**base, "seed": seed, "pruning_rate": 0.5, "regeneration": False, "acc_pre": pre_b,
                     "acc_continue": 0.90, "acc_control": control, "plasticity": 0.90 - pre_b})  # fmt: skip
    noise = plasticity_noise(pd.DataFrame(rows)).set_index("measure")
    paper, relative = noise.loc["plasticity"], noise.loc["plasticity_vs_control"]
    assert paper["pooled_std_pp"] == pytest.approx(np.sqrt((2.0**2 + 4.0**2) / 2))
    assert (
        paper["max_std_pp"] == pytest.approx(4.0) and paper["worst_setting"] == "rate 0.5, regeneration off"
    )
    assert paper["min_n"] == 3
    # B's relative values: -0.02, -0.04 (std 1.414 pp over its 2 seeds); A's: 0.
    assert relative["pooled_std_pp"] == pytest.approx(np.sqrt((0.0 + 2.0) / 2))
    assert relative["min_n"] == 2 and relative["worst_setting"] == "rate 0.5, regeneration off"
    assert bool(relative["after_first_tenth"]) is True

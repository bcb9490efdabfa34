"""The README's numbers and statements agree with the recipes, sweep files and Makefile they describe."""

from __future__ import annotations

import math
import re
from collections import Counter
from pathlib import Path

import pytest
import yaml

from harness.config import resolve
from harness.launch import sweep_file, sweep_plan

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
FLAT = " ".join(README.split())  # README sentences wrap; compare with single spaces
RECIPES = REPO / "harness" / "recipes"


def _recipe(name: str) -> dict:
    return yaml.safe_load((RECIPES / f"{name}.yaml").read_text())


def _says(text: str) -> None:
    assert " ".join(text.split()) in FLAT, f"README does not say: {text}"


def test_the_cpu_recipe_is_the_one_the_readme_describes():
    config = resolve("granet", dataset="mnist1d", arch="resnet20")
    data, optim, sparsity = config.data, config.optim, config.sparsity
    test_samples = data.num_samples // 5  # mnist1d's make_dataset holds out 20% as its test set
    train = data.num_samples - test_samples - data.val_size
    steps_per_epoch = math.ceil(train / optim.batch_size)
    decays = [fraction * optim.epochs for fraction in optim.lr_decay_at]
    _says(
        f"MNIST-1D with {data.num_samples:,} samples ({train:,} train, {data.val_size} validation, "
        f"{test_samples} test), ResNet-20 with 1-D convolutions at width {config.model.width:g}"
    )
    _says(f"{optim.epochs} epochs of batch {optim.batch_size} ({steps_per_epoch} steps each)")
    _says(f"decayed x{optim.lr_decay_factor:g} at epochs {decays[0]:g} and {decays[1]:g}")
    prune_end = round(sparsity.prune_end * optim.epochs * steps_per_epoch)
    dt = sparsity.update_frequency
    events = len(range(dt, prune_end + 1, dt)) + (prune_end % dt != 0)
    _says(
        f"GraNet dT = {dt} steps: {events} pruning events up to epoch {sparsity.prune_end * optim.epochs:g}"
    )
    _says(
        f"every {dt} steps, while the paper's dT = {_recipe('cifar10')['sparsity']['update_frequency']} steps"
    )
    _says(f"regrown weights {_recipe('cifar10')['sparsity']['update_frequency'] // dt} times as many steps")
    _says(f"regeneration to the end, r_0 = {sparsity.regen_rate:g}")


def test_validation_split_sizes_are_the_recipes():
    cifar, imagenet, mnist1d = (
        _recipe(name)["data"]["val_size"] for name in ("cifar10", "imagenet", "mnist1d")
    )
    _says(f"({cifar:,} CIFAR images; {imagenet:,} ImageNet images; {mnist1d} MNIST-1D samples)")
    assert resolve("dense", dataset="cifar100", arch="resnet50").data.val_size == cifar


def test_the_cifar_schedule_quoted_is_the_recipes():
    optim = _recipe("cifar10")["optim"]
    epochs = [fraction * optim["epochs"] for fraction in optim["lr_decay_at"]]
    _says(
        f"`optim.lr_decay_at: {optim['lr_decay_at']}` (epochs {epochs[0]:g} and {epochs[1]:g} of {optim['epochs']})"
    )


@pytest.mark.parametrize(
    ("name", "statement", "expected"),
    [
        ("granet-mnist1d", "`make sweep-granet SCALE=cpu`, {total} runs", None),
        ("plasticity-mnist1d", "3 base runs (one per seed), {control} controls, {probe} probes",
         {"probe": 3 * 24, "control": 3 * 4}),
        ("plasticity-structured-mnist1d", "6 base runs (pre-trained sparsities 0/0.5, 3 seeds), {control} "
         "controls, {probe} probes", {"probe": 3 * 16, "control": 3 * 4}),
    ],
)  # fmt: skip
def test_sweep_sizes_quoted_are_what_the_sweep_files_plan(name, statement, expected, tmp_path):
    jobs = sweep_plan.plan_jobs(sweep_file.load_sweep(REPO / "sweeps" / f"{name}.yaml"), runs_dir=tmp_path)
    kinds = Counter(job.run_dir.name.split("-")[0] for job in jobs)
    _says(statement.format(total=len(jobs), control=kinds["control"], probe=kinds["probe"]))
    if expected is not None:
        assert {kind: kinds[kind] for kind in expected} == expected


def test_sweep_headers_quote_the_recipes_dt():
    dt = _recipe("mnist1d")["sparsity"]["update_frequency"]
    for path in sorted((REPO / "sweeps").glob("*mnist1d*.yaml")):
        header = "".join(line for line in path.read_text().splitlines(keepends=True) if line.startswith("#"))
        quoted = [
            int(value) for value in re.findall(r"dT = (\d+)", " ".join(header.replace("#", " ").split()))
        ]
        assert all(value == dt for value in quoted), (path.name, quoted)


def test_every_make_target_is_in_the_readme():
    makefile = (REPO / "Makefile").read_text()
    (phony,) = re.findall(r"^\.PHONY: (.+)$", makefile, flags=re.MULTILINE)
    for target in set(phony.split()) - {"clean", "format"}:
        assert f"`make {target}" in README, f"make {target} is not in the README"


def test_the_readme_noise_table_is_the_committed_reports():
    """README's measured std of plasticity is copied from reports/cpu/claims.md, cell for cell."""
    report = (REPO / "reports" / "cpu" / "claims.md").read_text()
    noise = report[report.index("## Measurement noise") :]
    expected: dict[tuple[str, str, str], dict[str, str]] = {}
    for line in noise.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if len(cells) != 11 or not cells[3].isdigit() or cells[10].startswith("—"):
            continue
        expected.setdefault((cells[1], cells[2], cells[4]), {})[cells[3]] = f"{cells[5]} / {cells[6]}"
    readme = README[README.index("Measured seed-to-seed std (pp, n = 3") :]
    rows = [line for line in readme.splitlines()[:12] if re.match(r"\| (global|filter) \|", line)]
    assert len(rows) == len(expected) == 6
    for row in rows:
        criterion, sparsity, measure, *epochs = [cell.strip() for cell in row.strip("|").split("|")]
        wanted = expected[(criterion, sparsity, measure)]
        assert [cell for cell in epochs if cell] == [wanted[epoch] for epoch in sorted(wanted, key=int)], row


def test_the_readme_claims_summary_is_the_committed_reports():
    """README's table of verdicts is reports/cpu/claims.md's summary, row for row."""

    def summary(text: str, heading: str) -> list[tuple[str, str, str]]:
        block = text[text.index(heading) :]
        rows = []
        for line in block.splitlines()[1:]:
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            if len(cells) == 3 and cells[0].isdigit():
                rows.append(tuple(cells))
            elif rows and not line.startswith("|"):
                break
        return rows

    report = (REPO / "reports" / "cpu" / "claims.md").read_text()
    expected = summary(report, "## Summary")
    assert len(expected) == 7
    assert summary(README, "### Reproducing the paper's claims on a CPU") == expected


def test_the_intervals_the_readme_quotes_from_the_claims_are_the_committed_reports():
    """Every 95% interval the README's claims section quotes is one of reports/cpu/claims.md's (as printed
    there, or rounded to one decimal): the prose cannot keep a number the report no longer has."""
    report = (REPO / "reports" / "cpu" / "claims.md").read_text()
    number = r"[+-]\d+\.\d+"
    printed = set(re.findall(rf"\[({number}), ({number})\]", report))
    rounded = {(f"{float(low):+.1f}", f"{float(high):+.1f}") for low, high in printed}
    section = README[README.index("### Reproducing the paper's claims on a CPU") :]
    section = section[: section.index("\n### ", 1)]
    quoted = re.findall(rf"\[({number}), ({number})\]", section)
    assert len(quoted) >= 8
    for interval in quoted:
        assert interval in printed or interval in rounded, (
            f"[{interval[0]}, {interval[1]}] is not in claims.md"
        )


def test_the_filter_regrowth_numbers_the_readme_quotes_are_the_committed_report():
    """The README's explanation of claim 7 quotes reports/cpu/filter_regrowth.md, number for number."""
    report = (REPO / "reports" / "cpu" / "filter_regrowth.md").read_text()
    paragraph = README[README.index("**Why, measured:**") :]
    paragraph = paragraph[: paragraph.index("\n\n")]
    quoted = re.findall(r"[+-]?\d+\.\d+(?: ± \d+\.\d+)?", paragraph.replace("sqrt(eps) ≈ 0.003", ""))
    assert len(quoted) >= 8
    for number in quoted:
        assert number in report, f"{number} is not in filter_regrowth.md"
    assert "24 of the 24" in report

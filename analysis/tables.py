"""The GraNet-vs-baselines table next to the paper's numbers, as Markdown and LaTeX.

The published numbers ship as `analysis/data/paper_results.csv` (a copy of the team's reference file).
Only the dense ResNet-20 / CIFAR-10 row was verified against the paper; the other rows come from a
third-party transcription of Table 2 and are marked with a dagger in both formats.
"""

from __future__ import annotations

import math
from importlib import resources

import numpy as np
import pandas as pd

from analysis.aggregate import GRADUAL_METHODS, comparison_table, method_label

TRANSCRIPTION_MARK = "†"
TABLE_COLUMNS = (
    "arch",
    "dataset",
    "method",
    "init_sparsity",
    "sparsity",
    "epochs",
    "ours_mean",
    "ours_std",
    "n",
    "ours_best_val_mean",
    "ours_best_val_std",
    "n_best_val",
    "paper_mean",
    "paper_std",
    "transcribed",
)


def paper_results() -> pd.DataFrame:
    """The published test accuracies (percent), with `transcribed` True for unverified transcriptions."""
    with resources.files("analysis").joinpath("data/paper_results.csv").open() as handle:
        paper = pd.read_csv(handle)
    paper["transcribed"] = paper["source"].str.contains("transcription")
    return paper


def _paper_match(
    paper: pd.DataFrame, arch: str, dataset: str, method: str, init: float, sparsity: float
) -> pd.DataFrame:
    # A blank published init_sparsity means the method has no s_i: it matches any of ours.
    same = (
        (paper["model"] == arch)
        & (paper["dataset"] == dataset)
        & (paper["method"] == method)
        & np.isclose(paper["sparsity"], sparsity)
        & (paper["init_sparsity"].isna() | np.isclose(paper["init_sparsity"].fillna(-1.0), init))
    )
    return paper[same]


def comparison_with_paper(runs: pd.DataFrame, paper: pd.DataFrame | None = None) -> pd.DataFrame:
    """Our mean ± std (percent, over seeds) per setting next to the published number for it.

    Published rows for the same (arch, dataset) that we did not run are listed too, with our side empty,
    so the table shows what is missing.
    """
    paper = paper_results() if paper is None else paper
    ours = comparison_table(runs)
    rows: list[dict[str, object]] = []
    used: set[int] = set()
    for setting in ours.to_dict("records"):
        match = _paper_match(
            paper,
            setting["arch"],
            setting["dataset"],
            setting["method"],
            setting["init_sparsity"],
            setting["sparsity"],
        )
        used.update(match.index)
        published = match.iloc[0] if len(match) else None
        rows.append(
            {
                "arch": setting["arch"],
                "dataset": setting["dataset"],
                "method": setting["label"],
                # s_i is a setting only of gradual methods; the others' is fixed (0, or the final sparsity).
                "init_sparsity": setting["init_sparsity"] if setting["method"] in GRADUAL_METHODS else np.nan,
                "sparsity": setting["sparsity"],
                "epochs": setting["epochs"],
                "ours_mean": 100 * setting["test_acc_mean"],
                "ours_std": 100 * setting["test_acc_std"],
                "n": setting["n"],
                "ours_best_val_mean": 100 * setting.get("test_acc_at_best_val_mean", np.nan),
                "ours_best_val_std": 100 * setting.get("test_acc_at_best_val_std", np.nan),
                "n_best_val": setting.get("test_acc_at_best_val_n", 0),
                "paper_mean": np.nan if published is None else published["test_acc_mean"],
                "paper_std": np.nan if published is None else published["test_acc_std"],
                "transcribed": None if published is None else bool(published["transcribed"]),
            }
        )
    pairs = set(zip(ours["arch"], ours["dataset"], strict=True))
    for index, published in paper.iterrows():
        if index in used or (published["model"], published["dataset"]) not in pairs:
            continue
        init = 0.0 if math.isnan(published["init_sparsity"]) else published["init_sparsity"]
        rows.append(
            {
                "arch": published["model"],
                "dataset": published["dataset"],
                "method": method_label(published["method"], init),
                "init_sparsity": published["init_sparsity"],
                "sparsity": published["sparsity"],
                "epochs": np.nan,
                "ours_mean": np.nan,
                "ours_std": np.nan,
                "n": 0,
                "ours_best_val_mean": np.nan,
                "ours_best_val_std": np.nan,
                "n_best_val": 0,
                "paper_mean": published["test_acc_mean"],
                "paper_std": published["test_acc_std"],
                "transcribed": bool(published["transcribed"]),
            }
        )
    table = pd.DataFrame.from_records(rows, columns=list(TABLE_COLUMNS))
    return table.sort_values(["arch", "dataset", "sparsity", "method"], kind="stable").reset_index(drop=True)


# ---------------------------------------------------------------------------------------------------------
# Formatting


def _number(value: float, digits: int = 2) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _mean_std(mean: float, std: float, plus_minus: str) -> str:
    if mean is None or math.isnan(mean):
        return "—"
    return _number(mean) if math.isnan(std) else f"{_number(mean)}{plus_minus}{_number(std)}"


def _cells(row: dict[str, object], plus_minus: str, mark: str) -> list[str]:
    paper = _mean_std(row["paper_mean"], row["paper_std"], plus_minus)
    if row["transcribed"] and paper != "—":
        paper += mark
    init = row["init_sparsity"]
    epochs = row["epochs"]
    return [
        str(row["arch"]),
        str(row["dataset"]),
        str(row["method"]),
        "—" if init is None or math.isnan(init) else f"{init:g}",
        f"{row['sparsity']:g}",
        "—" if math.isnan(epochs) else f"{epochs:g}",
        _mean_std(row["ours_mean"], row["ours_std"], plus_minus),
        str(row["n"]),
        _mean_std(row["ours_best_val_mean"], row["ours_best_val_std"], plus_minus),
        str(row["n_best_val"]),
        paper,
    ]


HEADERS = (
    "arch",
    "dataset",
    "method",
    "s_i",
    "sparsity",
    "epochs",
    "ours: test acc (%)",
    "n",
    "ours: test acc at best val (%)",
    "n (best val)",
    "paper: test acc (%)",
)
NOTE = (
    "Ours: final-epoch test accuracy, mean ± std over seeds (n seeds); the best-validation column, mean ± "
    "std over the n (best val) runs with a validation split, selects the epoch on a held-out split. s_i: "
    "only for gradual methods (— : fixed by the method). Paper: as published (the authors select the best epoch on the test set). "
    f"{TRANSCRIPTION_MARK} third-party transcription of the paper's Table 2, not verified against the paper."
)


def to_markdown(table: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "|".join("---" for _ in HEADERS) + "|"]
    for row in table.to_dict("records"):
        lines.append("| " + " | ".join(_cells(row, " ± ", TRANSCRIPTION_MARK)) + " |")
    return "\n".join(lines) + "\n\n" + NOTE + "\n"


def _latex_escape(text: str) -> str:
    return text.replace("\\", r"\textbackslash{}").replace("_", r"\_").replace("%", r"\%").replace("&", r"\&")


def to_latex(table: pd.DataFrame) -> str:
    """A booktabs tabular (needs `\\usepackage{booktabs}`); the dagger marks transcribed published rows."""
    header = " & ".join(_latex_escape(text).replace("±", r"$\pm$") for text in HEADERS) + r" \\"
    lines = [
        r"% needs \usepackage{booktabs} (for \toprule, \midrule, \bottomrule)",
        r"\begin{tabular}{" + "l" * 3 + "r" * (len(HEADERS) - 3) + "}",
        r"\toprule",
        header,
        r"\midrule",
    ]
    for row in table.to_dict("records"):
        cells = [
            _latex_escape(cell).replace(" ± ", r" $\pm$ ").replace(TRANSCRIPTION_MARK, r"$^\dagger$")
            for cell in _cells(row, " ± ", TRANSCRIPTION_MARK)
        ]
        lines.append(" & ".join(cell.replace("—", "--") for cell in cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", "", "% " + NOTE.replace(TRANSCRIPTION_MARK, "dagger:")]
    return "\n".join(lines) + "\n"

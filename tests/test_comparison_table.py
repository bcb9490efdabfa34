"""comparison_table.md: s_i only where it is a setting, mean ± std and n in the best-validation column."""

from __future__ import annotations

import math

import pandas as pd

from analysis.tables import comparison_with_paper, to_latex, to_markdown


def _runs() -> pd.DataFrame:
    rows = []
    for seed, (acc, best) in enumerate(((0.60, 0.70), (0.62, 0.74), (0.64, float("nan")))):
        for method, init in (("rigl", 0.95), ("set", 0.95), ("static", 0.95), ("granet", 0.5)):
            rows.append({
                "run_key": f"g/{method}-{seed}", "job_type": "train", "arch": "resnet20", "dataset": "mnist1d",
                "method": method, "init_sparsity": init, "sparsity": 0.95, "epochs": 30, "seed": seed,
                "test_acc": acc, "test_acc_at_best_val": best,
            })  # fmt: skip
    return pd.DataFrame(rows)


def test_s_i_only_for_gradual_methods_and_best_val_with_std_and_n():
    table = comparison_with_paper(_runs())
    by_method = {row["method"]: row for row in table.to_dict("records")}
    for method in ("rigl", "set", "static"):
        assert math.isnan(by_method[method]["init_sparsity"])
    assert by_method["granet (s_i=0.5)"]["init_sparsity"] == 0.5
    rigl = by_method["rigl"]
    assert (rigl["n"], rigl["n_best_val"]) == (3, 2)  # the third seed had no validation split
    assert math.isclose(rigl["ours_best_val_mean"], 72.0) and math.isclose(rigl["ours_best_val_std"], 8**0.5)
    markdown = to_markdown(table)
    assert (
        "| resnet20 | mnist1d | rigl | — | 0.95 | 30 | 62.00 ± 2.00 | 3 | 72.00 ± 2.83 | 2 | — |" in markdown
    )
    assert (
        "| resnet20 | mnist1d | granet (s_i=0.5) | 0.5 | 0.95 | 30 | 62.00 ± 2.00 | 3 | 72.00 ± 2.83 | 2 |"
        in markdown
    )
    assert "| n (best val) |" in markdown.splitlines()[0]
    assert (
        to_latex(table).splitlines()[0]
        == r"% needs \usepackage{booktabs} (for \toprule, \midrule, \bottomrule)"
    )

"""Analysis of harness runs: load run stores or W&B projects into pandas, aggregate over seeds, plot.

`analysis.figures` (matplotlib) is imported on demand, so loading runs stays light:

    from analysis import load_runs
    from analysis.figures import write_figures

    report = write_figures(load_runs("runs"), "figures")   # PNG + PDF per figure, tables, index.md
"""

from analysis.aggregate import comparison_table, plasticity_table, regeneration_gain, seed_stats
from analysis.runs import layer_events, load_curves, load_mask_events, load_runs, run_row

__all__ = [
    "comparison_table",
    "layer_events",
    "load_curves",
    "load_mask_events",
    "load_runs",
    "plasticity_table",
    "regeneration_gain",
    "run_row",
    "seed_stats",
]

"""Figure style: fonts, one colour per method, a colour ramp for pruning rates, and saving PNG + PDF.

Figures are built with `matplotlib.figure.Figure` on the Agg canvas, never through pyplot, so nothing
here touches global backend state: scripts, tests and notebooks share the same code.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import ParamSpec, TypeVar

import matplotlib as mpl
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Colormap, to_rgb
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

P = ParamSpec("P")
R = TypeVar("R")

FORMATS = ("png", "pdf")
PNG_DPI = 150

RC = {
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 8.5,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "lines.linewidth": 1.6,
    "lines.markersize": 5,
    "errorbar.capsize": 3,
    "legend.frameon": False,
    "pdf.fonttype": 42,  # TrueType in PDFs: text stays editable and searchable
    "savefig.bbox": "tight",
}

# Fixed per method, so a method has the same colour in every figure (Okabe-Ito, colour-blind safe).
METHOD_COLOURS = {
    "dense": "#000000",
    "static": "#999999",
    "gmp": "#E69F00",
    "gmp (s_i=0.5)": "#A6761D",
    "gmp-layerwise": "#F0E442",
    "rigl": "#56B4E9",
    "set": "#009E73",
    "granet": "#D55E00",
    "granet (s_i=0.5)": "#CC79A7",
    "snip": "#0072B2",
    "grasp": "#7F3C8D",
    "synflow": "#3969AC",
    "mest": "#117733",
    "acdc": "#882255",
}
_FALLBACK = ("#1B9E77", "#7570B3", "#E7298A", "#66A61E", "#8C564B", "#666666")
METHOD_ORDER = tuple(METHOD_COLOURS)

# Stages of a plasticity probe, for damage-vs-recovery plots.
STAGE_COLOURS = {
    "acc_pre": "#555555",
    "acc_post": "#D55E00",
    "acc_continue": "#0072B2",
    "acc_control": "#009E73",
}
STAGE_LABELS = {
    "acc_pre": "before pruning",
    "acc_post": "right after pruning (damage)",
    "acc_continue": "after fine-tuning (recovery)",
    "acc_control": "unpruned control, same epochs",
}


def method_colour(label: str) -> str:
    if label in METHOD_COLOURS:
        return METHOD_COLOURS[label]
    return _FALLBACK[sum(map(ord, label)) % len(_FALLBACK)]


def method_sort_key(label: str) -> tuple[int, str]:
    return (METHOD_ORDER.index(label) if label in METHOD_ORDER else len(METHOD_ORDER), label)


def rate_colours(rates: Iterable[float]) -> dict[float, tuple[float, float, float, float]]:
    """Light to dark along one ramp: a higher pruning rate reads as a darker line."""
    ordered = sorted(set(rates))
    ramp: Colormap = mpl.colormaps["viridis_r"]
    if len(ordered) == 1:
        return {ordered[0]: ramp(0.7)}
    return {rate: ramp(0.15 + 0.8 * index / (len(ordered) - 1)) for index, rate in enumerate(ordered)}


def sequential_colours(count: int, name: str = "plasma") -> list[tuple[float, float, float, float]]:
    ramp = mpl.colormaps[name]
    return [ramp(0.05 + 0.8 * index / max(count - 1, 1)) for index in range(count)]


def new_figure(
    columns: int, rows: int = 1, *, panel: tuple[float, float] = (4.2, 3.2), **subplots: object
) -> tuple[Figure, np.ndarray]:
    """A figure of `rows` x `columns` panels (the axes array is always 2-D) on the Agg canvas."""
    figure = Figure(figsize=(panel[0] * columns, panel[1] * rows), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, columns, squeeze=False, **subplots)
    return figure, axes


def styled(function: Callable[P, R]) -> Callable[P, R]:
    """Run a plotting function under the house rcParams (fonts and styles are read while drawing)."""

    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with mpl.rc_context(RC):
            return function(*args, **kwargs)

    return wrapper


def save(figure: Figure, out_dir: Path, name: str) -> list[Path]:
    """Write `name.png` and `name.pdf` into `out_dir`; returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    with mpl.rc_context(RC):
        for extension in FORMATS:
            path = out_dir / f"{name}.{extension}"
            # No creation date in the PDF: the same runs give byte-identical figures, so a regenerated
            # report shows as changed only where a number did.
            metadata = {"CreationDate": None} if extension == "pdf" else None
            figure.savefig(path, dpi=PNG_DPI if extension == "png" else None, metadata=metadata)
            paths.append(path)
    return paths


def keep_span(axis: Axes, span: float) -> None:
    """Widen the y axis to at least `span` data units around what is drawn: matplotlib zooms onto nearly
    equal values (three runs within 0.2 points would fill the panel and look like a big difference)."""
    low, high = axis.get_ylim()
    if high - low < span:
        middle = (low + high) / 2
        axis.set_ylim(middle - span / 2, middle + span / 2)


def log_ticks(axis: Axes, which: str = "x") -> None:
    """Log-axis ticks at 1, 2 and 5 times powers of ten, written as plain numbers (0.05, 0.1, 0.2), and no
    labels on the minor ticks, which otherwise print in scientific notation over each other."""
    target = axis.xaxis if which == "x" else axis.yaxis
    target.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    target.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    target.set_minor_formatter(NullFormatter())


def integer_ticks(axis: Axes, which: str = "x") -> None:
    """Ticks only at whole numbers, for epochs (a probe at epoch 1.5 does not exist)."""
    (axis.xaxis if which == "x" else axis.yaxis).set_major_locator(MaxNLocator(integer=True))


def shade(colour: str, amount: float = 0.45) -> tuple[float, float, float]:
    """`colour` mixed with black: the same hue, told apart from the original at a glance."""
    red, green, blue = to_rgb(colour)
    return (red * (1 - amount), green * (1 - amount), blue * (1 - amount))

"""EDC plots through matplotlib, as PNG, PDF or SVG (chosen by the file's suffix): one panel
per dataset and FMR target, one line per quality method. Each method has its own line style
and marker as well as its colour, so a greyscale print keeps them apart; the legend names
the method and its pAUC; the pAUC's discard limit is marked. Protocol A curves run through
the 20 discard levels; protocol B curves are steps (left-constant, as their area is computed).

matplotlib is imported inside `plot_edc` only, so the CLI starts without it."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from synfiqa.errors import ConfigError
from synfiqa.stages.s8_evaluate.dataset import DatasetResult
from synfiqa.stages.s8_evaluate.report import (common_decimals, fmr_label, format_number, method_names,
                                               unreachable_fmrs)
from synfiqa.store import write_atomic

FORMATS = {".png": "png", ".pdf": "pdf", ".svg": "svg"}
PANEL_INCHES = (3.6, 2.9)
PNG_DPI = 200
# Okabe & Ito's colour-blind-safe palette; the styles and markers alone keep eight methods
# apart in greyscale
COLOURS = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442"]
LINE_STYLES = ["-", "--", "-.", ":", (0, (5, 1.5, 1, 1.5, 1, 1.5)), (0, (8, 2)), (0, (1, 1)), (0, (3, 1, 1, 1))]
MARKERS = ["o", "s", "^", "D", "v", "x", "P", "*"]
STYLE = {
    # text stays text: searchable and editable in the PDF and SVG; TrueType (42) rather than
    # Type 3 fonts, which some publishers' PDF checks refuse
    "pdf.fonttype": 42, "ps.fonttype": 42, "svg.fonttype": "none",
    "svg.hashsalt": "synfiqa",  # the SVG's element ids, hence its bytes, repeat from run to run
    "font.size": 8, "axes.titlesize": 8.5, "legend.fontsize": 7, "axes.labelsize": 8,
}
# the files carry no creation date, so one evaluation always writes the same bytes
METADATA = {"png": {"Software": None}, "pdf": {"CreationDate": None, "Producer": None}, "svg": {"Date": None}}


def plot_format(path: str | Path) -> str:
    """"png", "pdf" or "svg" from the file's suffix; ConfigError for any other."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise ConfigError(f"cannot draw a plot into {str(path)!r}: the file name must end in "
                          f"{', '.join(FORMATS)} (the suffix chooses the format)")
    return FORMATS[suffix]


# the table's value under a name short enough for a legend
LEGEND_VALUE_NAMES = {"pAUC (normalised)": "pAUC", "pAUC (stepwise)": "pAUC", "pAUC - theoretical best": "pAUC−best"}


def _draw_panel(axes, dataset: DatasetResult, column: int, styles: dict[str, dict], unreachable: dict) -> None:
    curves = [(m.method, m.curves[column]) for m in dataset.methods]
    first = curves[0][1]
    decimals = common_decimals(curve.value for _, curve in curves)
    value_label = LEGEND_VALUE_NAMES.get(first.value_name, first.value_name)
    y_top = 0.0
    for method, curve in curves:
        finite = np.isfinite(curve.fnmr)
        x, y = curve.discard[finite], curve.fnmr[finite]
        if len(x) == 0:
            continue
        y_top = max(y_top, float(y.max()))
        label = f"{method}: {value_label} {format_number(curve.value, decimals)}"
        if first.protocol == "B":  # many steps: markers spaced along the line, not on every point
            axes.plot(x, y, drawstyle="steps-post", markevery=0.1, label=label, **styles[method])
        else:
            axes.plot(x, y, label=label, **styles[method])
    limit = first.discard_limit
    axes.axvline(limit, color="0.45", linewidth=0.8, linestyle=(0, (2, 2)), zorder=1)
    # above the frame, where no curve or legend can hide it
    axes.annotate(f"pAUC limit {limit:g}", xy=(limit, 1), xycoords=("data", "axes fraction"),
                  xytext=(0, 1.5), textcoords="offset points", ha="center", va="bottom", fontsize=6.5, color="0.35")
    axes.set_xlim(0, 1 if first.protocol == "B" else first.discard[-1])
    axes.set_ylim(0, min(1.05, y_top * 1.08) if y_top > 0 else 1.0)  # FNMR <= 1; room for markers at 1
    axes.set_xlabel("fraction of pairs discarded" if first.protocol == "A" else "fraction of genuine pairs discarded")
    axes.set_ylabel("FNMR")
    title = f"{dataset.name}, FMR={fmr_label(first.fmr_target)}"
    if first.fmr_target in unreachable:
        title += f"\n({unreachable[first.fmr_target].short()})"
    axes.set_title(title, pad=11)
    axes.grid(True, color="0.9", linewidth=0.6)
    axes.set_axisbelow(True)
    if axes.get_legend_handles_labels()[0]:  # every curve NaN (no impostor pair, say): no legend to draw
        axes.legend(loc="best", frameon=True, framealpha=0.85, handlelength=3.2)


def plot_edc(datasets: list[DatasetResult], path: str | Path | None = None, *, recognition: str | None = None):
    """The figure (a matplotlib Figure); written atomically in the format of the path's
    suffix when a path is given. ``recognition`` names what made the comparison scores
    (an embedder, an embeddings file), shown above the panels."""
    if not datasets or not datasets[0].methods:
        raise ValueError("nothing to plot")
    file_format = plot_format(path) if path is not None else None
    import matplotlib
    from matplotlib.figure import Figure

    methods = method_names(datasets)
    styles = {m: {"color": COLOURS[i % len(COLOURS)], "linestyle": LINE_STYLES[i % len(LINE_STYLES)],
                  "marker": MARKERS[i % len(MARKERS)], "markersize": 3.5, "linewidth": 1.4,
                  "markerfacecolor": "none" if i % 2 else COLOURS[i % len(COLOURS)]}
              for i, m in enumerate(methods)}
    columns = len(datasets[0].fmr_targets)
    with matplotlib.rc_context(STYLE):
        figure = Figure(figsize=(PANEL_INCHES[0] * columns, PANEL_INCHES[1] * len(datasets)), layout="constrained")
        grid = figure.subplots(len(datasets), columns, squeeze=False)
        for row, dataset in enumerate(datasets):
            unreachable = {u.target: u for u in unreachable_fmrs(dataset)}
            for column in range(columns):
                _draw_panel(grid[row][column], dataset, column, styles, unreachable)
        first = datasets[0].methods[0].curves[0]
        heading = f"EDC, protocol {first.protocol}"
        if recognition:
            heading += f"; comparison scores: {recognition}"
        figure.suptitle(heading, fontsize=9)
        if file_format is not None:
            buffer = io.BytesIO()
            figure.savefig(buffer, format=file_format, dpi=PNG_DPI, metadata=METADATA[file_format])
            write_atomic(path, buffer.getvalue())
    return figure

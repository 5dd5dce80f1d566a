"""EDC plots as PNG, drawn with Pillow (no plotting library needed): one panel per dataset
and FMR target, one line per quality method; protocol A curves are polylines through the
discard levels, protocol B curves are steps (left-constant, as their area is computed).
A dashed line marks the discard limit of the pAUC."""
from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from synfiqa.stages.s8_evaluate.dataset import DatasetResult
from synfiqa.stages.s8_evaluate.report import fmr_label, method_names
from synfiqa.store import write_atomic

PANEL_SIZE = (440, 330)
MARGIN = dict(left=62, right=16, top=34, bottom=48)
PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
           "#7f7f7f", "#bcbd22"]


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _nice_top(value: float) -> float:
    """A round y-axis top at or above the value."""
    if not math.isfinite(value) or value <= 0:
        return 1.0
    magnitude = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if step * magnitude >= value:
            return step * magnitude
    return 10 * magnitude


def _curve_points(x: np.ndarray, y: np.ndarray, steps: bool) -> tuple[np.ndarray, np.ndarray]:
    finite = np.isfinite(y)
    x, y = x[finite], y[finite]
    if steps and len(x) > 1:
        # left-constant: hold y[i] until x[i+1], then jump
        xs = np.repeat(x, 2)[1:]
        ys = np.repeat(y, 2)[:-1]
        return xs, ys
    return x, y


def _draw_panel(draw: ImageDraw.ImageDraw, origin: tuple[int, int], dataset: DatasetResult, column: int,
                colours: dict[str, str], fonts) -> None:
    small, normal = fonts
    ox, oy = origin
    width, height = PANEL_SIZE
    left, top = ox + MARGIN["left"], oy + MARGIN["top"]
    right, bottom = ox + width - MARGIN["right"], oy + height - MARGIN["bottom"]
    curves = [(m.method, m.curves[column]) for m in dataset.methods]
    protocol = curves[0][1].protocol
    limit = curves[0][1].discard_limit
    x_top = 1.0
    y_values = np.concatenate([c.fnmr[np.isfinite(c.fnmr)] for _, c in curves] or [np.zeros(0)])
    y_top = min(1.0, _nice_top(float(y_values.max()) * 1.05 if len(y_values) else 1.0))  # FNMR <= 1

    def to_pixel(x, y):
        return left + (right - left) * (np.asarray(x) / x_top), bottom - (bottom - top) * (np.asarray(y) / y_top)

    for tick in np.linspace(0, 1, 6):  # grid and tick labels
        px, _ = to_pixel(tick * x_top, 0)
        draw.line([(px, top), (px, bottom)], fill="#e6e6e6")
        label = f"{tick * x_top:.1f}"
        draw.text((px - draw.textlength(label, font=small) / 2, bottom + 4), label, fill="black", font=small)
        _, py = to_pixel(0, tick * y_top)
        draw.line([(left, py), (right, py)], fill="#e6e6e6")
        label = f"{tick * y_top:.3g}"
        draw.text((left - 6 - draw.textlength(label, font=small), py - 7), label, fill="black", font=small)
    limit_x, _ = to_pixel(limit, 0)
    for y0 in range(int(top), int(bottom), 8):  # dashed line at the pAUC's discard limit
        draw.line([(limit_x, y0), (limit_x, min(y0 + 4, bottom))], fill="#999999")
    draw.rectangle([left, top, right, bottom], outline="black")
    for method, curve in curves:
        xs, ys = _curve_points(curve.discard, curve.fnmr, steps=protocol == "B")
        if len(xs) == 0:
            continue
        px, py = to_pixel(xs, np.minimum(ys, y_top))
        points = list(zip(px.tolist(), py.tolist()))
        if len(points) > 1:
            draw.line(points, fill=colours[method], width=2)
        if protocol == "A":
            for x, y in points:
                draw.ellipse([x - 2.5, y - 2.5, x + 2.5, y + 2.5], fill=colours[method])
    title = f"{dataset.name}, FMR={fmr_label(curves[0][1].fmr_target)}"
    draw.text((ox + (width - draw.textlength(title, font=normal)) / 2, oy + 8), title, fill="black", font=normal)
    xlabel = "fraction of pairs discarded" if protocol == "A" else "fraction of genuine pairs discarded"
    draw.text((left + (right - left - draw.textlength(xlabel, font=small)) / 2, bottom + 22), xlabel,
              fill="black", font=small)
    draw.text((ox + 6, top - 20), "FNMR", fill="black", font=small)


def plot_edc(datasets: list[DatasetResult], path: str | Path | None = None) -> Image.Image:
    """The figure as a PIL image; written atomically as PNG when a path is given."""
    if not datasets or not datasets[0].methods:
        raise ValueError("nothing to plot")
    columns = len(datasets[0].fmr_targets)
    methods = method_names(datasets)
    colours = {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(methods)}
    fonts = (_font(12), _font(14))
    legend_height = 28 + 18 * ((len(methods) + 2) // 3)
    width, height = PANEL_SIZE[0] * columns, PANEL_SIZE[1] * len(datasets) + legend_height
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    for row, dataset in enumerate(datasets):
        for column in range(columns):
            _draw_panel(draw, (column * PANEL_SIZE[0], row * PANEL_SIZE[1]), dataset, column, colours, fonts)
    top = PANEL_SIZE[1] * len(datasets) + 8
    for i, method in enumerate(methods):
        x = 20 + (i % 3) * (width - 40) / 3
        y = top + 18 * (i // 3)
        draw.line([(x, y + 8), (x + 24, y + 8)], fill=colours[method], width=3)
        draw.text((x + 30, y + 1), method, fill="black", font=fonts[0])
    if path is not None:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        write_atomic(path, buffer.getvalue())
    return image

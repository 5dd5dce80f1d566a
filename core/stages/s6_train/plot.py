"""The loss plot of a training run (DIR/loss.png), drawn with Pillow: one panel per loss
part (total, identity, quality), the step on the x axis, the learning-rate decays marked."""
from __future__ import annotations

import io
import math

from PIL import Image, ImageDraw, ImageFont

COLOURS = {"loss": (31, 119, 180), "loss_identity": (214, 39, 40), "loss_quality": (44, 160, 44)}
TITLES = {"loss": "total loss", "loss_identity": "identity (ArcFace CE)", "loss_quality": "quality (SmoothL1 x weight)"}


def _nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    if not math.isfinite(low) or not math.isfinite(high):
        return []
    if high <= low:
        high = low + 1.0
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = min((m * magnitude for m in (1, 2, 5, 10)), key=lambda s: abs(s - raw))
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step) + 1)]


def _label(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000 or abs(value) < 0.01:
        return f"{value:.1e}"
    return f"{value:.3g}"


def loss_plot(rows: list[dict], title: str = "", decays: list[int] = (), width: int = 900,
              panel_height: int = 220) -> bytes:
    """PNG bytes of the metrics rows ({"step", "loss", "loss_identity", "loss_quality"})."""
    keys = [k for k in COLOURS if any(k in r for r in rows)]
    margin_left, margin_right, top, gap = 80, 20, 40, 45
    height = top + len(keys) * (panel_height + gap) + 10
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    draw.text((margin_left, 10), title or "training loss", fill="black", font=font)
    steps = [r["step"] for r in rows]
    low_step, high_step = (min(steps), max(steps)) if steps else (0, 1)
    if high_step == low_step:
        high_step = low_step + 1
    for n, key in enumerate(keys):
        y0 = top + n * (panel_height + gap) + 15
        y1 = y0 + panel_height - 30
        x0, x1 = margin_left, width - margin_right
        points = [(r["step"], r[key]) for r in rows if key in r and r[key] is not None and math.isfinite(r[key])]
        values = [v for _, v in points]
        low, high = (min(values), max(values)) if values else (0.0, 1.0)
        if high - low < 1e-12:
            low, high = low - 0.5, high + 0.5
        pad = 0.05 * (high - low)
        low, high = low - pad, high + pad
        draw.text((x0, y0 - 14), TITLES[key], fill=COLOURS[key], font=font)
        draw.rectangle([x0, y0, x1, y1], outline=(120, 120, 120))

        def to_xy(step, value):
            return (x0 + (step - low_step) / (high_step - low_step) * (x1 - x0),
                    y1 - (value - low) / (high - low) * (y1 - y0))

        for tick in _nice_ticks(low, high):
            _, y = to_xy(low_step, tick)
            draw.line([x0 - 4, y, x0, y], fill="black")
            draw.line([x0 + 1, y, x1 - 1, y], fill=(235, 235, 235))
            draw.text((5, y - 6), _label(tick), fill="black", font=font)
        for tick in _nice_ticks(low_step, high_step, 8):
            x, _ = to_xy(tick, low)
            if x0 <= x <= x1:
                draw.line([x, y1, x, y1 + 4], fill="black")
                draw.text((x - 10, y1 + 6), str(int(tick)), fill="black", font=font)
        for decay in decays:
            if low_step < decay < high_step:
                x, _ = to_xy(decay, low)
                draw.line([x, y0, x, y1], fill=(200, 160, 60))
        if len(points) > 1:
            draw.line([to_xy(s, v) for s, v in points], fill=COLOURS[key], width=2)
        elif points:
            x, y = to_xy(*points[0])
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=COLOURS[key])
        draw.text((x1 - 40, y1 + 6 + 12), "step", fill="black", font=font)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()

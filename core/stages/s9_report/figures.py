"""The report's figures, as SVG files: the histograms of the score and of each domain, and the
EDC plot of an evaluation (drawn by s8's plot_edc from `synfiqa evaluate --json --curves`).
matplotlib is imported here only, when a report is written."""
from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np

from synfiqa.errors import DataFileError
from synfiqa.store import write_atomic

DOMAINS = ("fr", "sd", "vl")
BINS = 20
SVG_METADATA = {"Date": None}     # no creation date: one build always gives the same figure bytes
STYLE = {"svg.fonttype": "none", "svg.hashsalt": "synfiqa-report", "font.size": 8, "axes.titlesize": 8.5}


def histograms(label_name: str, labels: list[float], domains: dict[str, list[float]],
               missing: dict[str, str], path: Path) -> None:
    """One panel for the label (the quality score written to Quality-Scores.txt) and one per
    domain; a domain the build could not compute says why instead of showing bars."""
    import matplotlib
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    panels = [(f"{label_name} (the label)", labels, None)]
    panels += [(domain, domains.get(domain, []), missing.get(domain)) for domain in DOMAINS]
    with matplotlib.rc_context(STYLE):
        figure = Figure(figsize=(2.6 * len(panels), 2.2), layout="constrained")
        for axes, (title, values, why) in zip(figure.subplots(1, len(panels), squeeze=False)[0], panels):
            values = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
            axes.set_title(title)
            if len(values) == 0:
                axes.text(0.5, 0.5, "not computed" + (f":\n{_wrap(why)}" if why else ""), ha="center", va="center",
                          transform=axes.transAxes, fontsize=7, color="0.35", wrap=True)
                axes.set_xticks([])
                axes.set_yticks([])
                continue
            axes.hist(values, bins=BINS, range=_bin_range(values), color="#0072B2", edgecolor="white", linewidth=0.5)
            axes.yaxis.set_major_locator(MaxNLocator(integer=True))   # counts of samples
            axes.set_xlabel(f"n={len(values)}, mean {values.mean():.3f}")
            axes.set_ylabel("samples")
            axes.grid(True, axis="y", color="0.9", linewidth=0.6)
            axes.set_axisbelow(True)
        _save(figure, path)


def _bin_range(values: np.ndarray) -> tuple[float, float]:
    """The histogram's range: the values' own, widened around a (nearly) single value, whose
    span numpy cannot cut into BINS distinct edges (a build whose labels are all equal)."""
    low, high = float(values.min()), float(values.max())
    half = 1e-3 * max(1.0, abs(high))
    if high - low < 2 * half:
        middle = (low + high) / 2
        return middle - half, middle + half
    return low, high


def _wrap(text: str, width: int = 34) -> str:
    words, lines, line = text.split(), [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return "\n".join(lines + [line][:1 if line else 0])


def _save(figure, path: Path) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="svg", metadata=SVG_METADATA)
    write_atomic(path, buffer.getvalue())


def evaluation_results(path: str | Path):
    """`synfiqa evaluate --json --curves` output -> s8's DatasetResult list, to draw with the
    same plot_edc as `synfiqa evaluate --plot`. A file without curves is a one-line error."""
    from synfiqa.stages.s8_evaluate.dataset import DatasetResult, MethodResult
    from synfiqa.stages.s8_evaluate.edc import CurveResult

    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        datasets = document["datasets"]
    except (OSError, ValueError, KeyError, TypeError):
        raise DataFileError(f"--evaluation {path}: not the JSON `synfiqa evaluate --json --curves` writes") from None
    number = lambda value: math.nan if value is None else float(value)   # noqa: E731  (null is NaN in to_json)
    results = []
    for dataset in datasets:
        methods = []
        for method in dataset["methods"]:
            curves = []
            for item in method["results"]:
                if "curve" not in item:
                    raise DataFileError(f"--evaluation {path}: it holds no curves; write it with "
                                        "`synfiqa evaluate ... --json --curves`")
                curve = item["curve"]
                thresholds = curve.get("threshold", [item.get("threshold")])
                achieved = curve.get("achieved_fmr", [item.get("achieved_fmr")])
                curves.append(CurveResult(
                    protocol=document["protocol"], fmr_target=float(item["fmr_target"]),
                    discard_limit=float(document["discard_limit"]),
                    discard=np.array([number(x) for x in curve["discard"]]),
                    fnmr=np.array([number(y) for y in curve["fnmr"]]),
                    threshold=np.array([number(t) for t in thresholds]),
                    achieved_fmr=np.array([number(a) for a in achieved]),
                    fnmr0=number(item["fnmr0"]), area=number(item["area"]), auc=number(item["auc"]),
                    pauc=number(item["pauc"]), best=number(item["best"]), value=number(item["value"]),
                    value_name=document["value"]))
            methods.append(MethodResult(method["name"], curves))
        results.append(DatasetResult(dataset["name"], document["protocol"], int(dataset["pairs"]),
                                     int(dataset["genuine"]), int(dataset["impostor"]), methods,
                                     conventions=dict(document.get("conventions", {}))))
    if not results or not results[0].methods:
        raise DataFileError(f"--evaluation {path}: it holds no dataset with a quality method")
    return results


def edc_figure(evaluation: str | Path, path: Path) -> list:
    """The EDC plot of an evaluation file into `path` (SVG); returns the DatasetResults."""
    from synfiqa.stages.s8_evaluate.plot import plot_edc

    results = evaluation_results(evaluation)
    plot_edc(results, path)
    return results

"""Tables of evaluation results in the layout of the MR-FIQA leaderboard (one row per
quality method, one column per FMR target; a table per dataset, then the mean over
datasets) as markdown, CSV and JSON."""
from __future__ import annotations

import csv
import io
import math

import numpy as np

from synfiqa.stages.s8_evaluate.dataset import DatasetResult


def fmr_label(target: float) -> str:
    """1e-2 -> "1E-2", as the leaderboard writes it."""
    mantissa, exponent = f"{target:.0e}".split("e")
    return f"{mantissa}E{int(exponent)}" if mantissa != "1" else f"1E{int(exponent)}"


def _number(value: float, digits: int = 3) -> str:
    return "NaN" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def method_names(datasets: list[DatasetResult]) -> list[str]:
    return list(dict.fromkeys(m.method for d in datasets for m in d.methods))


def mean_table(datasets: list[DatasetResult]) -> dict[str, list[float]]:
    """Per method, the mean over datasets of each FMR column's value. A method missing from a
    dataset, or a NaN there, makes its mean NaN: an average over fewer benchmarks is a
    different number."""
    targets = datasets[0].fmr_targets
    table = {}
    for method in method_names(datasets):
        columns = []
        for column in range(len(targets)):
            values = []
            for dataset in datasets:
                found = next((m for m in dataset.methods if m.method == method), None)
                values.append(found.curves[column].value if found else math.nan)
            columns.append(float(np.mean(values)))
        table[method] = columns
    return table


def _markdown_table(rows: dict[str, list[float]], targets: list[float], digits: int) -> list[str]:
    header = "| Models | " + " | ".join(f"FMR={fmr_label(t)}" for t in targets) + " |"
    rule = "| :---: | " + " | ".join(":---:" for _ in targets) + " |"
    body = [f"| {method} | " + " | ".join(_number(v, digits) for v in values) + " |" for method, values in rows.items()]
    return [header, rule, *body]


DEFAULT_CONVENTIONS = {"tie_rule": "erc", "quality_sort": "stable", "threshold_rule": "iso"}


def conventions_note(datasets: list[DatasetResult]) -> str:
    """The switches that differ from the defaults, e.g. "; tie rule inclusive"."""
    changed = {k: v for k, v in datasets[0].conventions.items() if DEFAULT_CONVENTIONS.get(k) != v}
    return "".join(f"; {key.replace('_', ' ')} {value}" for key, value in changed.items())


def value_description(datasets: list[DatasetResult]) -> str:
    first = datasets[0].methods[0].curves[0]
    limit = f"{first.discard_limit:g}"
    if first.protocol == "A":
        return (f"protocol A, normalised pAUC at {limit} discard (lower is better; 1 = no gain)"
                f"{conventions_note(datasets)}")
    return (f"protocol B (ISO/IEC 29794-1), {first.value_name} up to {limit} discard (lower is better)"
            f"{conventions_note(datasets)}")


def to_markdown(datasets: list[DatasetResult], digits: int = 3) -> str:
    targets = datasets[0].fmr_targets
    lines = [f"Values: {value_description(datasets)}.", ""]
    for dataset in datasets:
        lines.append(f"### {dataset.name} ({dataset.genuine} genuine, {dataset.impostor} impostor pairs)")
        lines.append("")
        rows = {m.method: [c.value for c in m.curves] for m in dataset.methods}
        lines += _markdown_table(rows, targets, digits)
        lines.append("")
    if len(datasets) > 1:
        lines.append(f"### Mean over {len(datasets)} datasets ({', '.join(d.name for d in datasets)})")
        lines.append("")
        lines += _markdown_table(mean_table(datasets), targets, digits)
        lines.append("")
    return "\n".join(lines)


CSV_COLUMNS = ("dataset", "method", "protocol", "fmr_target", "value", "value_name", "fnmr0", "area",
               "auc", "pauc", "best", "discard_limit", "threshold", "achieved_fmr", "genuine", "impostor")


def to_csv(datasets: list[DatasetResult]) -> str:
    """One row per (dataset, method, FMR target) with every number; then the mean rows
    (dataset "mean") when there are several datasets."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for dataset in datasets:
        for method in dataset.methods:
            for curve in method.curves:
                # threshold and FMR at zero discard (protocol B has only that one)
                writer.writerow([dataset.name, method.method, curve.protocol, f"{curve.fmr_target:g}",
                                 _csv_number(curve.value), curve.value_name,
                                 *(_csv_number(v) for v in (curve.fnmr0, curve.area, curve.auc, curve.pauc,
                                                            curve.best)),
                                 f"{curve.discard_limit:g}", _csv_number(curve.threshold[0]),
                                 _csv_number(curve.achieved_fmr[0]), dataset.genuine, dataset.impostor])
    if len(datasets) > 1:
        first = datasets[0].methods[0].curves
        for method, values in mean_table(datasets).items():
            for curve, value in zip(first, values):
                writer.writerow(["mean", method, curve.protocol, f"{curve.fmr_target:g}", _csv_number(value),
                                 curve.value_name, *[""] * 10])
    return buffer.getvalue()


def _csv_number(value) -> str:
    value = float(value)
    return "" if math.isnan(value) else repr(value)


def _json_number(value):
    value = float(value)
    return None if math.isnan(value) or math.isinf(value) else value


def to_json(datasets: list[DatasetResult], curves: bool = False) -> dict:
    """NaN and infinities become null. Curves (discard fractions and FNMR per point, and for
    protocol A the threshold per level) only when asked: protocol B curves have one point per
    distinct genuine-pair quality."""
    first = datasets[0].methods[0].curves[0]
    payload = {
        "protocol": first.protocol,
        "fmr_targets": datasets[0].fmr_targets,
        "discard_limit": first.discard_limit,
        "value": first.value_name,
        "conventions": dict(datasets[0].conventions),
        "datasets": [],
        "warnings": [note for d in datasets for note in d.warnings],
    }
    for dataset in datasets:
        entry = {"name": dataset.name, "pairs": dataset.pairs, "genuine": dataset.genuine,
                 "impostor": dataset.impostor, "methods": []}
        for method in dataset.methods:
            results = []
            for curve in method.curves:
                item = {"fmr_target": curve.fmr_target, "value": _json_number(curve.value),
                        "fnmr0": _json_number(curve.fnmr0), "area": _json_number(curve.area),
                        "auc": _json_number(curve.auc), "pauc": _json_number(curve.pauc),
                        "best": _json_number(curve.best), "threshold": _json_number(curve.threshold[0]),
                        "achieved_fmr": _json_number(curve.achieved_fmr[0])}
                if curves:
                    item["curve"] = {"discard": [_json_number(x) for x in curve.discard],
                                     "fnmr": [_json_number(y) for y in curve.fnmr]}
                    if curve.protocol == "A":
                        item["curve"]["threshold"] = [_json_number(t) for t in curve.threshold]
                        item["curve"]["achieved_fmr"] = [_json_number(t) for t in curve.achieved_fmr]
                results.append(item)
            entry["methods"].append({"name": method.method, "results": results})
        payload["datasets"].append(entry)
    if len(datasets) > 1:
        payload["mean"] = {method: {f"{t:g}": _json_number(v) for t, v in zip(datasets[0].fmr_targets, values)}
                           for method, values in mean_table(datasets).items()}
    return payload

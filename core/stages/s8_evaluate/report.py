"""Tables of evaluation results in the layout of the MR-FIQA leaderboard (one row per
quality method, one column per FMR target; a table per dataset, then the mean over
datasets) as markdown, CSV and JSON."""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass

import numpy as np

from synfiqa.stages.s8_evaluate.dataset import DatasetResult
from synfiqa.stages.s8_evaluate.edc import allowed_false_matches

SIGNIFICANT_DIGITS = 3  # of the smallest non-zero number of a table: 0.00029 and 0.00145 stay apart
LEADERBOARD_DECIMALS = 3  # the MR-FIQA leaderboard's, kept when they already show enough
MAX_DECIMALS = 8  # a rounding residue (1e-17) must not stretch a whole table


def fmr_label(target: float) -> str:
    """1e-2 -> "1E-2", as the leaderboard writes it."""
    mantissa, exponent = f"{target:.0e}".split("e")
    return f"{mantissa}E{int(exponent)}" if mantissa != "1" else f"1E{int(exponent)}"


def common_decimals(values) -> int:
    """The decimals that print every non-zero value of a table with at least
    SIGNIFICANT_DIGITS significant digits (never fewer than the leaderboard's 3), one count
    for the whole table so that its numbers line up and compare at a glance."""
    magnitudes = [abs(float(v)) for v in values if v is not None and math.isfinite(v) and v != 0]
    if not magnitudes:
        return LEADERBOARD_DECIMALS
    needed = SIGNIFICANT_DIGITS - 1 - math.floor(math.log10(min(magnitudes)))
    return max(LEADERBOARD_DECIMALS, min(MAX_DECIMALS, needed))


def format_number(value: float | None, decimals: int) -> str:
    return "NaN" if value is None or math.isnan(value) else f"{value:.{decimals}f}"


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


def _markdown_table(rows: dict[str, list[float]], targets: list[float]) -> list[str]:
    decimals = common_decimals(v for values in rows.values() for v in values)
    header = "| Models | " + " | ".join(f"FMR={fmr_label(t)}" for t in targets) + " |"
    rule = "| :---: | " + " | ".join(":---:" for _ in targets) + " |"
    body = [f"| {method} | " + " | ".join(format_number(v, decimals) for v in values) + " |"
            for method, values in rows.items()]
    return [header, rule, *body]


@dataclass(frozen=True)
class UnreachableFmr:
    """An FMR target finer than one false match among the dataset's impostor pairs: no
    threshold can give it, so the curve is computed at another FMR (ISO/IEC 29794-1 and
    erc.py both fall back without a word; this names the FMR they used)."""

    dataset: str
    target: float
    impostors: int
    used: float                              # the threshold's FMR without discarding
    used_over_levels: tuple[float, float] | None  # protocol A: lowest, highest up to the discard limit

    def message(self) -> str:
        used = f"FMR used: {self.used:.3g}"
        if self.used_over_levels and self.used_over_levels != (self.used, self.used):
            low, high = self.used_over_levels
            used += f" without discarding, {low:.3g} to {high:.3g} over the discard levels up to the pAUC limit"
        return (f"{self.dataset}: FMR={fmr_label(self.target)} cannot be reached with {self.impostors} impostor "
                f"pairs (one false match is already FMR {1 / self.impostors:.3g}); {used}")

    def short(self) -> str:
        """For a plot's panel title."""
        return f"not reachable: FMR used {self.used:.3g}"


def unreachable_fmrs(dataset: DatasetResult) -> list[UnreachableFmr]:
    """The dataset's FMR targets that allow no false match among its impostor pairs
    (floor(FMR x impostors) = 0, the count protocol B's threshold allows), with the FMR
    actually used. Every method shares the impostor pairs, hence one entry per target."""
    found = []
    if not dataset.methods or dataset.impostor == 0:  # no threshold at all: the NaN warnings say so
        return found
    for column, target in enumerate(dataset.fmr_targets):
        if allowed_false_matches(target, dataset.impostor) > 0:
            continue
        curves = [method.curves[column] for method in dataset.methods]
        used = float(curves[0].achieved_fmr[0])
        if not math.isfinite(used):  # no genuine pair: nothing was computed, the NaN warnings say so
            continue
        over_levels = None
        if curves[0].protocol == "A":
            levels = np.concatenate([c.achieved_fmr[c.discard <= c.discard_limit] for c in curves])
            levels = levels[np.isfinite(levels)]
            if len(levels):
                over_levels = (float(levels.min()), float(levels.max()))
        found.append(UnreachableFmr(dataset.name, target, dataset.impostor, used, over_levels))
    return found


def warnings_of(datasets: list[DatasetResult]) -> list[str]:
    """Every warning of the evaluation: the numbers that could not be computed and the FMR
    targets the data cannot reach."""
    return [note for d in datasets for note in [*d.warnings, *(u.message() for u in unreachable_fmrs(d))]]


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


def to_markdown(datasets: list[DatasetResult]) -> str:
    """Numbers with a common count of decimals per table, enough for three significant
    digits of its smallest value (the CSV and JSON keep full precision). An FMR target the
    data cannot reach is named under its dataset's table."""
    targets = datasets[0].fmr_targets
    lines = [f"Values: {value_description(datasets)}.", ""]
    for dataset in datasets:
        lines.append(f"### {dataset.name} ({dataset.genuine} genuine, {dataset.impostor} impostor pairs)")
        lines.append("")
        rows = {m.method: [c.value for c in m.curves] for m in dataset.methods}
        lines += _markdown_table(rows, targets)
        lines.append("")
        notes = [f"- warning: {unreachable.message()}" for unreachable in unreachable_fmrs(dataset)]
        lines += [*notes, ""] if notes else []
    if len(datasets) > 1:
        lines.append(f"### Mean over {len(datasets)} datasets ({', '.join(d.name for d in datasets)})")
        lines.append("")
        lines += _markdown_table(mean_table(datasets), targets)
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
        "warnings": warnings_of(datasets),
    }
    for dataset in datasets:
        entry = {"name": dataset.name, "pairs": dataset.pairs, "genuine": dataset.genuine,
                 "impostor": dataset.impostor, "methods": []}
        unreachable = {u.target for u in unreachable_fmrs(dataset)}
        for method in dataset.methods:
            results = []
            for curve in method.curves:
                item = {"fmr_target": curve.fmr_target, "fmr_reachable": curve.fmr_target not in unreachable,
                        "value": _json_number(curve.value),
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

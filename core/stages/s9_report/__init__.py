"""s9: `synfiqa report`, a static HTML report of a finished build: one self-contained folder
(index.html, the images it shows, its figures) that opens from disk, with no server and no
network. It shows what a person needs to judge a build: per identity its references and its
samples sorted by score; the histograms of the label and of each domain; whether each
identity's labels fall as the recorded severity rises (those that do not are flagged at the
top); references that are themselves of low quality; the filter decisions with the photos
they judged; the EDC plot of an evaluation. The rules: docs/report.md.

    OUT/index.html            the page
    OUT/images/<identity>/    copies of the build's references and samples (112x112 JPEGs)
    OUT/filter/<identity>.jpg the photo each filter decision judged, downscaled
    OUT/figures/*.svg         histograms, EDC
    OUT/.synfiqa/report.json  the marker: a rerun replaces the report; any other folder is refused
"""
from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from synfiqa import layout
from synfiqa.stages.s9_report.analysis import Findings, analyse
from synfiqa.stages.s9_report.data import BuildView, read_view
from synfiqa.store import StageFolder, write_text_atomic

REPORT_FOLDER = layout.REPORT    # the default --out, inside the build folder
MARKER = ".synfiqa/report.json"
OWNED = ("index.html", "images", "filter", "figures", ".synfiqa")
DEFAULT_GALLERIES = 50           # identity galleries shown (flagged first); the tables list every identity
FILTER_THUMB_SIDE = 160


@dataclass
class ReportResult:
    index: Path                  # the page
    flagged: list[str]           # identities whose labels do not follow severity
    flagged_references: int
    findings: Findings


def make_report(dataset: str | Path, out: str | Path | None = None, evaluation: str | Path | None = None, *,
                galleries: int = DEFAULT_GALLERIES, embed: bool = True) -> ReportResult:
    """Write the report of the build in `dataset` into `out` (default DATASET/report)."""
    dataset = Path(dataset)
    out = Path(out) if out is not None else dataset / REPORT_FOLDER
    view = read_view(dataset)
    findings = analyse(view, embed=embed)
    folder = StageFolder(out, marker=MARKER, what="report", owned=OWNED)
    with folder:
        # a report is always rebuilt whole; a folder holding anything else is refused
        # relative paths only: one build gives the same report bytes wherever it lies
        folder.claim({"report_of": _relative(dataset, out)}, overwrite=True)
        context = gather(view, findings, out, galleries)
        if evaluation is not None:
            from synfiqa.stages.s9_report.figures import edc_figure

            results = edc_figure(evaluation, out / "figures" / "edc.svg")
            context["edc"] = "figures/edc.svg"
            context["edc_caption"] = (f"{Path(evaluation).name}: protocol {results[0].protocol}, "
                                      f"{', '.join(r.name for r in results)}")
        from synfiqa.stages.s9_report.figures import histograms
        from synfiqa.stages.s9_report.page import render

        degraded = [s for s in view.samples if s.role == "degraded"]
        if degraded:
            histograms(view.label_name, [s.label for s in degraded],
                       {d: [s.scores.get(d) for s in degraded] for d in ("fr", "sd", "vl")},
                       view.summary.get("missing_domains") or {}, out / "figures" / "histograms.svg")
            context["histogram"] = "figures/histograms.svg"
        write_text_atomic(out / "index.html", render(context))   # last: a page never names a missing file
    return ReportResult(out / "index.html", findings.flagged, len(findings.flagged_references), findings)


def gather(view: BuildView, findings: Findings, out: Path, galleries: int) -> dict:
    """Everything the page shows, with the images it names copied into `out`."""
    degraded = [s for s in view.samples if s.role == "degraded"]
    identities = view.identities
    order = findings.flagged + [i for i in identities if i not in findings.flagged]
    shown = order[:max(0, galleries)]
    sample_cards, reference_cards = {}, {}
    for identity in shown:
        reference_cards[identity] = []
        for sample, finding in zip(view.of(identity, "reference"), findings.references.get(identity, [])):
            src = _copy(view, sample, out)
            size = f"{finding.source_size[0]}x{finding.source_size[1]}" if finding.source_size else "size unknown"
            title = [f"{sample.path}", f"source {finding.source} ({size})"]
            if math.isfinite(finding.similarity):
                title.append(f"cosine to the other references {finding.similarity:.3f}")
            title += finding.problems
            reference_cards[identity].append({"src": src, "title": "\n".join(title), "problems": finding.problems,
                                              "caption": Path(sample.path).name + (" (!)" if finding.problems else "")})
        samples = sorted(view.of(identity, "degraded"),
                         key=lambda s: (-(s.label if s.label is not None else -math.inf), s.index))
        sample_cards[identity] = [{"src": _copy(view, s, out), "score": s.label,
                                   "title": sample_title(view, findings, s)} for s in samples]
    context = {
        "root": _relative(view.root, out), "identities": len(identities),
        "references": sum(1 for s in view.samples if s.role == "reference"), "degraded": len(degraded),
        "label_name": view.label_name, "partial": _partial(view), "findings": findings,
        "filters": view.filter_decisions, "filter_thumbs": filter_thumbnails(view, out),
        "galleries": shown, "all_identities": identities,
        "sample_cards": sample_cards, "reference_cards": reference_cards,
    }
    return context


def sample_title(view: BuildView, findings: Findings, sample) -> str:
    """The hover text of a sample: its score, its domains, its severity and every recorded intensity."""
    lines = [f"{sample.key}", f"{view.label_name} {_number(sample.label)}"]
    lines += [f"{domain} {_number(value)}" for domain, value in sorted(sample.scores.items()) if domain != view.label_name]
    lines.append(f"recorded severity {_number(findings.severity.get(sample.key))}")
    lines += [f"{axis} {_number(value)}" for axis, value in sorted(sample.params.items())]
    if sample.extra.get("source"):
        lines.append(f"source {sample.extra['source']}")
    return "\n".join(lines)


def _relative(path: Path, start: Path) -> str:
    return os.path.relpath(Path(path).resolve(), Path(start).resolve()).replace(os.sep, "/")


def _number(value) -> str:
    return "n/a" if value is None or not math.isfinite(float(value)) else f"{float(value):.4g}"


def _partial(view: BuildView) -> str:
    missing = view.summary.get("missing_domains") or {}
    return f" (computed without {', '.join(sorted(missing))}: {'; '.join(missing.values())})" if missing else ""


def _copy(view: BuildView, sample, out: Path) -> str:
    """The sample's image copied into the report (the build's own bytes); its relative src."""
    relative = Path("images") / sample.identity / Path(sample.path).name
    target = out / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(view.root / sample.path, target)
    return relative.as_posix()


def filter_thumbnails(view: BuildView, out: Path) -> dict[str, str]:
    """identity -> src of the photo its filter decision judged, downscaled into the report."""
    from PIL import Image, ImageOps

    thumbs = {}
    for verdict in (view.filter_decisions or {}).get("verdicts", []):
        identity, source = verdict.get("identity"), verdict.get("source")
        path = view.sources.get(identity, {}).get(source)
        if path is None or not path.is_file():
            continue
        relative = Path("filter") / f"{identity}.jpg"
        (out / relative).parent.mkdir(parents=True, exist_ok=True)
        try:
            with Image.open(path) as image:
                image = ImageOps.exif_transpose(image).convert("RGB")
                image.thumbnail((FILTER_THUMB_SIDE, FILTER_THUMB_SIDE))
                image.save(out / relative, format="JPEG", quality=90)
        except OSError:
            continue
        thumbs[identity] = relative.as_posix()
    return thumbs


def summary_lines(result: ReportResult) -> list[str]:
    """What a build (and `synfiqa report`) prints about a report."""
    flagged = result.flagged
    lines = [f"report: {result.index}"]
    if flagged:
        lines.append(f"  {_count(len(flagged), 'identity', 'identities')} flagged: labels do not fall with the recorded severity "
                     f"({', '.join(flagged[:5])}{', ...' if len(flagged) > 5 else ''})")
    else:
        lines.append("  0 identities flagged")
    if result.flagged_references:
        lines.append(f"  {_count(result.flagged_references, 'reference', 'references')} flagged as low quality")
    return lines


def report_after_build(out: str | Path, echo) -> ReportResult | None:
    """The end of `synfiqa build`: the report into OUT/report, its path and the flagged count
    echoed. The dataset is complete by then, so a report that cannot be written, for any
    reason, is a line saying why, not a failed build."""
    try:
        result = make_report(out)
    except Exception as error:  # noqa: BLE001 - the view must never fail the finished dataset
        echo(f"report: not written ({type(error).__name__}: {error}); write it with: synfiqa report {out}")
        return None
    for line in summary_lines(result):
        echo(line)
    return result


def _count(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


def json_summary(result: ReportResult) -> dict:
    findings = result.findings
    return {"index": str(result.index), "flagged": result.flagged,
            "flagged_references": [r.path for r in findings.flagged_references],
            "agreement": {i: {"rho": a.rho if a.measured else None, "samples": a.samples,
                              "threshold": None if not a.measured else a.threshold, "flagged": a.flagged}
                          for i, a in sorted(findings.agreements.items())}}


__all__ = ["ReportResult", "make_report", "report_after_build", "summary_lines", "json_summary"]

"""`synfiqa report` without a browser: the checks (Spearman, recorded severity, the flagging
rule, low-quality references) against independent values, and the report of hand-made builds
(what is flagged, the page's content, the EDC of an evaluation, one-line errors)."""
from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from click.testing import CliRunner
from scipy.stats import rankdata, spearmanr

from report_builds import following_and_rising, write_build
from synfiqa.errors import DataFileError
from synfiqa.stages.s9_report import make_report, report_after_build
from synfiqa.stages.s9_report.checks import (average_ranks, critical_rho, leave_one_out_similarity,
                                             recorded_severity, reference_problems, severity_agreement,
                                             severity_axes, spearman)

pytestmark = pytest.mark.usefixtures("one_torch_thread")   # the reference check runs MTCNN and SFace


def run(*args):
    from synfiqa_cli.main import cli

    return CliRunner().invoke(cli, ["report", *map(str, args)])


# ---------------------------------------------------------------- the checks

@pytest.mark.parametrize("seed", range(5))
def test_spearman_and_ranks_match_scipy_with_ties(seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 6, 30).astype(float)     # many ties
    y = x * rng.choice([-1.0, 1.0]) + rng.normal(size=30)
    assert np.allclose(average_ranks(x), rankdata(x))
    assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)


def test_spearman_undefined_cases_are_nan():
    assert math.isnan(spearman([1.0], [2.0]))
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_critical_rho_matches_the_published_table():
    # one-sided alpha = 0.05 critical values of Spearman's rho (Zar, Biostatistical Analysis,
    # table B.20): n = 20: 0.380, n = 30: 0.306; the t approximation is within 0.005 there
    assert critical_rho(20) == pytest.approx(0.380, abs=0.005)
    assert critical_rho(30) == pytest.approx(0.306, abs=0.005)


def test_recorded_severity_by_hand():
    params = [{"a": 1.0, "b": 3.0}, {"a": 2.0, "b": 1.0}, {"a": 3.0, "b": 2.0}]
    # ranks / 3: a -> 1/3, 2/3, 1; b -> 1, 1/3, 2/3; mean over the axes
    assert np.allclose(recorded_severity(params, ["a", "b"]), [2 / 3, 1 / 2, 5 / 6])
    assert severity_axes(["pose.abs_yaw", "blur-downscale.low_scale", "jpeg.quality_drop"]) == [
        "blur-downscale.low_scale", "jpeg.quality_drop"]


def test_flagging_rule_scores_rising_with_severity_are_flagged_falling_are_not():
    severity = np.linspace(0.1, 1.0, 20)
    falling = severity_agreement("falls", 1 - severity, severity, {})
    rising = severity_agreement("rises", severity, severity, {})
    flat = severity_agreement("flat", np.r_[np.zeros(10), np.ones(10)][np.argsort(np.arange(20) % 2)], severity, {})
    assert falling.rho == pytest.approx(-1.0) and not falling.flagged
    assert rising.rho == pytest.approx(1.0) and rising.flagged
    assert flat.flagged   # no relation at all: the labels do not follow severity
    # the issue's numbers, in this sign: -0.06 is flagged, -0.53 (the weakest good identity) is not
    assert falling.threshold == pytest.approx(max(0.3, critical_rho(20)))
    assert -0.06 > -falling.threshold and not -0.53 > -falling.threshold


def test_too_few_samples_are_not_measured_nor_flagged():
    agreement = severity_agreement("tiny", [0.1, 0.2, 0.3], [0.3, 0.2, 0.1], {})
    assert not agreement.measured and not agreement.flagged


def test_leave_one_out_similarity_by_hand():
    e = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    unit = e / np.linalg.norm(e, axis=1, keepdims=True)
    for i in range(3):
        others = np.delete(unit, i, axis=0).mean(axis=0)
        expected = unit[i] @ others / np.linalg.norm(others)
        assert leave_one_out_similarity(e)[i] == pytest.approx(expected)
    assert np.isnan(leave_one_out_similarity(e[:1])).all()


def test_reference_problems():
    assert reference_problems((204, 244), math.nan, None)[0].startswith("small source photo (204x244")
    assert reference_problems((716, 900), 0.9, 0.3) == []
    assert "far from the other references" in reference_problems((716, 900), 0.1, 0.3)[0]


# ---------------------------------------------------------------- reports of hand-made builds

def test_report_flags_the_identity_whose_labels_rise_with_severity(tmp_path):
    root = write_build(tmp_path / "build", following_and_rising(),
                       source_sizes={"rises": (204, 244)})
    result = make_report(root, embed=False)
    assert result.flagged == ["rises"]
    assert result.index == root / "report" / "index.html"
    page = result.index.read_text()
    flagged = re.findall(r"<li class='flagged-identity' data-identity='([^']+)'", page)
    assert flagged == ["rises"]
    assert "samples made from sample.png: small source photo (204x244 px" in page
    # the strip of an identity is sorted by score, highest first, and every image lies in the report
    strip = page.split("class='strip samples' data-identity='falls'>")[1].split("</div>")[0]
    scores = [float(s) for s in re.findall(r"data-score='([^']+)'", strip)]
    assert scores == sorted(scores, reverse=True) and len(scores) == 12
    for src in re.findall(r"src='([^']+)'", page):
        assert (result.index.parent / src).is_file(), src
    assert "http" not in page.replace("http-equiv", "")      # nothing loaded from the network
    # the hover text holds the recorded intensities
    assert "blur-downscale.blur_level" in strip and "recorded severity" in strip


def test_filter_decisions_with_photos_and_values(tmp_path):
    verdicts = [{"identity": "falls", "kept": True, "source": "ref.png", "values": {"yaw": 3.2, "glasses": 0.08}},
                {"identity": "rises", "kept": False, "removed_by": "glasses", "source": "ref.png",
                 "reason": "glasses: edge measure 0.236 > 0.15", "values": {"yaw": -1.5, "glasses": 0.236}}]
    root = write_build(tmp_path / "build", following_and_rising(), filter_verdicts=verdicts)
    page = make_report(root, embed=False).index.read_text()
    rows = re.findall(r"<tr class='filter-decision[^']*' data-identity='([^']+)' data-kept='(\w+)'><td><img", page)
    assert rows == [("falls", "true"), ("rises", "false")]
    assert "removed by glasses" in page and "glasses: edge measure 0.236 &gt; 0.15" in page and ">0.236<" in page
    assert (root / "report" / "filter" / "rises.jpg").is_file()


def test_a_reference_far_from_the_others_is_flagged(tmp_path):
    """Identity 'falls' gets three references: Ardern's two photos and Obama's, aligned; the
    build's embedder (sface) puts Obama's far from the other two, below its same-identity
    threshold, and only that one is flagged."""
    import torch
    from evaluation_faces import aligned_test_faces
    from synfiqa.registry import get_registry

    faces = aligned_test_faces()
    crops = [faces["ardern_1.jpg"], faces["ardern_2.jpg"], faces["obama_1.jpg"]]
    root = write_build(tmp_path / "build", following_and_rising(), reference_images={"falls": crops})
    (root / "config.toml").write_text((root / "config.toml").read_text() + '\n[models]\nembedder = "sface"\n'
                                      'detector = "mtcnn"\npose = "dlib68-pnp"\n\n[run]\ndevice = "cpu"\n')
    result = make_report(root)
    assert [r.path for r in result.findings.flagged_references] == ["data/falls/Ref-2.jpg"]
    # the cosine the report shows, computed here by hand from the embedder's vectors
    embedder = get_registry().create("embedder", "sface")
    vectors = embedder.embed(torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous()).numpy()
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    others = (unit[0] + unit[1]) / 2
    expected = float(unit[2] @ others / np.linalg.norm(others))
    assert result.findings.references["falls"][2].similarity == pytest.approx(expected, abs=1e-6)
    assert expected < embedder.same_identity_threshold
    assert f"cosine {expected:.3f} &lt; {embedder.same_identity_threshold:.3f}" in result.index.read_text()


def test_evaluation_adds_the_edc_plot(tmp_path):
    from test_evaluation_cli import make_dataset
    from synfiqa_cli.main import cli

    make_dataset(tmp_path / "eval")
    evaluation = tmp_path / "evaluation.json"
    output = CliRunner().invoke(cli, ["evaluate", "--pairs", str(tmp_path / "eval" / "pairs.csv"), "--embeddings",
                                      str(tmp_path / "eval" / "emb.npz"), "--quality",
                                      str(tmp_path / "eval" / "quality.csv"), "--json", "--curves"])
    assert output.exit_code == 0, output.output
    evaluation.write_text(output.stdout)
    root = write_build(tmp_path / "build", following_and_rising())
    result = make_report(root, evaluation=evaluation, embed=False)
    svg = (root / "report" / "figures" / "edc.svg").read_text()
    assert "<svg" in svg and "quality: pAUC" in svg and "FMR=" in svg
    assert "figures/edc.svg" in result.index.read_text()
    without_curves = tmp_path / "no-curves.json"
    document = json.loads(output.stdout)
    for method in document["datasets"][0]["methods"]:
        for item in method["results"]:
            item.pop("curve")
    without_curves.write_text(json.dumps(document))
    with pytest.raises(DataFileError, match="--curves"):
        make_report(root, evaluation=without_curves, embed=False)


def test_command_prints_the_path_and_the_flagged_count_and_reruns(tmp_path):
    root = write_build(tmp_path / "build", following_and_rising())
    out = tmp_path / "the-report"
    for _ in range(2):   # a rerun replaces its own report
        result = run(root, "--out", out, "--no-compare-references")
        assert result.exit_code == 0, result.output
    assert f"report: {out / 'index.html'}" in result.output
    assert "1 identity flagged: labels do not fall with the recorded severity (rises)" in result.output
    as_json = run(root, "--out", out, "--no-compare-references", "--json")
    document = json.loads(as_json.stdout)
    assert document["flagged"] == ["rises"] and document["agreement"]["falls"]["rho"] == pytest.approx(-1.0)


def test_bad_input_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    result = run(tmp_path / "empty")
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert "is not a SynFIQA build" in result.output
    root = write_build(tmp_path / "build", following_and_rising())
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    result = run(root, "--out", foreign, "--no-compare-references")
    assert result.exit_code == 2 and "not empty" in result.output
    assert (foreign / "notes.txt").read_text() == "mine"


def test_one_build_gives_the_same_report_bytes_wherever_it_lies(tmp_path):
    """A build writes its report (core/stages/build.py); the build-hash test pins its bytes."""
    pages = []
    for folder in ("one/build", "two/another-name"):
        root = write_build(tmp_path / folder, following_and_rising())
        make_report(root, embed=False)
        pages.append({p.relative_to(root).as_posix(): p.read_bytes() for p in sorted((root / "report").rglob("*"))
                      if p.is_file() and p.name != "lock"})
    assert pages[0] == pages[1] and "report/figures/histograms.svg" in pages[0]


def test_after_a_build_the_report_is_written_and_summarised(tmp_path):
    root = write_build(tmp_path / "build", following_and_rising())
    lines = []
    result = report_after_build(root, lines.append)
    assert result.index.is_file() and lines[0] == f"report: {root / 'report' / 'index.html'}"
    assert lines[1].startswith("  1 identity flagged")
    (root / "report" / "notes.txt").write_text("not the report's")      # ... and a folder it cannot take
    (root / "report" / ".synfiqa" / "report.json").unlink()
    lines.clear()
    assert report_after_build(root, lines.append) is None
    assert lines[0].startswith("report: not written (") and lines[0].endswith(f"synfiqa report {root}")


@pytest.mark.parametrize("values", [[0.5] * 7, [0.25, 0.25 + 1e-15, 0.25], [1.0]])
def test_histograms_of_equal_labels_are_drawn(tmp_path, values):
    """A build whose labels are all equal (one sample, or a constant domain) still gets its
    histograms: numpy cannot cut a zero-width range into bins."""
    from synfiqa.stages.s9_report.figures import histograms

    path = tmp_path / "histograms.svg"
    histograms("mr", values, {"fr": values}, {"sd": "not in this build"}, path)
    svg = path.read_text()
    assert svg.startswith("<?xml") and "not in this build" in svg


def test_an_unexpected_report_failure_is_a_line_not_a_failed_build(tmp_path, monkeypatch):
    import synfiqa.stages.s9_report as report

    root = write_build(tmp_path / "build", following_and_rising())
    before = sorted(p.relative_to(root) for p in root.rglob("*"))

    def broken(out):
        raise ValueError("a bug in the view")

    monkeypatch.setattr(report, "make_report", broken)
    lines = []
    assert report_after_build(root, lines.append) is None
    assert lines == [f"report: not written (ValueError: a bug in the view); write it with: synfiqa report {root}"]
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before

"""EDC plots: the format follows the file's suffix (the bytes say so), the legend names each
method with its pAUC (read back from the PDF's and the SVG's text), every method keeps apart
in greyscale, the discard limit is marked, an unreachable FMR is named in its panel's title,
and a refused suffix is a one-line error before anything runs."""
from __future__ import annotations

import re
import zlib

import numpy as np
import pytest
from click.testing import CliRunner

from synfiqa.errors import ConfigError
from synfiqa.stages.s8_evaluate import DatasetResult, MethodResult, protocol_a, protocol_b
from synfiqa.stages.s8_evaluate.plot import plot_edc

MAGIC = {".png": b"\x89PNG\r\n\x1a\n", ".pdf": b"%PDF-"}


def toy_dataset(protocol="A", impostors=300, genuines=100, seed=0, discard_limit=0.3) -> DatasetResult:
    """Two quality methods on simulated pairs: one follows the genuine scores, one is noise."""
    rng = np.random.default_rng(seed)
    genuine = np.r_[np.ones(genuines, bool), np.zeros(impostors, bool)]
    latent = rng.random(len(genuine))
    scores = np.where(genuine, 0.2 + 0.6 * latent + rng.normal(0, 0.1, len(genuine)), rng.normal(0, 0.1, len(genuine)))
    qualities = {"good": latent + rng.normal(0, 0.05, len(genuine)), "random": rng.random(len(genuine))}
    edc = protocol_a if protocol == "A" else protocol_b
    methods = [MethodResult(name, edc(scores, genuine, quality, (1e-2, 1e-3), discard_limit))
               for name, quality in qualities.items()]
    return DatasetResult("toy", protocol, len(genuine), genuines, impostors, methods)


def pdf_text(data: bytes) -> str:
    """The strings a PDF shows (its Tj/TJ operators), read from the zlib streams; two-byte
    (TrueType) glyph codes reduced to their low byte. Enough for matplotlib's own PDFs."""
    shown = []
    for stream in re.findall(rb"stream\r?\n(.*?)\r?\nendstream", data, re.S):
        try:
            content = zlib.decompress(stream)
        except zlib.error:
            continue
        for array in re.findall(rb"\[(.*?)\]\s*TJ", content, re.S) + re.findall(rb"(\(.*?\))\s*Tj", content, re.S):
            parts = re.findall(rb"\(((?:\\.|[^\\)])*)\)", array, re.S)
            text = b"".join(re.sub(rb"\\(.)", rb"\1", part) for part in parts).replace(b"\x00", b"")
            shown.append(text.decode("latin-1"))
    return "\n".join(shown)


@pytest.mark.parametrize("suffix", [".png", ".pdf", ".svg"])
def test_the_suffix_chooses_the_format(tmp_path, suffix):
    path = tmp_path / f"edc{suffix}"
    plot_edc([toy_dataset()], path)
    data = path.read_bytes()
    if suffix == ".svg":
        assert data.startswith(b"<?xml") and b"<svg" in data[:2000]
    else:
        assert data.startswith(MAGIC[suffix])
    again = tmp_path / f"again{suffix}"
    plot_edc([toy_dataset()], again)
    assert again.read_bytes() == data  # no creation date: the same evaluation, the same bytes


def test_the_legend_names_each_method_and_its_pauc_in_pdf_and_svg(tmp_path):
    dataset = toy_dataset()
    plot_edc([dataset], tmp_path / "edc.pdf")
    plot_edc([dataset], tmp_path / "edc.svg")
    svg = (tmp_path / "edc.svg").read_text()
    pdf = pdf_text((tmp_path / "edc.pdf").read_bytes())
    for method in dataset.methods:
        for curve in method.curves:
            # the normalised pAUC lies near 1 here, so the leaderboard's three decimals are enough
            assert 0.1 < curve.value < 10
            legend = f"{method.method}: pAUC {curve.value:.3f}"
            assert legend in svg and legend in pdf
    for text in ("FNMR", "fraction of pairs discarded", "toy, FMR=1E-2", "pAUC limit 0.3"):
        assert text in svg and text in pdf


def test_methods_differ_in_line_style_and_marker_not_only_in_colour():
    datasets = [toy_dataset(seed=1)]
    for extra in range(6):  # eight methods in all
        datasets[0].methods.append(MethodResult(f"m{extra}", datasets[0].methods[0].curves))
    figure = plot_edc(datasets)
    for axes in figure.axes:
        lines = [line for line in axes.get_lines() if not line.get_label().startswith("_")]
        assert len(lines) == 8
        # in greyscale the markers (shape, filled or hollow) tell all eight apart ...
        assert len({(line.get_marker(), line.get_markerfacecolor() == "none") for line in lines}) == 8
        # ... and the first four differ in their named line style as well
        assert [line.get_linestyle() for line in lines[:4]] == ["-", "--", "-.", ":"]


def test_the_discard_limit_is_marked_and_the_axes_labelled():
    figure = plot_edc([toy_dataset("B", discard_limit=0.45)])
    assert len(figure.axes) == 2
    for axes in figure.axes:
        vertical = [line for line in axes.get_lines() if list(line.get_xdata()) == [0.45, 0.45]]
        assert len(vertical) == 1
        assert axes.get_xlabel() == "fraction of genuine pairs discarded" and axes.get_ylabel() == "FNMR"
        assert any(text.get_text() == "pAUC limit 0.45" for text in axes.texts)


def test_an_unreachable_fmr_is_named_in_its_panel_title():
    # 150 impostor pairs: FMR 1e-2 allows one false match (1.5), 1e-3 none: its threshold
    # lies above every impostor, FMR 0
    figure = plot_edc([toy_dataset("B", impostors=150)])
    titles = [axes.get_title() for axes in figure.axes]
    assert titles[0] == "toy, FMR=1E-2"
    assert titles[1] == "toy, FMR=1E-3\n(not reachable: FMR used 0)"


def test_a_refused_suffix_is_one_line_before_anything_runs(tmp_path):
    from synfiqa_cli.main import cli

    with pytest.raises(ConfigError, match=r"\.png, \.pdf, \.svg"):
        plot_edc([toy_dataset()], tmp_path / "edc.jpg")
    assert not (tmp_path / "edc.jpg").exists()
    # the pairs file does not even exist: the suffix is refused first
    result = CliRunner().invoke(cli, ["evaluate", "--pairs", str(tmp_path / "none.csv"), "--embeddings",
                                      str(tmp_path / "none.npz"), "--quality", str(tmp_path / "q.csv"),
                                      "--plot", str(tmp_path / "edc.jpeg")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"Error: cannot draw a plot into '{tmp_path / 'edc.jpeg'}': the file name must end in .png, .pdf, .svg "
        "(the suffix chooses the format)"]

"""`synfiqa score --model mr`: the MR-FIQA label as a reference-based scorer, on the test
photos (the real offline embedder and pose model) and on a built dataset, whose own fr
scores it must reproduce."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from scipy.stats import rankdata

from synfiqa.config import load_config
from synfiqa.stages.build import build
from synfiqa_cli.main import cli


def run(args):
    return CliRunner().invoke(cli, args)


@pytest.fixture(scope="module")
def photo_folders(tmp_path_factory):
    """references: ardern_1, macron_1; to score: ardern_2, macron_2, sunak_1 filed under
    macron (an impostor), obama_1 (an identity without references)."""
    from conftest import FACES

    root = tmp_path_factory.mktemp("reference_scoring")
    layout = {"refs/ardern/ardern_1.jpg": "ardern_1", "refs/macron/macron_1.jpg": "macron_1",
              "images/ardern/ardern_2.jpg": "ardern_2", "images/macron/macron_2.jpg": "macron_2",
              "images/macron/impostor.jpg": "sunak_1", "images/obama/obama_1.jpg": "obama_1"}
    for target, photo in layout.items():
        (root / target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(FACES / f"{photo}.jpg", root / target)
    return root


@pytest.fixture(scope="module")
def photo_scores(photo_folders):
    out = photo_folders / "scores.json"
    result = run(["score", str(photo_folders / "images"), "--model", "mr",
                  "--references", str(photo_folders / "refs"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text()), result.output


def test_genuine_photos_score_above_the_impostor_and_the_unreferenced_get_no_score(photo_scores):
    document, output = photo_scores
    rows = {row["image"]: row for row in document["scores"]}
    assert set(rows) == {"ardern/ardern_2.jpg", "macron/macron_2.jpg", "macron/impostor.jpg", "obama/obama_1.jpg"}
    fr = {name: row["scores"]["fr"] for name, row in rows.items() if row["scores"]}
    # the default embedder's cosines measured on these photos (see test_real_photo_checks)
    assert fr["ardern/ardern_2.jpg"] == pytest.approx(0.756, abs=0.02)
    assert fr["macron/macron_2.jpg"] == pytest.approx(0.593, abs=0.02)
    assert fr["macron/impostor.jpg"] < 0.25
    assert rows["macron/impostor.jpg"]["quality"] == 0.0
    assert rows["obama/obama_1.jpg"]["quality"] is None
    assert rows["obama/obama_1.jpg"]["reason"] == "no-reference"
    assert "scored 3 of 4 images" in output and "no-reference (1)" in output


def test_mr_is_min_max_of_fr_plus_half_the_yaw_rank(photo_scores):
    """Without BLIP weights (never here) the label lacks vl, says so, and is the min-max of
    fr + 0.5 * sd, sd being the rank score of the measured |yaw| over the scored images."""
    document, output = photo_scores
    rows = [row for row in document["scores"] if row["scores"]]
    fr = np.array([row["scores"]["fr"] for row in rows])
    yaw = np.array([row["scores"]["pose.abs_yaw"] for row in rows])
    sd = (len(yaw) - rankdata(yaw)) / len(yaw)
    raw = fr + 0.5 * sd
    expected = (raw - raw.min()) / (raw.max() - raw.min())
    np.testing.assert_allclose([row["quality"] for row in rows], expected, atol=1e-12)
    np.testing.assert_allclose([row["scores"]["sd"] for row in rows], sd)
    assert "vl" in document["missing_domains"]
    assert all(row["detail"] == "computed without vl" for row in rows)
    assert any("|yaw| only" in note for note in document["notes"])
    assert "mr computed without vl" in output


def test_synfiqa_layout_uses_the_ref_images_and_reproduces_the_builds_fr(tmp_path):
    out = tmp_path / "built"
    build(load_config(None, ["run.degraded=5"]), out, echo=lambda *_: None)
    result = run(["score", str(out / "data"), "--model", "mr", "--aligned", "--out", str(tmp_path / "s.json")])
    assert result.exit_code == 0, result.output
    rows = {row["image"]: row for row in json.loads((tmp_path / "s.json").read_text())["scores"]}
    assert not any("Ref-" in name for name in rows), "references are not scored"
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    degraded = {row["path"].removeprefix("data/"): row for row in manifest if row.get("role") == "degraded"}
    assert set(rows) == set(degraded)
    for name, row in rows.items():
        # the same crops, embedder and references as the build: the same fr
        assert row["scores"]["fr"] == pytest.approx(degraded[name]["scores"]["fr"], abs=1e-5), name


def test_folders_without_references_are_a_clear_error(photo_folders):
    result = run(["score", str(photo_folders / "images"), "--model", "mr"])
    assert result.exit_code == 2
    assert "--references" in result.output and "Ref-<k>" in result.output


def test_references_need_the_mr_model(photo_folders):
    result = run(["score", str(photo_folders / "images"), "--model", "cr-fiqa-s",
                  "--references", str(photo_folders / "refs")])
    assert result.exit_code == 2
    assert "--references is for --model mr" in result.output


def test_a_references_folder_without_identity_folders_is_refused(photo_folders, tmp_path):
    loose = tmp_path / "loose"
    loose.mkdir()
    shutil.copy(photo_folders / "refs" / "ardern" / "ardern_1.jpg", loose / "ardern_1.jpg")
    result = run(["score", str(photo_folders / "images"), "--model", "mr", "--references", str(loose)])
    assert result.exit_code == 2
    assert "no identity sub-folder" in result.output

"""Annotation: `synfiqa annotate` on our own and on foreign datasets, resume, and scores
keyed by path (the original's ordering bug must not exist)."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image, ImageOps

from synfiqa.config import load_config
from synfiqa.dataset import read_quality_scores
from synfiqa.images import read_rgb
from synfiqa.pipeline import build
from synfiqa.registry import Registry
from synfiqa_cli.main import cli


def manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def small_build(tmp_path_factory):
    out = tmp_path_factory.mktemp("annotate") / "out"
    build(load_config(None, ["run.degraded=5"]), out, echo=lambda *_: None)
    return out


def test_annotate_reproduces_the_builds_scores(small_build, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(small_build, copy)
    (copy / "Quality-Scores.txt").unlink()
    result = CliRunner().invoke(cli, ["annotate", str(copy)])
    assert result.exit_code == 0, result.output
    assert (copy / "Quality-Scores.txt").read_text() == (small_build / "Quality-Scores.txt").read_text()
    assert "computed without vl" in result.output


def test_foreign_dataset_with_a_csv_of_intensities(small_build, tmp_path):
    foreign = tmp_path / "foreign"
    shutil.copytree(small_build / "data", foreign / "data")
    rows = [r for r in manifest(small_build) if r["role"] == "degraded"]
    table = tmp_path / "intensities.csv"
    with open(table, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "pose.abs_yaw", "low_scale", "blur_level"])
        for r in rows:
            p = r["params"]
            writer.writerow([r["path"], p["pose.abs_yaw"], p["blur-downscale.low_scale"], p["blur-downscale.blur_level"]])
    result = CliRunner().invoke(cli, ["annotate", str(foreign), "--intensities", str(table)])
    assert result.exit_code == 0, result.output
    ours = read_quality_scores(small_build / "Quality-Scores.txt")
    theirs = read_quality_scores(foreign / "Quality-Scores.txt")
    assert theirs.keys() == ours.keys()
    assert max(abs(theirs[k] - ours[k]) for k in ours) < 1e-5


def test_missing_intensity_column_is_named(small_build, tmp_path):
    foreign = tmp_path / "foreign"
    shutil.copytree(small_build / "data", foreign / "data")
    rows = [r for r in manifest(small_build) if r["role"] == "degraded"]
    table = tmp_path / "intensities.json"
    table.write_text(json.dumps([{"path": r["path"], "low_scale": 1.0} for r in rows]))
    result = CliRunner().invoke(cli, ["annotate", str(foreign), "--intensities", str(table)])
    assert result.exit_code == 2
    assert "lack the column 'pose.abs_yaw'" in result.output and "include_yaw=false" in result.output
    bad_axis = CliRunner().invoke(cli, ["annotate", str(foreign), "--intensities", str(table), "--axis", "blur_level",
                                        "--set", "annotate.params.sd.include_yaw=false"])
    assert bad_axis.exit_code == 2 and "lack the column 'blur_level'" in bad_axis.output
    assert not (foreign / "Quality-Scores.txt").exists()


def test_annotate_resumes_without_redoing_finished_identities(small_build, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(small_build, copy)
    runner = CliRunner()
    assert runner.invoke(cli, ["annotate", str(copy)]).exit_code == 0
    work = copy / ".synfiqa" / "annotate"
    # A finished identity's stored result is trusted, not recomputed: change it and see it used.
    stored = json.loads((work / "obama.json").read_text())
    for scores in stored.values():
        scores["fr"] = -1.0
    (work / "obama.json").write_text(json.dumps(stored))
    sunak_before = json.loads((work / "sunak.json").read_text())
    (work / "sunak.json").unlink()
    result = runner.invoke(cli, ["annotate", str(copy)])
    assert "(3 already annotated)" in result.output
    scores = read_quality_scores(copy / "Quality-Scores.txt")
    obama = [v for k, v in scores.items() if k.startswith("/obama/")]
    others = [v for k, v in scores.items() if not k.startswith("/obama/")]
    assert max(obama) < min(others)  # fr = -1 sinks every obama sample below the rest
    assert json.loads((work / "sunak.json").read_text()) == sunak_before  # redone, identically


def test_not_a_dataset(tmp_path):
    result = CliRunner().invoke(cli, ["annotate", str(tmp_path)])
    assert result.exit_code == 2 and "no data/ folder" in result.output


@pytest.fixture(scope="module")
def many_identities(tmp_path_factory):
    """14 identities, one image each: the six photos, their mirror images, and two without a face."""
    faces = Path(__file__).parent / "data" / "faces"
    source = tmp_path_factory.mktemp("many") / "input"
    source.mkdir()
    for photo in sorted(faces.glob("*.jpg")):
        image = Image.open(photo)
        image.save(source / f"{photo.stem}.jpg")
        ImageOps.mirror(image).save(source / f"{photo.stem}-mirror.jpg")
    gradient = np.tile(np.linspace(0, 255, 160, dtype=np.uint8), (160, 1))
    for name in ("wall-a", "wall-b"):
        Image.fromarray(np.stack([gradient] * 3, axis=2)).save(source / f"{name}.png")
    out = source.parent / "out"
    config = load_config(None, ["run.degraded=3", f'generate.params.folder.path="{source}"',
                                'generate.params.folder.grouping="file"'])
    build(config, out, echo=lambda *_: None)
    return out


def test_every_score_belongs_to_its_own_image(many_identities):
    """The original wrote scores in another order than it computed them, shifting labels
    across identities past 10 of them. Here each line is recomputed from its own files."""
    out = many_identities
    rows = manifest(out)
    degraded = [r for r in rows if r["role"] == "degraded"]
    assert len({r["identity"] for r in degraded}) == 12
    assert {r["identity"] for r in rows if r["status"] == "skipped"} == {"wall-a", "wall-b"}
    embedder = Registry().create("embedder", "sface")

    def embed(paths):
        crops = torch.from_numpy(np.stack([read_rgb(out / p) for p in paths])).permute(0, 3, 1, 2).contiguous()
        return embedder.embed(crops).to(torch.float64)

    scores = read_quality_scores(out / "Quality-Scores.txt")
    assert len(scores) == len(degraded) == 36
    for identity in {r["identity"] for r in degraded}:
        mine = [r for r in degraded if r["identity"] == identity]
        references = [r["path"] for r in rows if r["identity"] == identity and r["role"] == "reference"]
        mean = embed(references).mean(0)
        samples = embed([r["path"] for r in mine])
        fr = (samples @ mean) / (samples.norm(dim=1) * mean.norm())
        for row, value in zip(mine, fr.tolist()):
            assert row["scores"]["fr"] == pytest.approx(value, abs=1e-5)
            assert scores["/" + row["path"].removeprefix("data/")] == pytest.approx(row["scores"]["mr"], abs=1e-6)
    raw = np.array([r["scores"]["fr"] + 0.5 * r["scores"]["sd"] for r in degraded])
    expected = (raw - raw.min()) / (raw.max() - raw.min())
    assert np.allclose([r["scores"]["mr"] for r in degraded], expected)

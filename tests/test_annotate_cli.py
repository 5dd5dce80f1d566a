"""`synfiqa annotate`: our own and foreign datasets, bad input, resume, and scores keyed by
path (the original's ordering bug must not exist)."""
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
from scipy.stats import rankdata

from synfiqa.config import load_config
from synfiqa.layout import read_quality_scores
from synfiqa.images import read_rgb
from synfiqa.stages.build import build
from synfiqa.registry import Registry
from synfiqa_cli.main import cli

FACES = Path(__file__).parent / "data" / "faces"
AXES = ("pose.abs_yaw", "blur-downscale.low_scale", "blur-downscale.blur_level")


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def annotate(*args):
    return CliRunner().invoke(cli, ["annotate", *map(str, args)])


@pytest.fixture(scope="module")
def small_build(tmp_path_factory):
    out = tmp_path_factory.mktemp("annotate") / "out"
    build(load_config(None, ["run.degraded=5"]), out, echo=lambda *_: None)
    return out


@pytest.fixture
def copy_of_build(small_build, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(small_build, copy)
    (copy / "Quality-Scores.txt").unlink()
    return copy


def foreign_copy(small_build, target: Path) -> Path:
    """The images of our build alone, as another tool would leave them."""
    shutil.copytree(small_build / "data", target / "data")
    return target


def write_intensities_csv(small_build, path: Path, columns=("pose.abs_yaw", "low_scale", "blur_level")) -> Path:
    rows = [r for r in jsonl(small_build / "manifest.jsonl") if r["role"] == "degraded"]
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", *columns])
        for r in rows:
            p = r["params"]
            values = {"pose.abs_yaw": p["pose.abs_yaw"], "low_scale": p["blur-downscale.low_scale"],
                      "blur_level": p["blur-downscale.blur_level"]}
            writer.writerow([r["path"], *(values[c] for c in columns)])
    return path


def test_annotate_reproduces_the_builds_scores(small_build, copy_of_build):
    result = annotate(copy_of_build)
    assert result.exit_code == 0, result.output
    assert (copy_of_build / "Quality-Scores.txt").read_text() == (small_build / "Quality-Scores.txt").read_text()
    built = {"/" + r["path"].removeprefix("data/"): r for r in jsonl(small_build / "manifest.jsonl")
             if r["role"] == "degraded"}
    annotated = {r["key"]: r for r in jsonl(copy_of_build / "annotations.jsonl")}
    assert annotated.keys() == built.keys() and len(built) == 20
    for key, row in annotated.items():
        for name in ("fr", "sd", "mr"):
            assert row["scores"][name] == pytest.approx(built[key]["scores"][name], abs=1e-12)
        assert row["partial"] == built[key]["partial"] == ["computed without vl"]
    assert "mr computed without vl (model asset 'blip-itm-base-coco' not found" in result.output
    summary = json.loads((copy_of_build / "annotation-summary.json").read_text())
    assert summary["samples"] == 20 and summary["samples_scored_now"] == 20
    assert summary["severity_axes"] == list(AXES) and "samples/s" in result.output


def test_axes_come_from_the_builds_config_when_its_summary_is_gone(small_build, copy_of_build):
    (copy_of_build / "summary.json").unlink()
    assert annotate(copy_of_build).exit_code == 0
    assert (copy_of_build / "Quality-Scores.txt").read_text() == (small_build / "Quality-Scores.txt").read_text()
    (copy_of_build / "config.toml").unlink()
    # our manifest also records l1, l2 and theta: guessing the axes would rank those too
    result = annotate(copy_of_build)
    assert result.exit_code == 2 and "name them with --axis" in result.output


def test_foreign_dataset_with_a_csv_of_intensities(small_build, tmp_path):
    foreign = foreign_copy(small_build, tmp_path / "foreign")
    table = write_intensities_csv(small_build, tmp_path / "intensities.csv")
    result = annotate(foreign, "--intensities", table)
    assert result.exit_code == 0, result.output
    ours = read_quality_scores(small_build / "Quality-Scores.txt")
    theirs = read_quality_scores(foreign / "Quality-Scores.txt")
    assert theirs.keys() == ours.keys()
    assert max(abs(theirs[k] - ours[k]) for k in ours) < 1e-6


def test_foreign_dataset_with_json_intensities_keyed_by_path(small_build, tmp_path):
    foreign = foreign_copy(small_build, tmp_path / "foreign")
    rows = [r for r in jsonl(small_build / "manifest.jsonl") if r["role"] == "degraded"]
    # keyed "/<identity>/<k>.jpg", as Quality-Scores.txt is; an extra column is ignored when --axis names the axes
    table = tmp_path / "intensities.json"
    table.write_text(json.dumps({"/" + r["path"].removeprefix("data/"): {
        "pose.abs_yaw": r["params"]["pose.abs_yaw"], "scale": r["params"]["blur-downscale.low_scale"],
        "blur": r["params"]["blur-downscale.blur_level"], "notes": 0} for r in rows}))
    result = annotate(foreign, "--intensities", table, "--axis", "scale", "--axis", "blur")
    assert result.exit_code == 0, result.output
    assert (foreign / "Quality-Scores.txt").read_text() == (small_build / "Quality-Scores.txt").read_text()


def test_missing_intensity_column_is_named(small_build, tmp_path):
    foreign = foreign_copy(small_build, tmp_path / "foreign")
    table = write_intensities_csv(small_build, tmp_path / "intensities.csv", columns=("low_scale", "blur_level"))
    result = annotate(foreign, "--intensities", table)
    assert result.exit_code == 2
    assert "lack the column 'pose.abs_yaw'" in result.output and "include_yaw=false" in result.output
    bad_axis = annotate(foreign, "--intensities", table, "--axis", "blur",
                        "--set", "annotate.params.sd.include_yaw=false")
    assert bad_axis.exit_code == 2 and "lack the column 'blur' (for /ardern/0.jpg)" in bad_axis.output
    no_yaw = annotate(foreign, "--intensities", table, "--set", "annotate.params.sd.include_yaw=false")
    assert no_yaw.exit_code == 0, no_yaw.output
    missing_row = tmp_path / "short.csv"
    missing_row.write_text("".join(table.read_text().splitlines(keepends=True)[:-1]))
    short = annotate(foreign, "--intensities", missing_row, "--set", "annotate.params.sd.include_yaw=false")
    assert short.exit_code == 2 and "no recorded intensities for /sunak/4.jpg" in short.output


def test_bad_images_are_skipped_with_a_reason(small_build, tmp_path):
    foreign = foreign_copy(small_build, tmp_path / "foreign")
    table = write_intensities_csv(small_build, tmp_path / "intensities.csv")
    data = foreign / "data"
    (data / "ardern" / "1.jpg").write_bytes((data / "ardern" / "1.jpg").read_bytes()[:300])   # truncated
    Image.fromarray(read_rgb(data / "ardern" / "2.jpg")).resize((96, 96)).save(data / "ardern" / "2.jpg")
    (data / "macron" / "0.jpg").write_text("not an image")
    for reference in (data / "obama").glob("Ref-*.jpg"):
        reference.write_bytes(b"")                                                          # no usable reference
    result = annotate(foreign, "--intensities", table)
    assert result.exit_code == 0, result.output
    rows = {r["key"]: r for r in jsonl(foreign / "annotations.jsonl")}
    reasons = {path: r["reason"] for path, r in rows.items() if r["status"] == "skipped"}
    assert reasons == {"/ardern/1.jpg": "corrupt-image", "/ardern/2.jpg": "wrong-size",
                       "/macron/0.jpg": "unreadable-image", "/obama/Ref-0.jpg": "unreadable-image",
                       **{f"/obama/{k}.jpg": "no-reference" for k in range(5)}}
    scores = read_quality_scores(foreign / "Quality-Scores.txt")
    assert sorted(scores) == sorted(p for p, r in rows.items() if r["status"] == "ok") and len(scores) == 12
    assert "8 skipped (1 corrupt-image, 5 no-reference, 1 unreadable-image, 1 wrong-size)" in result.output
    # sd ranks only the samples that were scored
    assert sorted(r["scores"]["sd"] for r in rows.values() if r["status"] == "ok")[-1] < 1


def test_annotate_resumes_without_redoing_finished_identities(small_build, copy_of_build):
    assert annotate(copy_of_build).exit_code == 0
    work = copy_of_build / ".synfiqa" / "annotate"
    # A finished identity's stored result is trusted, not recomputed: change it and see it used.
    stored = json.loads((work / "obama.json").read_text())
    for scores in stored["scores"].values():
        scores["fr"] = -1.0
    (work / "obama.json").write_text(json.dumps(stored))
    sunak_before = json.loads((work / "sunak.json").read_text())
    (work / "sunak.json").unlink()
    result = annotate(copy_of_build)
    assert "(3 already annotated)" in result.output
    scores = read_quality_scores(copy_of_build / "Quality-Scores.txt")
    obama = [v for k, v in scores.items() if k.startswith("/obama/")]
    others = [v for k, v in scores.items() if not k.startswith("/obama/")]
    assert max(obama) < min(others)  # fr = -1 sinks every obama sample below the rest
    assert json.loads((work / "sunak.json").read_text()) == sunak_before  # redone, identically
    again = annotate(copy_of_build)
    assert again.exit_code == 0 and "(4 already annotated)" in again.output
    # changed model parameters invalidate every stored identity (the path stays SFace's own
    # file, so the scores are the build's again)
    redo = annotate(copy_of_build, "--set", 'models.params.sface.path=""')
    assert redo.exit_code == 0, redo.output
    assert "4 stored identities redone" in redo.output and "(0 already annotated)" in redo.output
    assert (copy_of_build / "Quality-Scores.txt").read_text() == (small_build / "Quality-Scores.txt").read_text()
    # a sample removed since: its identity is redone, and the ranks are over the 19 left
    (copy_of_build / "data" / "ardern" / "4.jpg").unlink()
    fewer = annotate(copy_of_build, "--set", 'models.params.sface.path=""')
    assert fewer.exit_code == 0 and "(3 already annotated)" in fewer.output
    assert len(read_quality_scores(copy_of_build / "Quality-Scores.txt")) == 19


def test_not_a_dataset(tmp_path):
    result = annotate(tmp_path)
    assert result.exit_code == 2 and "no data/ folder" in result.output
    (tmp_path / "data" / "someone").mkdir(parents=True)
    result = annotate(tmp_path)
    assert result.exit_code == 2 and "holds no degraded samples" in result.output


# ---------------------------------------------------------------- more than 10 identities


FACELESS = {"2", "11"}


@pytest.fixture(scope="module")
def many_identities(tmp_path_factory):
    """14 identities named 0..13, so that sorting their names as text (0, 1, 10, 11, ...)
    and as numbers disagree, as they did in the original: the six photos, their mirror
    images and crops, and two identities (2 and 11) whose only image holds no face."""
    source = tmp_path_factory.mktemp("many") / "input"
    photos = sorted(FACES.glob("*.jpg"))
    variants = [(p, "copy") for p in photos] + [(p, "mirror") for p in photos[:3]] + [(p, "crop") for p in photos[3:]]
    faced = [str(n) for n in range(14) if str(n) not in FACELESS]
    for name, (photo, how) in zip(faced, variants):
        image = Image.open(photo)
        if how == "mirror":
            image = ImageOps.mirror(image)
        elif how == "crop":
            w, h = image.size
            image = image.crop((w // 12, h // 12, w - w // 12, h - h // 12))
        (source / name).mkdir(parents=True)
        image.save(source / name / f"{photo.stem}-{how}.jpg")
    gradient = np.tile(np.linspace(0, 255, 160, dtype=np.uint8), (160, 1))
    for name in FACELESS:
        (source / name).mkdir()
        Image.fromarray(np.stack([gradient] * 3, axis=2)).save(source / name / "wall.png")
    out = source.parent / "out"
    config = load_config(None, ["run.degraded=3", f'generate.params.folder.path="{source}"',
                                'generate.params.folder.grouping="subfolder"'])
    build(config, out, echo=lambda *_: None)
    return out


def test_every_score_belongs_to_its_own_image(many_identities):
    """The original wrote scores in another order than it computed them, shifting labels
    across identities past 10 of them. Here every line is recomputed from its own files
    and recorded intensities."""
    out = many_identities
    rows = jsonl(out / "manifest.jsonl")
    degraded = [r for r in rows if r["role"] == "degraded"]
    assert {r["identity"] for r in degraded} == {str(n) for n in range(14)} - FACELESS
    assert {r["identity"]: r["reason"] for r in rows if r["status"] == "skipped"} == {"2": "no-face", "11": "no-face"}
    embedder = Registry().create("embedder", "sface")

    def embed(paths):
        crops = torch.from_numpy(np.stack([read_rgb(out / p) for p in paths])).permute(0, 3, 1, 2).contiguous()
        return torch.nn.functional.normalize(embedder.embed(crops).to(torch.float64), dim=1)

    fr = {}
    for identity in {r["identity"] for r in degraded}:
        mine = [r["path"] for r in degraded if r["identity"] == identity]
        references = [r["path"] for r in rows if r["identity"] == identity and r["role"] == "reference"]
        mean = embed(references).mean(0)
        samples = embed(mine)
        fr.update(zip(mine, ((samples @ mean) / (samples.norm(dim=1) * mean.norm())).tolist()))
    paths = [r["path"] for r in degraded]
    n = len(paths)
    sd = np.min([(n - rankdata([r["params"][axis] for r in degraded])) / n for axis in AXES], axis=0)
    raw = np.array([fr[p] for p in paths]) + 0.5 * sd
    mr = dict(zip(paths, (raw - raw.min()) / (raw.max() - raw.min())))

    lines = (out / "Quality-Scores.txt").read_text().splitlines()
    assert len(lines) == n == 36
    by_path = {r["path"]: r for r in degraded}
    for line in lines:
        key, value = line.split("\t")
        path = "data" + key
        row = by_path[path]
        assert key == f"/{row['identity']}/{row['index']}.jpg"
        assert float(value) == pytest.approx(row["scores"]["mr"], abs=5e-7)
        assert row["scores"]["fr"] == pytest.approx(fr[path], abs=1e-6)
        assert row["scores"]["sd"] == pytest.approx(sd[paths.index(path)], abs=1e-12)
        assert float(value) == pytest.approx(mr[path], abs=2e-6)


def test_annotate_reproduces_a_build_of_many_identities(many_identities, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(many_identities, copy)
    (copy / "Quality-Scores.txt").unlink()
    assert annotate(copy).exit_code == 0
    assert (copy / "Quality-Scores.txt").read_text() == (many_identities / "Quality-Scores.txt").read_text()

"""`--json`: stdout holds exactly one JSON document (strict JSON: no NaN), status lines go to
stderr, for build, filter, degrade, annotate and score. Each result is checked against what the
command wrote to disk, read back independently."""
from __future__ import annotations

import csv
import io
import json
import shutil

import pytest
from click.testing import CliRunner
from PIL import Image

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run_json(*args):
    """The command's stdout parsed as strict JSON (a NaN or a stray status line fails), and its stderr."""
    from synfiqa_cli.main import cli

    result = CliRunner().invoke(cli, [*map(str, args), "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout, parse_constant=lambda name: pytest.fail(f"{name} in the JSON"))
    return document, result.stderr


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """`synfiqa build --json` of two identities (two demo photos each, 3 samples each)."""
    from conftest import FACES

    source = tmp_path_factory.mktemp("input")
    for name in ("ardern_1.jpg", "ardern_2.jpg", "macron_1.jpg", "macron_2.jpg"):
        shutil.copy(FACES / name, source / name)
    out = tmp_path_factory.mktemp("build") / "out"
    document, stderr = run_json("build", "--out", out, "--input", source, "--no-progress",
                                "--set", "run.degraded=3", "--set", 'annotate.chain=["fr", "sd", "mr"]')
    return out, document, stderr


def test_build_json(built):
    out, document, stderr = built
    assert document["out"] == str(out)
    summary = json.loads((out / "summary.json").read_text())
    for key, value in summary.items():   # the summary.json the build wrote, and more (the engine report)
        assert document[key] == value, key
    scores = (out / "Quality-Scores.txt").read_text().splitlines()
    assert len(scores) == 6
    assert stderr.strip()  # the build's status lines went to stderr


def test_annotate_json(built, tmp_path):
    out, _, _ = built
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    document, stderr = run_json("annotate", copy, "--no-progress")
    assert document["dataset"] == str(copy)
    written = json.loads((copy / "annotation-summary.json").read_text())
    assert {k: document[k] for k in written} == written
    assert document["samples"] == 6 and "annotate:" in stderr


def test_degrade_json(tmp_path):
    from evaluation_faces import aligned_test_faces

    crops = tmp_path / "crops"
    crops.mkdir()
    for name, crop in list(aligned_test_faces().items())[:2]:
        Image.fromarray(crop).save(crops / name.replace(".jpg", ".png"))
    out = tmp_path / "out"
    document, _ = run_json("degrade", crops, "--aligned", "-n", "2", "--out", out, "--no-progress")
    rows = [json.loads(line) for line in (out / "degraded.jsonl").read_text().splitlines()]
    assert document["out"] == str(out) and document["made"] == 4 == len(rows)
    assert len(list(out.rglob("*.png"))) == 4


def test_filter_json(faces_copy):
    document, stderr = run_json("filter", faces_copy, "--grouping", "file", "--filters", "uniqueness")
    assert document["identities"] == 6 and document["kept"] == 4
    assert {row["image"] for row in document["images"]} == {p.name for p in faces_copy.glob("*.jpg")}
    assert "kept 4 of 6 identities" in stderr  # the table, on stderr


def test_score_json(faces_copy, tmp_path):
    import torch

    from synfiqa_plugins.models.iresnet import CRFIQANet

    torch.manual_seed(0)
    network = CRFIQANet((1, 1, 1, 1), "linear").eval()
    checkpoint = tmp_path / "crfiqa_random.pth"
    torch.save({"module." + k: v for k, v in network.state_dict().items()}, checkpoint)
    csv_out = tmp_path / "scores.csv"
    document, stderr = run_json("score", faces_copy, "--model", checkpoint, "--no-progress", "--out", csv_out)
    from_csv = {row["image"]: float(row["quality"]) for row in csv.DictReader(io.StringIO(csv_out.read_text()))}
    from_json = {row["image"]: row["quality"] for row in document["scores"]}
    assert from_json == pytest.approx(from_csv) and len(from_json) == 6
    assert "scored 6 of 6 images" in stderr

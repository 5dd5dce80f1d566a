"""`synfiqa score` on the test photos with a randomly initialised CR-FIQA checkpoint saved in
the real format: detection + alignment, batching, CSV/JSON output, images without a score."""
from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from synfiqa_plugins.models.iresnet import CRFIQANet

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    network = CRFIQANet((1, 1, 1, 1), "linear").eval()
    path = tmp_path_factory.mktemp("ckpt") / "crfiqa_random.pth"
    torch.save({"module." + k: v for k, v in network.state_dict().items()}, path)
    return path, network


@pytest.fixture(scope="module")
def aligned_crops():
    """The six photos detected and aligned, as score should do it."""
    from evaluation_faces import aligned_test_faces

    return aligned_test_faces()


def run(args):
    from synfiqa_cli.main import cli

    return CliRunner().invoke(cli, args, catch_exceptions=False)


def expected_scores(network, crops: dict[str, np.ndarray]) -> dict[str, float]:
    batch = torch.from_numpy(np.stack(list(crops.values()))).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    with torch.no_grad():
        values = network(batch)[1].reshape(-1).tolist()
    return dict(zip(crops, values))


def test_scores_photos_after_detection_and_alignment(checkpoint, aligned_crops, faces_copy, tmp_path):
    path, network = checkpoint
    Image.new("RGB", (300, 300), (128, 128, 128)).save(faces_copy / "blank.png")    # no face in it
    (faces_copy / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    out = tmp_path / "scores.csv"
    result = run(["score", str(faces_copy), "--model", str(path), "--out", str(out), "--batch-size", "4",
                  "--no-progress"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out.open()))
    assert [r["image"] for r in rows] == ["ardern_1.jpg", "ardern_2.jpg", "blank.png", "broken.jpg",
                                          "macron_1.jpg", "macron_2.jpg", "obama_1.jpg", "sunak_1.jpg"]
    by_name = {r["image"]: r for r in rows}
    assert by_name["blank.png"]["quality"] == "" and by_name["blank.png"]["reason"] == "no-face"
    assert by_name["broken.jpg"]["quality"] == "" and by_name["broken.jpg"]["reason"] == "unreadable-image"
    expected = expected_scores(network, aligned_crops)
    for name, value in expected.items():
        assert float(by_name[name]["quality"]) == pytest.approx(value, rel=1e-4, abs=1e-5)
        assert by_name[name]["reason"] == ""
    assert "scored 6 of 8 images" in result.output and "no-face (1), unreadable-image (1)" in result.output


def test_aligned_crops_skip_detection_and_json_output(checkpoint, aligned_crops, tmp_path):
    path, network = checkpoint
    folder = tmp_path / "crops" / "sub"
    folder.mkdir(parents=True)
    for name, crop in aligned_crops.items():
        Image.fromarray(crop).save(folder / name.replace(".jpg", ".png"))  # lossless: same pixels back
    big = np.asarray(Image.fromarray(aligned_crops["obama_1.jpg"]).resize((224, 224), Image.BILINEAR))
    Image.fromarray(big).save(folder / "obama_big.png")
    out = tmp_path / "scores.json"
    result = run(["score", str(tmp_path / "crops"), "--model", str(path), "--aligned", "--out", str(out)])
    assert result.exit_code == 0, result.output
    payload = json.loads(out.read_text())
    assert payload["model"] == "crfiqa_random.pth" and payload["scored"] == 7
    assert payload["variant"] == "iresnet1-1-1-1, linear qs head (CR-FIQA)"
    got = {item["image"]: item["quality"] for item in payload["scores"]}
    for name, value in expected_scores(network, aligned_crops).items():
        assert got["sub/" + name.replace(".jpg", ".png")] == pytest.approx(value, rel=1e-4, abs=1e-5)
    assert np.isfinite(got["sub/obama_big.png"])  # resized to 112x112, not refused


def test_stdout_csv_for_single_files(checkpoint, faces_dir):
    path, _ = checkpoint
    result = run(["score", str(faces_dir / "obama_1.jpg"), "--model", str(path), "--no-progress"])
    assert result.exit_code == 0
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(rows) == 1 and rows[0]["image"] == str(faces_dir / "obama_1.jpg") and float(rows[0]["quality"])


@pytest.mark.parametrize("args, message", [
    (["nowhere/"], "'nowhere/': no such file or folder"),
    (["{faces}", "--model", "no-such-model"], "no fiqa named 'no-such-model'"),
    (["{faces}", "--model", "missing.pth"], "checkpoint file 'missing.pth' does not exist"),
    (["{faces}", "--out", "scores.txt"], "--out must end in .csv or .json"),
])
def test_user_errors_exit_2_with_one_line(checkpoint, faces_dir, args, message):
    path, _ = checkpoint
    args = [a.replace("{faces}", str(faces_dir)) for a in args]
    if "--model" not in args:
        args += ["--model", str(path)]
    result = CliRunner().invoke(__import__("synfiqa_cli.main", fromlist=["cli"]).cli, ["score", *args])
    assert result.exit_code == 2
    assert message in result.output


class _FakeDetector:
    def detect(self, image):
        raise ValueError("torch.cat(): expected a non-empty list of Tensors")  # what MTCNN does on tiny images


def test_batches_keep_order_and_a_failing_detector_costs_one_image(tmp_path):
    from synfiqa.faces import CropMaker
    from synfiqa.images import ImageItem
    from synfiqa.batch_inference import run_model

    for value in range(5):
        Image.new("RGB", (112, 112), (value * 40, 0, 0)).save(tmp_path / f"{value}.png")
    items = [ImageItem(f"{v}.png", tmp_path / f"{v}.png") for v in range(5)]
    items.insert(2, ImageItem("gone.png", tmp_path / "gone.png"))
    batches = []

    def red_channel(crops):
        batches.append(len(crops))
        return crops[:, 0, 0, 0].float()

    outcomes = run_model(items, CropMaker(aligned=True), red_channel, batch_size=2, progress=False)
    assert [o.name for o in outcomes] == ["0.png", "1.png", "gone.png", "2.png", "3.png", "4.png"]
    assert [o.value for o in outcomes] == [0.0, 40.0, None, 80.0, 120.0, 160.0]
    assert outcomes[2].reason == "missing-file" and batches == [2, 2, 1]
    failed = run_model(items[:1], CropMaker(aligned=False, detector=_FakeDetector()), red_channel, progress=False)
    assert failed[0].value is None and failed[0].reason == "detection-failed"
    assert "0.png: the face detector failed" in failed[0].detail

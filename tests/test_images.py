"""synfiqa.images.read_rgb on awkward inputs: every one becomes HxWx3 uint8 RGB or a
BadInputError with its reason code; and `synfiqa models list` shows every asset."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from synfiqa.errors import BadInputError
from synfiqa.images import read_rgb


def check_rgb(array, shape):
    assert array.dtype == np.uint8 and array.shape == shape and array.flags["C_CONTIGUOUS"]


def test_grayscale_is_repeated_into_three_channels(tmp_path):
    gray = np.arange(60, dtype=np.uint8).reshape(6, 10) * 4
    Image.fromarray(gray, "L").save(tmp_path / "g.png")
    out = read_rgb(tmp_path / "g.png")
    check_rgb(out, (6, 10, 3))
    assert (out == gray[:, :, None]).all()


def test_rgba_is_composited_on_white(tmp_path):
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 255
    rgba[0, 0, 3] = 0      # fully transparent pixel -> white
    rgba[1, 1, 3] = 128    # half transparent red over white
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = read_rgb(tmp_path / "a.png")
    check_rgb(out, (4, 5, 3))
    assert out[0, 0].tolist() == [255, 255, 255]
    assert out[2, 2].tolist() == [200, 0, 0]
    assert out[1, 1, 0] == pytest.approx(228, abs=1) and out[1, 1, 1] == pytest.approx(127, abs=1)


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    Image.new("CMYK", (16, 12), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=95)   # pure red in CMYK
    with Image.open(tmp_path / "c.jpg") as image:
        assert image.mode == "CMYK"
    out = read_rgb(tmp_path / "c.jpg")
    check_rgb(out, (12, 16, 3))
    red, green, blue = out.reshape(-1, 3).mean(0)
    assert red > 240 and green < 15 and blue < 15


def test_16_bit_png_is_rescaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16).repeat(3, axis=0)
    Image.fromarray(values).save(tmp_path / "d.png")
    with Image.open(tmp_path / "d.png") as image:
        assert image.mode.startswith("I")
    out = read_rgb(tmp_path / "d.png")
    check_rgb(out, (3, 4, 3))
    assert out[0, :, 0].tolist() == [0, 1, 128, 255]
    assert (out[..., 0] == out[..., 2]).all()


def test_exif_rotated_jpeg_is_turned_upright(tmp_path):
    pixels = np.zeros((20, 40, 3), np.uint8)   # stored landscape, red on the left half
    pixels[:, :20] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6   # orientation: rotate 90 degrees clockwise to display
    Image.fromarray(pixels).save(tmp_path / "e.jpg", exif=exif.tobytes(), quality=95)
    out = read_rgb(tmp_path / "e.jpg")
    check_rgb(out, (40, 20, 3))   # portrait once upright
    assert out[:15].reshape(-1, 3).mean(0)[0] > 200    # the left half is now the top
    assert out[-15:].reshape(-1, 3).mean(0)[0] < 50


def test_truncated_jpeg_is_a_corrupt_image(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "t.jpg")
    data = (tmp_path / "t.jpg").read_bytes()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(BadInputError) as caught:
        read_rgb(tmp_path / "t.jpg")
    assert caught.value.reason == "corrupt-image" and "t.jpg" in str(caught.value)


@pytest.mark.parametrize("content, reason", [(b"plain text, not an image", "unreadable-image"), (None, "missing-file")])
def test_not_an_image_and_no_file(tmp_path, content, reason):
    path = tmp_path / "x.jpg"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(BadInputError) as caught:
        read_rgb(path)
    assert caught.value.reason == reason


def test_palette_png_and_a_one_pixel_image(tmp_path):
    Image.fromarray(np.full((5, 5, 3), (10, 20, 30), np.uint8)).convert("P", palette=Image.Palette.ADAPTIVE).save(tmp_path / "p.png")
    out = read_rgb(tmp_path / "p.png")
    check_rgb(out, (5, 5, 3))
    assert np.abs(out.astype(int) - (10, 20, 30)).max() <= 8
    Image.new("RGB", (1, 1)).save(tmp_path / "one.png")
    with pytest.raises(BadInputError) as caught:
        read_rgb(tmp_path / "one.png")
    assert caught.value.reason == "too-small"


def test_models_list_shows_every_asset_and_where(monkeypatch, tmp_path):
    from click.testing import CliRunner

    from synfiqa.catalogue import load_catalogue
    from synfiqa_cli.main import cli

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("SYNFIQA_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    _, assets = load_catalogue()
    result = CliRunner().invoke(cli, ["models", "list"])
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.output.splitlines() if line.strip()}
    assert set(assets) <= set(lines)
    for shipped in ("mtcnn", "sface", "yunet", "dlib-resnet", "dlib-shape-5", "dlib-shape-68"):
        assert "found (package" in lines[shipped], lines[shipped]
    for absent in ("facenet-vggface2", "blip-itm-base-coco"):
        assert "MISSING" in lines[absent]

    rows = json.loads(CliRunner().invoke(cli, ["models", "list", "--json"]).output)
    by_name = {row["asset"]: row for row in rows}
    assert set(by_name) == set(assets)
    assert by_name["dlib-shape-68"]["found"] and by_name["dlib-shape-68"]["files"]["models/shape_predictor_68_face_landmarks.dat"].endswith(".dat")
    assert not by_name["facenet-vggface2"]["found"] and "not found" in by_name["facenet-vggface2"]["error"]
    assert by_name["dlib-shape-68"]["license"].startswith("iBUG")

    # a folder placed in $SYNFIQA_WEIGHTS is reported found there
    folder = tmp_path / "weights" / "facenet-vggface2"
    folder.mkdir(parents=True)
    (folder / "20180402-114759-vggface2.pt").write_bytes(b"x")
    result = CliRunner().invoke(cli, ["models", "list"])
    line = next(l for l in result.output.splitlines() if l.startswith("facenet-vggface2"))
    assert "found ($SYNFIQA_WEIGHTS)" in line

"""Huge photos and the formats Pillow reads beyond the usual ones: a photo over synfiqa's pixel
limit is a recorded skip (image-too-large), never Pillow's DecompressionBombError; a large one
is decoded reduced, in bounded memory; .ppm/.pgm/.pbm (FERET's formats), .tga, .gif, ... are
read; `synfiqa degrade` and `synfiqa score` skip a huge photo with its reason and go on."""
from __future__ import annotations

import csv
import json
import math
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, features

import synfiqa.images as images
from synfiqa.errors import BadInputError
from synfiqa.images import MAX_DECODED_PIXELS, MAX_IMAGE_PIXELS, is_image_path, read_rgb

CHAIN = 'degrade.chain=["blur-downscale","occlusion","jpeg"]'
HUGE = (20000, 15000)    # 300 MP: over synfiqa's limit (and over Pillow's 179 MP error threshold)
BIG = (12000, 8400)      # 100.8 MP RGB: decoded reduced
LARGE_GRAY = (15000, 12000)   # 180 MP: over Pillow's error threshold, under synfiqa's limit


def jpeg_declaring(size: tuple[int, int]) -> bytes:
    """A small real JPEG whose SOF header declares ``size``: what Pillow reads as the image's
    size before decoding anything (its scan data, made for 64 x 48, could not fill it)."""
    buffer = _save(Image.new("RGB", (64, 48), (90, 120, 150)), "JPEG")
    sof = buffer.index(b"\xff\xc0")
    width, height = size
    return buffer[:sof + 5] + struct.pack(">HH", height, width) + buffer[sof + 9:]


def png_declaring(size: tuple[int, int]) -> bytes:
    data = bytearray(_save(Image.new("RGB", (64, 48), (90, 120, 150)), "PNG"))
    data[16:24] = struct.pack(">II", *size)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def _save(image: Image.Image, fmt: str, **params) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def big_jpeg(tmp_path_factory) -> Path:
    """A real 100.8 MP photo, red on its left half, blue on its right (1.6 MB, a third of a
    second to make)."""
    path = tmp_path_factory.mktemp("big") / "big.jpg"
    image = Image.new("RGB", BIG, (200, 30, 30))
    image.paste((30, 30, 200), (BIG[0] // 2, 0, BIG[0], BIG[1]))
    image.save(path, quality=80)
    return path


@pytest.fixture(scope="session")
def large_gray_jpeg(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("large") / "large.jpg"
    Image.new("L", LARGE_GRAY, 77).save(path, quality=80)
    return path


def test_the_limits_are_what_the_docs_say():
    assert 16_000_000 <= MAX_DECODED_PIXELS <= 25_000_000
    assert 200_000_000 <= MAX_IMAGE_PIXELS <= 300_000_000
    assert HUGE[0] * HUGE[1] > MAX_IMAGE_PIXELS >= LARGE_GRAY[0] * LARGE_GRAY[1]


@pytest.mark.parametrize("make, suffix", [(jpeg_declaring, ".jpg"), (png_declaring, ".png")])
def test_a_photo_over_the_limit_is_a_recorded_skip_not_a_bomb_error(tmp_path, make, suffix):
    path = tmp_path / f"huge{suffix}"
    path.write_bytes(make(HUGE))
    with pytest.raises(Image.DecompressionBombError):   # what Pillow's default limit does with it
        Image.open(path)
    with pytest.raises(BadInputError) as caught:
        read_rgb(path)
    assert caught.value.reason == "image-too-large"
    message = str(caught.value)
    assert str(path) in message and "20000 x 15000" in message and f"{MAX_IMAGE_PIXELS:,}" in message


def test_an_encoded_image_over_the_limit_is_a_recorded_skip():
    from synfiqa.images import decode_image

    with pytest.raises(BadInputError) as caught:
        decode_image(jpeg_declaring(HUGE), "bin#7")
    assert caught.value.reason == "image-too-large" and "bin#7" in str(caught.value)


def test_a_100_mp_jpeg_is_decoded_reduced_with_its_aspect_and_colours(big_jpeg):
    before = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # no DecompressionBombWarning either
        out = read_rgb(big_jpeg)
    assert Image.MAX_IMAGE_PIXELS == before
    height, width = out.shape[:2]
    assert out.dtype == np.uint8 and out.shape[2] == 3
    assert width * height <= MAX_DECODED_PIXELS
    # libjpeg's smallest power-of-two scale that fits, not more: 1/4 here
    scale = next(s for s in (1, 2, 4, 8) if math.ceil(BIG[0] / s) * math.ceil(BIG[1] / s) <= MAX_DECODED_PIXELS)
    assert scale > 1 and (width, height) == (math.ceil(BIG[0] / scale), math.ceil(BIG[1] / scale))
    assert width / height == pytest.approx(BIG[0] / BIG[1], rel=1e-3)
    left, right = out[:, : width // 2 - 8].reshape(-1, 3).mean(0), out[:, width // 2 + 8:].reshape(-1, 3).mean(0)
    assert left[0] > 180 and left[2] < 60 and right[2] > 180 and right[0] < 60


def test_a_180_mp_photo_over_pillows_limit_is_read(large_gray_jpeg):
    out = read_rgb(large_gray_jpeg)
    height, width = out.shape[:2]
    assert width * height <= MAX_DECODED_PIXELS and width / height == pytest.approx(1.25, rel=1e-3)
    assert np.abs(out.astype(int) - 77).max() <= 2


def test_reading_a_100_mp_jpeg_stays_in_bounded_memory(big_jpeg):
    """Peak resident memory of a fresh process that reads it (the whole 100 MP photo decoded
    as RGB would be 302 MB, and the unbounded reader peaked at 1.7 GB)."""
    code = ("import resource, sys\n"
            "from synfiqa.images import read_rgb\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "read_rgb(sys.argv[1])\n"
            "print(before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n")
    done = subprocess.run([sys.executable, "-c", code, str(big_jpeg)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    before_kb, peak_kb = map(int, done.stdout.split())
    assert (peak_kb - before_kb) / 1024 < 250, f"reading grew the process by {(peak_kb - before_kb) / 1024:.0f} MB"


def test_pillows_own_limit_is_neither_used_nor_changed(monkeypatch, faces_dir):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    out = read_rgb(faces_dir / "obama_1.jpg")
    assert out.shape == (785, 682, 3)
    assert Image.MAX_IMAGE_PIXELS == 1000
    with pytest.raises(Image.DecompressionBombError):   # everyone else's reads keep their limit
        Image.open(faces_dir / "obama_1.jpg")


@pytest.fixture
def small_limit(monkeypatch):
    monkeypatch.setattr(images, "MAX_DECODED_PIXELS", 10_000)
    return 10_000


def test_exif_rotation_survives_a_reduced_decode(tmp_path, small_limit):
    pixels = np.zeros((200, 400, 3), np.uint8)   # stored landscape, red on the left half
    pixels[:, :200] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(tmp_path / "e.jpg", exif=exif.tobytes(), quality=95)
    out = read_rgb(tmp_path / "e.jpg")
    assert out.shape[0] * out.shape[1] <= small_limit
    assert out.shape[0] > out.shape[1] and out.shape[0] / out.shape[1] == pytest.approx(2, rel=0.05)
    assert out[: out.shape[0] // 3].reshape(-1, 3).mean(0)[0] > 200   # the left half is now the top
    assert out[-out.shape[0] // 3:].reshape(-1, 3).mean(0)[0] < 50


@pytest.mark.parametrize("mode, suffix", [("RGB", ".png"), ("P", ".gif"), ("I;16", ".png"), ("1", ".pbm"),
                                          ("RGBA", ".png"), ("L", ".tif"), ("CMYK", ".jpg")])
def test_formats_decoded_whole_are_reduced_after(tmp_path, small_limit, mode, suffix):
    rng = np.random.default_rng(0)
    base = np.kron(rng.integers(0, 2, (10, 15)), np.ones((30, 30), np.int64))   # 300 x 450 blocks of 0/1
    if mode == "I;16":
        image = Image.fromarray((base * 65535).astype(np.uint16))
    elif mode == "1":
        image = Image.fromarray((base * 255).astype(np.uint8)).convert("1")
    else:
        image = Image.fromarray((base * 255).astype(np.uint8)).convert(mode)
        if mode == "RGBA":
            image.putalpha(255)
    path = tmp_path / f"x{suffix}"
    image.save(path)
    out = read_rgb(path)
    height, width = out.shape[:2]
    assert out.dtype == np.uint8 and out.shape[2] == 3
    assert width * height <= small_limit and width / height == pytest.approx(1.5, rel=0.05)
    # the blocks are still there (a palette reduced as indices or a 16-bit image clipped would not be)
    expected = np.asarray(Image.fromarray((base * 255).astype(np.uint8)).resize((width, height), Image.BOX))
    assert np.abs(out[..., 0].astype(int) - expected).mean() < 40


def test_ppm_and_pgm_photos_are_read_as_rgb(tmp_path, faces_dir):
    photo = Image.open(faces_dir / "macron_1.jpg").convert("RGB")
    photo.save(tmp_path / "colour.ppm")
    photo.convert("L").save(tmp_path / "gray.pgm")
    colour = read_rgb(tmp_path / "colour.ppm")
    assert colour.dtype == np.uint8 and np.array_equal(colour, np.asarray(photo))
    gray = read_rgb(tmp_path / "gray.pgm")
    assert gray.shape == colour.shape and np.array_equal(gray[..., 1], np.asarray(photo.convert("L")))
    # a 16-bit PGM (maxval 65535) is rescaled, not clipped
    values = np.array([[0, 257, 32768, 65535]] * 2, dtype=">u2")
    (tmp_path / "deep.pgm").write_bytes(b"P5\n4 2\n65535\n" + values.tobytes())
    assert read_rgb(tmp_path / "deep.pgm")[0, :, 0].tolist() == [0, 1, 128, 255]


@pytest.mark.parametrize("name", ["a.ppm", "a.pgm", "a.pbm", "a.pnm", "a.PPM", "a.tga", "a.gif", "a.jpe", "a.jfif",
                                  "a.jpg", "a.png", "a.webp", "a.tiff", "a.bmp", "a.qoi", "a.psd"])
def test_every_format_pillow_reads_is_an_image_path(name):
    assert is_image_path(Path("photos") / name)
    assert not is_image_path(Path("photos") / f".{name}")   # hidden files stay ignored


def test_jpeg_2000_is_an_image_path_where_pillow_reads_it():
    if not features.check("jpg_2000"):
        pytest.skip("this Pillow has no OpenJPEG")
    assert is_image_path(Path("a.jp2")) and is_image_path(Path("a.j2k"))


@pytest.mark.parametrize("name", ["notes.txt", "scores.csv", "model.pth", "data.h5", "clip.mpg", "noext"])
def test_files_pillow_cannot_decode_are_not_image_paths(name):
    assert not is_image_path(Path(name))


def test_a_folder_of_ppm_and_pgm_photos_is_collected(tmp_path, faces_dir):
    from synfiqa.images import collect_images

    photo = Image.open(faces_dir / "macron_1.jpg")
    photo.save(tmp_path / "00001.ppm")
    photo.convert("L").save(tmp_path / "00002.pgm")
    (tmp_path / "notes.txt").write_text("not a photo")
    assert [item.name for item in collect_images([tmp_path])] == ["00001.ppm", "00002.pgm"]


@pytest.fixture
def huge_and_normal(tmp_path, faces_dir) -> Path:
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "huge.jpg").write_bytes(jpeg_declaring(HUGE))
    (photos / "obama_1.jpg").write_bytes((faces_dir / "obama_1.jpg").read_bytes())
    return photos


def test_degrade_skips_a_huge_photo_with_its_reason_and_goes_on(huge_and_normal, tmp_path):
    from synfiqa_cli.main import cli

    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["degrade", str(huge_and_normal), "-n", "2", "--out", str(out),
                                      "--no-progress", "--set", CHAIN])
    assert result.exit_code == 0 and result.exception is None, result.output
    assert "Traceback" not in result.output
    rows = {row["key"]: row for row in map(json.loads, (out / "degraded.jsonl").read_text().splitlines())}
    assert rows["huge.jpg#skipped"]["reason"] == "image-too-large"
    assert "20000 x 15000" in rows["huge.jpg#skipped"]["detail"]
    assert rows["obama_1.jpg#0"]["status"] == rows["obama_1.jpg#1"]["status"] == "ok"
    assert Image.open(out / "obama_1" / "1.png").size == (112, 112)
    assert "image-too-large (1)" in result.output


def test_score_skips_a_huge_photo_with_its_reason_and_goes_on(huge_and_normal, tmp_path):
    import torch

    from synfiqa_cli.main import cli
    from synfiqa_plugins.models.iresnet import CRFIQANet

    torch.manual_seed(0)
    checkpoint = tmp_path / "crfiqa_random.pth"
    torch.save({"module." + k: v for k, v in CRFIQANet((1, 1, 1, 1), "linear").state_dict().items()}, checkpoint)
    out = tmp_path / "scores.csv"
    result = CliRunner().invoke(cli, ["score", str(huge_and_normal), "--model", str(checkpoint), "--out", str(out),
                                      "--no-progress"])
    assert result.exit_code == 0 and result.exception is None, result.output
    assert "Traceback" not in result.output
    rows = {row["image"]: row for row in csv.DictReader(out.open())}
    assert rows["huge.jpg"]["quality"] == "" and rows["huge.jpg"]["reason"] == "image-too-large"
    assert rows["obama_1.jpg"]["reason"] == "" and math.isfinite(float(rows["obama_1.jpg"]["quality"]))
    assert "scored 1 of 2 images" in result.output and "image-too-large (1)" in result.output


def test_a_build_skips_a_huge_photo_reads_a_ppm_one_and_goes_on(tmp_path, faces_dir):
    from synfiqa_cli.main import cli

    source = tmp_path / "input"
    (source / "obama").mkdir(parents=True)
    (source / "macron").mkdir()
    (source / "obama" / "obama_1.jpg").write_bytes((faces_dir / "obama_1.jpg").read_bytes())
    (source / "obama" / "huge.jpg").write_bytes(jpeg_declaring(HUGE))
    Image.open(faces_dir / "macron_2.jpg").save(source / "macron" / "macron_2.ppm")   # FERET's format
    out = tmp_path / "out"
    command = ["build", "--out", str(out), "--input", str(source), "--set", "run.degraded=1"]
    for _ in range(2):   # the run, then a rerun that finds it done
        result = CliRunner().invoke(cli, command)
        assert result.exit_code == 0 and result.exception is None, result.output
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    skipped = [(r["identity"], r["source"], r["reason"]) for r in rows if r["status"] == "skipped"]
    assert skipped == [("obama", "huge.jpg", "image-too-large")]
    assert {r["identity"] for r in rows if r["role"] == "reference"} == {"obama", "macron"}
    assert "non-image" not in result.output

"""Awkward files of a real face through synfiqa.images.read_rgb, the detectors, alignment and
the default embedder: each becomes the same face (or a clear reason), and a face below a
detector's minimum size is not reported."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from synfiqa.errors import BadInputError
from synfiqa.images import read_rgb

PHOTO = Path(__file__).parent / "data" / "faces" / "obama_1.jpg"


@pytest.fixture(scope="module")
def models():
    from synfiqa_plugins.models.mtcnn import MTCNNDetector
    from synfiqa_plugins.models.sface import SFaceEmbedder

    return MTCNNDetector(device="cpu"), SFaceEmbedder()


@pytest.fixture(scope="module")
def photo():
    with Image.open(PHOTO) as image:
        return image.convert("RGB")


def embed_main_face(models, image: np.ndarray):
    from synfiqa.align import align_face
    from synfiqa.models import pick_main_face

    detector, embedder = models
    face = pick_main_face(detector.detect(image))
    assert face is not None
    crop = align_face(image, face.landmarks)[0]
    return embedder.embed(torch.from_numpy(crop).permute(2, 0, 1)[None].contiguous())[0]


@pytest.fixture(scope="module")
def reference(models, photo):
    return embed_main_face(models, np.asarray(photo))


def write_variant(kind: str, photo: Image.Image, folder: Path) -> Path:
    rgb = np.asarray(photo)
    if kind == "grayscale":
        photo.convert("L").save(folder / "g.png")
        return folder / "g.png"
    if kind == "rgba":
        photo.convert("RGBA").save(folder / "a.png")
        return folder / "a.png"
    if kind == "cmyk":
        photo.convert("CMYK").save(folder / "c.jpg", quality=95)
        return folder / "c.jpg"
    if kind == "16-bit":   # one channel at 16 bits, as scanners and raw converters write it
        Image.fromarray(rgb[..., 1].astype(np.uint16) * 257).save(folder / "d.png")
        return folder / "d.png"
    if kind == "exif-rotated":   # stored on its side, EXIF orientation 6 turns it upright
        exif = Image.Exif()
        exif[0x0112] = 6
        Image.fromarray(np.ascontiguousarray(np.rot90(rgb, 1))).save(folder / "e.jpg", exif=exif.tobytes(), quality=95)
        return folder / "e.jpg"
    raise ValueError(kind)


# measured with MTCNN + ArcFace alignment + SFace: grayscale 0.90, RGBA 1.000, CMYK 0.9997,
# 16-bit (green channel) 0.87, EXIF-rotated 0.998
@pytest.mark.parametrize("kind, min_cosine", [("grayscale", 0.85), ("rgba", 0.999), ("cmyk", 0.99),
                                              ("16-bit", 0.8), ("exif-rotated", 0.99)])
def test_each_file_kind_gives_the_same_face(kind, min_cosine, models, photo, reference, tmp_path):
    image = read_rgb(write_variant(kind, photo, tmp_path))
    assert image.dtype == np.uint8 and image.shape == (photo.height, photo.width, 3)
    cosine = torch.nn.functional.cosine_similarity(embed_main_face(models, image), reference, dim=0)
    assert cosine > min_cosine, (kind, float(cosine))


def test_a_truncated_file_is_a_reason_not_a_crash(photo, tmp_path):
    photo.save(tmp_path / "full.jpg", quality=90)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 3])
    with pytest.raises(BadInputError) as caught:
        read_rgb(tmp_path / "cut.jpg")
    assert caught.value.reason == "corrupt-image"


def shrunk_onto_canvas(photo: Image.Image, scale: float) -> np.ndarray:
    small = np.asarray(photo.resize((round(photo.width * scale), round(photo.height * scale)), Image.BICUBIC))
    canvas = np.full((200, 200, 3), 128, np.uint8)
    canvas[:small.shape[0], :small.shape[1]] = small[:200, :200]
    return canvas


def test_faces_below_the_detectors_minimum_are_not_reported(models, photo):
    """The face is ~232 px wide in the photo: at scale 0.07 about 16 px, at 0.12 about 28 px."""
    from synfiqa_plugins.models.mtcnn import MTCNNDetector
    from synfiqa_plugins.models.yunet import YuNetDetector

    mtcnn = models[0]   # min_face_size 20
    yunet_20, yunet_10 = YuNetDetector(min_face_size=20), YuNetDetector(min_face_size=10)
    tiny, small = shrunk_onto_canvas(photo, 0.07), shrunk_onto_canvas(photo, 0.12)
    assert mtcnn.detect(tiny) == [] and yunet_20.detect(tiny) == []
    assert len(yunet_10.detect(tiny)) == 1   # there is a face: only the size rule drops it
    assert len(MTCNNDetector(min_face_size=12, device="cpu").detect(tiny)) == 1
    for detector in (mtcnn, yunet_20):
        faces = detector.detect(small)
        assert len(faces) == 1 and faces[0].size >= 20

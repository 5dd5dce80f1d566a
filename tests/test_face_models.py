"""The YuNet detector and the dlib ResNet embedder on the real test photos."""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

FACES = Path(__file__).parent / "data" / "faces"


@pytest.fixture(scope="module")
def photos():
    from synfiqa.images import read_rgb

    return {path.stem: read_rgb(path) for path in sorted(FACES.glob("*.jpg"))}


@pytest.fixture(scope="module")
def mtcnn_faces(photos):
    from synfiqa.models import pick_main_face
    from synfiqa_plugins.models.mtcnn import MTCNNDetector

    detector = MTCNNDetector(device="cpu")
    return {name: pick_main_face(detector.detect(image)) for name, image in photos.items()}


@pytest.fixture(scope="module")
def crops(photos, mtcnn_faces):
    from synfiqa.align import align_face

    return {name: align_face(photos[name], mtcnn_faces[name].landmarks)[0] for name in photos}


def pair_similarities(embeddings: dict[str, torch.Tensor]):
    names = sorted(embeddings)
    matrix = torch.nn.functional.normalize(torch.stack([embeddings[n] for n in names]).double(), dim=1)
    genuine, impostor = {}, {}
    for i, j in itertools.combinations(range(len(names)), 2):
        same = names[i].split("_")[0] == names[j].split("_")[0]
        (genuine if same else impostor)[(names[i], names[j])] = float(matrix[i] @ matrix[j])
    return genuine, impostor


# ---------------------------------------------------------------- YuNet

@pytest.fixture(scope="module")
def yunet():
    from synfiqa_plugins.models.yunet import YuNetDetector

    return YuNetDetector()


def test_yunet_finds_one_face_in_each_photo_where_mtcnn_does(photos, mtcnn_faces, yunet):
    from synfiqa.models import pick_main_face

    for name, image in photos.items():
        faces = yunet.detect(image)
        assert len(faces) == 1, name
        face = pick_main_face(faces)
        assert face.score > 0.8 and face.landmarks.shape == (5, 2) and face.landmarks.dtype == np.float64
        box, reference = face.box, mtcnn_faces[name].box
        inter = np.clip(np.minimum(box[2:], reference[2:]) - np.maximum(box[:2], reference[:2]), 0, None).prod()
        union = np.prod(box[2:] - box[:2]) + np.prod(reference[2:] - reference[:2]) - inter
        assert inter / union > 0.6, name


def test_yunet_landmarks_are_mtcnns_in_the_same_order(photos, mtcnn_faces, yunet):
    """Errors in aligned-crop pixels (the photo scaled so the eyes sit 35.2 px apart, as
    in the 112x112 ArcFace template). Measured: mean 2.7, max 7.4 (a mouth corner)."""
    errors = []
    for name, image in photos.items():
        ours, reference = yunet.detect(image)[0].landmarks, mtcnn_faces[name].landmarks
        to_crop = 35.24 / np.linalg.norm(reference[1] - reference[0])
        errors.append(np.linalg.norm(ours - reference, axis=1) * to_crop)
        assert ours[0, 0] < ours[1, 0] and ours[3, 0] < ours[4, 0]   # image-left first
        assert ours[0, 1] < ours[2, 1] < ours[3, 1]                   # eyes, nose, mouth
    errors = np.array(errors)
    assert errors.mean() < 4.0 and errors.max() < 9.0, errors.round(1)
    assert np.median(errors[:, :3]) < 3.0   # eyes and nose tip agree closest


def test_yunet_shrinks_large_photos_and_maps_back(photos, yunet):
    from synfiqa_plugins.models.yunet import YuNetDetector

    image = photos["sunak_1"]
    small = YuNetDetector(max_side=320).detect(image)[0]
    full = yunet.detect(image)[0]
    iod = np.linalg.norm(full.landmarks[1] - full.landmarks[0])
    assert np.abs(small.landmarks - full.landmarks).max() < 0.25 * iod
    assert np.abs(small.box - full.box).max() < 0.25 * (full.box[2] - full.box[0])


def test_yunet_finds_nothing_in_a_blank_image(yunet):
    assert yunet.detect(np.full((200, 300, 3), 127, np.uint8)) == []
    with pytest.raises(ValueError, match="uint8"):
        yunet.detect(np.zeros((10, 10), np.uint8))


# ---------------------------------------------------------------- dlib ResNet

@pytest.fixture(scope="module")
def dlib_embeddings(crops):
    from synfiqa_plugins.models.dlib_resnet import DlibResNetEmbedder

    embedder = DlibResNetEmbedder()
    names = sorted(crops)
    batch = torch.from_numpy(np.stack([crops[n] for n in names])).permute(0, 3, 1, 2).contiguous()
    out = embedder.embed(batch)
    assert out.shape == (6, 128) and out.dtype == torch.float32
    return embedder, dict(zip(names, out))


def test_dlib_resnet_ranks_every_genuine_pair_above_every_impostor_pair(dlib_embeddings):
    """Measured: genuine 0.975 (Ardern) and 0.933 (Macron), highest impostor 0.876."""
    _, embeddings = dlib_embeddings
    genuine, impostor = pair_similarities(embeddings)
    assert len(genuine) == 2 and len(impostor) == 13
    assert min(genuine.values()) > max(impostor.values())
    # dlib's own rule: the same person within Euclidean distance 0.6
    assert torch.dist(embeddings["ardern_1"], embeddings["ardern_2"]) < 0.6
    assert torch.dist(embeddings["obama_1"], embeddings["sunak_1"]) > 0.6


def test_dlib_resnet_is_deterministic_per_crop_and_takes_other_crop_sizes(dlib_embeddings, crops):
    import cv2

    embedder, embeddings = dlib_embeddings
    one = embedder.embed(torch.from_numpy(crops["obama_1"]).permute(2, 0, 1)[None].contiguous())[0]
    assert torch.allclose(one, embeddings["obama_1"], atol=1e-6)
    bigger = cv2.resize(crops["obama_1"], (224, 224), interpolation=cv2.INTER_CUBIC)
    two = embedder.embed(torch.from_numpy(bigger).permute(2, 0, 1)[None].contiguous())[0]
    assert torch.nn.functional.cosine_similarity(one, two, dim=0) > 0.98
    assert embedder.embed(torch.zeros(0, 3, 112, 112, dtype=torch.uint8)).shape == (0, 128)
    with pytest.raises(ValueError, match="uint8"):
        embedder.embed(torch.zeros(1, 3, 112, 112))


def test_both_are_registered_and_a_bad_file_is_a_clear_error(tmp_path):
    from synfiqa.errors import WeightsNotFoundError
    from synfiqa.registry import Registry
    from synfiqa_plugins.models.dlib_resnet import DlibResNetEmbedder
    from synfiqa_plugins.models.yunet import YuNetDetector

    registry = Registry()
    assert "yunet" in registry.names("detector") and "dlib-resnet" in registry.names("embedder")
    bad = tmp_path / "dlib_face_recognition_resnet_model_v1.dat"
    bad.write_bytes(b"\0" * 100)
    with pytest.raises(WeightsNotFoundError, match="dlib-resnet"):
        DlibResNetEmbedder(path=str(bad))
    bad_onnx = tmp_path / "face_detection_yunet_2023mar_int8bq.onnx"
    bad_onnx.write_bytes(b"\0" * 100)
    with pytest.raises(WeightsNotFoundError, match="yunet"):
        YuNetDetector(path=str(bad_onnx))

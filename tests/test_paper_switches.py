"""The faithful switches of issue 16 (docs/method.md section 11), each checked against an
independent transcription of the original's step (oufuzhao/MR-FIQA), written here from the
original's code and not from synfiqa's: JPEG saving, the alignment's direction, the
label-ordering bug, the glasses filter's dlib eye centres, FaceNet's 160 px input, the DDPM's
per-image min-max."""
from __future__ import annotations

import io
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from synfiqa.config import load_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FACES = Path(__file__).parent / "data" / "faces"
PHOTOS = sorted(FACES.glob("*.jpg"))
# the original's reference_landmark() (align_trans.py), as it writes it
ORIGINAL_TEMPLATE = np.array([[38.29459953, 51.69630051], [73.53179932, 51.50139999], [56.02519989, 71.73660278],
                              [41.54930115, 92.3655014], [70.72990036, 92.20410156]])


@pytest.fixture(scope="module")
def landmarks():
    """MTCNN's five landmarks of the main face of each test photo."""
    from synfiqa.context import RunContext
    from synfiqa.images import read_rgb
    from synfiqa.models import pick_main_face
    from synfiqa.registry import get_registry

    detector = RunContext(load_config(), get_registry()).model("detector")
    found = {}
    for path in PHOTOS:
        image = read_rgb(path)
        found[path.name] = (image, np.asarray(pick_main_face(detector.detect(image)).landmarks, dtype=np.float64))
    return found


# ---------------------------------------------------------------- JPEG


def test_original_jpeg_settings_give_pillows_default_bytes(tmp_path):
    from PIL import JpegImagePlugin

    from synfiqa.images import encode_jpeg

    pixels = np.random.default_rng(0).integers(0, 256, (112, 112, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "original.jpg")   # the original: .save(name), no options
    assert encode_jpeg(pixels, 75, "4:2:0") == (tmp_path / "original.jpg").read_bytes()
    default = encode_jpeg(pixels, 95)
    assert default != (tmp_path / "original.jpg").read_bytes()
    assert JpegImagePlugin.get_sampling(Image.open(io.BytesIO(default))) == 0          # 4:4:4
    assert JpegImagePlugin.get_sampling(Image.open(tmp_path / "original.jpg")) == 2    # 4:2:0
    with pytest.raises(ValueError, match="subsampling"):
        encode_jpeg(pixels, 75, "4:1:1")


# ---------------------------------------------------------------- alignment


def cp2tform_original(landmarks: np.ndarray, template: np.ndarray) -> np.ndarray:
    """matlab_cp2tform.get_similarity_transform_for_cv2(src, dst, reflective=True) transcribed:
    findNonreflectiveSimilarity solves [x y 1 0; y -x 0 1] r = [u; v] (x, y the template, u, v
    the landmarks) and inverts; findSimilarity also fits the x-mirrored template, and compares
    both fits against the template array after mirroring it in place (xyR = xy aliases)."""
    uv = np.float32(landmarks)
    xy = np.float32(template).copy()

    def nonreflective(uv, xy):
        x, y = xy[:, :1], xy[:, 1:]
        m = len(xy)
        matrix = np.vstack([np.hstack([x, y, np.ones((m, 1)), np.zeros((m, 1))]),
                            np.hstack([y, -x, np.zeros((m, 1)), np.ones((m, 1))])])
        rhs = np.vstack([uv[:, :1], uv[:, 1:]])
        sc, ss, tx, ty = np.linalg.lstsq(matrix, rhs, rcond=None)[0].ravel()
        inverse = np.array([[sc, -ss, 0], [ss, sc, 0], [tx, ty, 1]])
        forward = np.linalg.inv(inverse)
        forward[:, 2] = [0, 0, 1]
        return forward

    def forward_points(trans, points):
        return (np.hstack([points, np.ones((len(points), 1))]) @ trans)[:, :2]

    trans1 = nonreflective(uv, xy)
    xy[:, 0] = -xy[:, 0]                        # the in-place mirroring
    trans2 = nonreflective(uv, xy) @ np.array([[-1, 0, 0], [0, 1, 0], [0, 0, 1]])
    norm1 = np.linalg.norm(forward_points(trans1, uv) - xy)
    norm2 = np.linalg.norm(forward_points(trans2, uv) - xy)
    chosen = trans1 if norm1 <= norm2 else trans2
    return chosen[:, :2].T                      # cvt_tform_mat_for_cv2


def test_template_to_landmarks_is_the_originals_transform(landmarks):
    from synfiqa.align import ARCFACE_TEMPLATE_112, template_transform

    cases = [points for _, points in landmarks.values()]
    rng = np.random.default_rng(1)
    for _ in range(300):   # noisy faces of any size and place, a third with the eyes swapped (mirrored fits win)
        points = ARCFACE_TEMPLATE_112 * rng.uniform(0.5, 4) + rng.normal(0, rng.uniform(0, 30), (5, 2)) + rng.uniform(0, 400, 2)
        cases.append(points[[1, 0, 2, 4, 3]] if rng.random() < 0.33 else points)
    mirrored = 0
    for points in cases:
        expected = cp2tform_original(points, ORIGINAL_TEMPLATE)
        got = template_transform(points, 112, "template-to-landmarks")
        # the original's template digits (38.29459953) round to another float32 than 38.2946:
        # 4e-6 px, which moves the matrix by up to 1e-4
        assert np.allclose(got, expected, atol=1e-4, rtol=0)
        mirrored += np.linalg.det(expected[:, :2]) < 0
    assert mirrored > 0   # the mirrored alternative was exercised
    from synfiqa.errors import BadInputError

    with pytest.raises(BadInputError, match="one point"):   # the original's inverse fails there
        template_transform(np.full((5, 2), 40.0), 112, "template-to-landmarks")


def test_template_to_landmarks_crops_as_the_original_and_shows_the_face_larger(landmarks):
    import cv2

    from synfiqa.align import align_face, template_transform

    ratios = []
    for name, (image, points) in landmarks.items():
        crop, _ = align_face(image, points, 112, "template-to-landmarks")
        original = cv2.warpAffine(image, cp2tform_original(points, ORIGINAL_TEMPLATE), (112, 112))
        difference = np.abs(crop.astype(int) - original.astype(int))
        assert difference.mean() < 0.6 and np.percentile(difference, 99) <= 3, name  # bilinear rounding only
        scale = lambda m: np.sqrt(abs(np.linalg.det(m[:, :2])))   # noqa: E731
        ratios.append(scale(template_transform(points, 112, "template-to-landmarks"))
                      / scale(template_transform(points, 112)))
    assert all(1.0 < r < 1.06 for r in ratios), ratios   # the face fills more of the original's crop


# ---------------------------------------------------------------- the label-ordering bug


def test_label_order_bug_by_hand():
    from synfiqa.mr_label import original_label_sources

    keys = [f"/{i}/{k}.jpg" for i in ("1", "2", "10") for k in (0, 1)]
    # generation: sorted names 1, 10, 2; written: natural order 1, 2, 10
    assert original_label_sources(keys) == {"/1/0.jpg": "/1/0.jpg", "/1/1.jpg": "/1/1.jpg",
                                            "/2/0.jpg": "/10/0.jpg", "/2/1.jpg": "/10/1.jpg",
                                            "/10/0.jpg": "/2/0.jpg", "/10/1.jpg": "/2/1.jpg"}
    # upper case sorts first in Python, not in the natural order; sample 10 after 9 in both
    keys = ["/B/0.jpg", "/a/0.jpg", "/a/9.jpg", "/a/10.jpg"]
    assert original_label_sources(keys) == {"/a/0.jpg": "/B/0.jpg", "/a/9.jpg": "/a/0.jpg",
                                            "/a/10.jpg": "/a/9.jpg", "/B/0.jpg": "/a/10.jpg"}
    zero_padded = [f"/{i:05d}/{k}.jpg" for i in range(12) for k in range(12)]   # the original's own names
    assert all(path == source for path, source in original_label_sources(zero_padded).items())


def original_quality_scores(save_root: Path, img_list: list[str], scores: list[float]) -> dict[str, float]:
    """quality_labeling's writing loop transcribed: the scores in img_list's order (generation),
    written against DICT_FR's keys, which follow get_deg_ref_files(sort=True): os.walk, then
    the alphanum_key sort of full paths."""
    deg_files = []
    for dirpath, _, filenames in os.walk(save_root / "data"):
        deg_files += [os.path.join(dirpath, f) for f in filenames if "Ref" not in f]

    def alphanum_key(key):
        return [int(text) if text.isdigit() else text.lower() for text in re.split("([0-9]+)", key)]

    deg_files = sorted(deg_files, key=alphanum_key)
    fr_keys = ["/".join(path.split("/")[-2:]) for path in deg_files]
    return {f"/{name}": score for name, score in zip(fr_keys, scores)}


def test_label_order_switch_writes_what_the_original_writes(tmp_path):
    from synfiqa.stages.s5_annotate import label_order_lines, labels_as_written

    identities = [str(i) for i in range(1, 13)] + ["Zed", "alpha"]
    for identity in identities:
        (tmp_path / "data" / identity).mkdir(parents=True)
        for k in range(12):
            (tmp_path / "data" / identity / f"{k}.jpg").write_bytes(b"")
        (tmp_path / "data" / identity / "Ref-0.jpg").write_bytes(b"")
    img_list = [f"{identity}/{k}.jpg" for identity in sorted(identities) for k in range(12)]   # generation order
    scores = np.random.default_rng(2).random(len(img_list)).tolist()
    quality = {f"/{name}": score for name, score in zip(img_list, scores)}

    expected = original_quality_scores(tmp_path, img_list, scores)
    config = load_config(None, ["annotate.label_order=original-bug"])
    written, record = labels_as_written(config, quality)
    assert written == expected
    moved = sum(1 for key in quality if expected[key] != quality[key])
    assert record == {"label_order": "original-bug", "labels_moved": moved, "labels": len(quality)} and moved > 100
    assert "WARNING" in label_order_lines(record)[0] and f"{moved} of {len(quality)}" in label_order_lines(record)[0]
    assert labels_as_written(load_config(), quality) == (quality, {})


# ---------------------------------------------------------------- glasses: the original's eye centres


def original_glasses_measure(gray: np.ndarray) -> float | None:
    """Utilities/eyeglass_detector.py transcribed: dlib's detector (1 upsampling), the first face,
    the 5-point predictor, get_centers, get_aligned_face and judge_eyeglass's measure."""
    import cv2
    import dlib

    from synfiqa.weights import locate

    predictor = dlib.shape_predictor(str(next(iter(locate("dlib-shape-5").files.values()))))
    rects = dlib.get_frontal_face_detector()(gray, 1)
    if len(rects) == 0:
        return None
    shape = predictor(gray, rects[0])
    points = np.array([[shape.part(i).x, shape.part(i).y] for i in range(shape.num_parts)], dtype="int")
    x, y = points[0:4].T
    k, b = np.linalg.lstsq(np.vstack([x, np.ones(len(x))]).T, y, rcond=None)[0]
    x_left = (points[2][0] + points[3][0]) / 2
    x_right = (points[0][0] + points[1][0]) / 2
    left = np.array([np.int32(x_left), np.int32(x_left * k + b)])
    right = np.array([np.int32(x_right), np.int32(x_right * k + b)])
    centre = ((left[0] + right[0]) * 0.5, (left[1] + right[1]) * 0.5)
    dx, dy = right[0] - left[0], right[1] - left[1]
    matrix = cv2.getRotationMatrix2D(centre, np.degrees(np.arctan2(dy, dx)), 128 / np.sqrt(dx * dx + dy * dy))
    matrix[0, 2] += 128 - centre[0]
    matrix[1, 2] += 128 - centre[1]
    face = cv2.warpAffine(gray, matrix, (256, 256))
    face = cv2.GaussianBlur(face, (11, 11), 0)
    edges = cv2.threshold(cv2.convertScaleAbs(cv2.Sobel(face, cv2.CV_64F, 0, 1, ksize=-1)), 0, 255,
                          cv2.THRESH_BINARY + cv2.THRESH_OTSU)[1]
    d = len(edges) * 0.5
    roi_1 = edges[np.int32(d * 3 / 4):np.int32(d * 3 / 4) + np.int32(d * 2 / 4),
                  np.int32(d * 6 / 7):np.int32(d * 6 / 7) + np.int32(d * 2 / 7)]
    y2, h2, w2 = np.int32(d * 8 / 7), np.int32(d / 2), np.int32(d / 2)
    roi_2 = np.hstack([edges[y2:y2 + h2, np.int32(d / 4):np.int32(d / 4) + w2],
                       edges[y2:y2 + h2, np.int32(d * 5 / 4):np.int32(d * 5 / 4) + w2]])
    measure_1 = sum(sum(roi_1 / 255)) / (roi_1.shape[0] * roi_1.shape[1])
    measure_2 = sum(sum(roi_2 / 255)) / (roi_2.shape[0] * roi_2.shape[1])
    return measure_1 * 0.3 + measure_2 * 0.7


def test_glasses_with_dlib_eyes_measures_as_the_original(landmarks):
    import cv2

    from synfiqa.filtering import FaceSubject
    from synfiqa_plugins.filters.glasses import GlassesFilter

    glasses = GlassesFilter(eyes="dlib")
    for path in PHOTOS:
        bgr = cv2.imread(str(path))   # the original reads with OpenCV
        expected = original_glasses_measure(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))
        rgb = np.ascontiguousarray(bgr[..., ::-1])
        decision = glasses.judge([FaceSubject(path.stem, path.name, rgb, landmarks[path.name][1])])[0]
        assert expected is not None and decision.value == pytest.approx(expected, abs=1e-12), path.name
        assert decision.keep == (expected <= 0.15)
    blank = np.full((200, 200, 3), 128, dtype=np.uint8)   # no face for dlib: kept, as the original keeps it
    decision = glasses.judge([FaceSubject("blank", "blank.png", blank, np.zeros((5, 2)))])[0]
    assert decision.keep and decision.value is None and "dlib" in decision.reason
    with pytest.raises(Exception, match="eyes must be one of"):
        GlassesFilter(eyes="mediapipe")


# ---------------------------------------------------------------- FaceNet at 160 px, the full quirk


def test_facenet_paper_quirk_at_160_is_the_originals_input(tmp_path, monkeypatch):
    from facenet_pytorch import InceptionResnetV1
    from torchvision import transforms as T

    from synfiqa_plugins.models.facenet import FaceNetEmbedder

    torch.manual_seed(0)
    reference = InceptionResnetV1(pretrained=None, classify=False).eval()
    torch.save(reference.state_dict(), tmp_path / "20180402-114759-vggface2.pt")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    crops = torch.randint(0, 256, (2, 3, 112, 112), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)
    # annotation/utils.py get_id_feats: T.Compose([T.Resize((160, 160)), T.ToTensor()]) on the opened image
    transform = T.Compose([T.Resize((160, 160)), T.ToTensor()])
    inputs = torch.stack([transform(Image.fromarray(c.permute(1, 2, 0).numpy())) for c in crops])
    with torch.no_grad():
        expected = reference(inputs)
    paper = FaceNetEmbedder(path=str(tmp_path / "20180402-114759-vggface2.pt"), device="cpu", input_size=160,
                            paper_input_quirk=True)
    assert torch.equal(paper.preprocess(crops), inputs)
    assert torch.allclose(paper.embed(crops), expected, atol=1e-5)


# ---------------------------------------------------------------- the DDPM's per-image min-max


def test_ddpm_minmax_is_the_originals_save_image():
    from torchvision.utils import save_image

    from synfiqa_plugins.generators.ddpm.unet import to_uint8

    images = torch.randn(4, 3, 24, 24, generator=torch.Generator().manual_seed(4)) * 0.6
    images[1] = images[1] * 0.01 + 0.3   # a nearly flat image: the stretch is large
    ours = to_uint8(images, minmax_per_image=True)
    for index in range(len(images)):
        buffer = io.BytesIO()   # generate_pseudo_ID.py: utils.save_image(sample[i].unsqueeze(0), path, nrow=1, normalize=True)
        save_image(images[index].unsqueeze(0), buffer, format="png", nrow=1, normalize=True)
        assert np.array_equal(np.asarray(Image.open(buffer)), ours[index])

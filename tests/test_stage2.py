"""Stage 2 in a build: the plan, the folder and echo backends, the detector crop, the backend
contract (third-party backends, misbehaving ones), resume after kill -9 and shards."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner
from scipy.stats import spearmanr

from synfiqa.align import ARCFACE_TEMPLATE_112
from synfiqa.config import load_config
from synfiqa.errors import PluginError
from synfiqa.models import DetectedFace
from synfiqa.stages.build import build
from synfiqa.stages.s3_synthesize import detector_crop, detector_square
from synfiqa.synthesis import sharpness, split_photos
from synfiqa_cli.main import cli
from tests.test_build import read_manifest, tree_bytes

ECHO = ['stage2.backend="echo"', "run.references=2", "run.degraded=8"]
QUIET = dict(echo=lambda *_: None)


rows_of = read_manifest


@pytest.fixture(scope="module")
def folder_build(tmp_path_factory):
    out = tmp_path_factory.mktemp("stage2") / "folder"
    summary = build(load_config(None, ["run.degraded=6"]), out, **QUIET)
    return out, summary


@pytest.fixture(scope="module")
def echo_build(tmp_path_factory):
    out = tmp_path_factory.mktemp("stage2") / "echo"
    summary = build(load_config(None, ECHO), out, **QUIET)
    return out, summary


# ------------------------------------------------------------ the split rule


def photo(key, yaw, sharp):
    return SimpleNamespace(key=key, abs_yaw=yaw, sharpness=sharp)


def test_split_prefers_frontal_then_sharp_and_keeps_the_sources_disjoint():
    photos = [photo("p0", 30.0, 500.0), photo("p1", 5.0, 100.0), photo("p2", 12.0, 300.0),
              photo("p3", 19.9, 200.0), photo("p4", 2.0, 50.0), photo("p5", 45.0, 900.0)]
    # frontal (|yaw| <= 20): p2 (300), p3 (200), p1 (100), p4 (50); then p5, p0. n // 2 = 3 references.
    refs, sources = split_photos(photos, references=10)
    assert [p.key for p in refs] == ["p2", "p3", "p1"]
    assert [p.key for p in sources] == ["p0", "p4", "p5"]
    refs, sources = split_photos(photos, references=1)
    assert [p.key for p in refs] == ["p2"] and len(sources) == 5
    one = [photo("only", 3.0, 10.0)]
    assert split_photos(one, 10) == (tuple(one), tuple(one))
    two = [photo("b", 1.0, 5.0), photo("a", 1.0, 5.0)]   # a tie goes to the key
    assert [p.key for p in split_photos(two, 10)[0]] == ["a"]


def test_sharpness_is_the_variance_of_the_laplacian():
    crop = np.zeros((5, 5, 3), np.uint8)
    crop[2, 2] = 255            # one white dot: luma 255 (0.299 + 0.587 + 0.114 = 1)
    # interior 3x3 Laplacian: -4*255 at the centre, +255 at its four neighbours, 0 at the corners
    values = np.array([0, 255, 0, 255, -1020, 255, 0, 255, 0], dtype=np.float64)
    assert sharpness(crop) == pytest.approx(values.var())


# ------------------------------------------------------------ the detector crop


def test_detector_square_raises_the_top_to_the_forehead_and_squares():
    landmarks = np.array([[40.0, 60.0], [60.0, 60.0], [50.0, 70.0], [42.0, 80.0], [58.0, 80.0]])
    face = DetectedFace(box=np.array([30.0, 50.0, 70.0, 100.0]), score=1.0, landmarks=landmarks)
    # forehead: 60 - |60 - 80| = 40 < 50, so the top moves to 40: a 40 x 60 box, squared to 60
    assert detector_square(face) == pytest.approx((50.0, 70.0, 60.0))
    low = DetectedFace(box=np.array([30.0, 30.0, 70.0, 100.0]), score=1.0, landmarks=landmarks)
    assert detector_square(low) == pytest.approx((50.0, 65.0, 70.0))


def test_detector_crop_maps_the_square_onto_the_crop_with_a_canvas():
    landmarks = np.array([[40.0, 60.0], [60.0, 60.0], [50.0, 70.0], [42.0, 80.0], [58.0, 80.0]])
    face = DetectedFace(box=np.array([30.0, 50.0, 70.0, 100.0]), score=1.0, landmarks=landmarks)
    image = np.zeros((200, 200, 3), np.uint8)
    image[40:100, 20:80] = 200   # exactly the 60 x 60 square
    crop, points, matrix = detector_crop(image, face, 112, margin=0.25)
    assert crop.shape == (168, 168, 3)   # 112 + 2 * 28
    # the square [20, 80] x [40, 100] lands on [28, 140] in the canvas (scale 112 / 60)
    assert np.allclose(matrix, [[112 / 60, 0, 84 - 112 / 60 * 50], [0, 112 / 60, 84 - 112 / 60 * 70]])
    assert np.allclose(points[0], [28 + (40 - 20) * 112 / 60, 28 + (60 - 40) * 112 / 60])
    assert crop[30:138, 30:138].min() == 200 and crop[:26].max() == 0 and crop[:, 142:].max() == 0


# ------------------------------------------------------------ the folder backend


def test_folder_references_and_samples_come_from_disjoint_photos(folder_build):
    out, summary = folder_build
    rows = [r for r in rows_of(out) if r["status"] == "ok"]
    for identity in ("ardern", "macron"):                 # two photos each
        mine = [r for r in rows if r["identity"] == identity]
        refs = {r["source"] for r in mine if r["role"] == "reference"}
        samples = {r["source"] for r in mine if r["role"] == "degraded"}
        assert len(refs) == 1 and len(samples) == 1 and not refs & samples
        assert not any(r.get("circular") for r in mine)
        assert not any(key.startswith("control.") for r in mine for key in r)   # real photos follow no plan
    for identity in ("obama", "sunak"):                   # one photo: circular, and said so
        degraded = [r for r in rows if r["identity"] == identity and r["role"] == "degraded"]
        assert degraded and all(r["circular"] for r in degraded)
    assert summary["identities_circular"] == 2 and summary["samples_circular"] == 12
    assert summary["stage2_backend"] == "folder"


def test_folder_reference_is_the_sharper_frontal_photo(folder_build):
    out, _ = folder_build
    rows = rows_of(out)
    ref = next(r for r in rows if r["identity"] == "ardern" and r["role"] == "reference")
    sample = next(r for r in rows if r["identity"] == "ardern" and r["role"] == "degraded")
    assert ref["params"]["pose.abs_yaw"] <= 20 and sample["source"] != ref["source"]
    from synfiqa.faces import detect_and_align
    from synfiqa.generation import embedded_faces_dir
    from synfiqa.images import read_rgb
    from synfiqa.registry import get_registry

    detector = get_registry().create("detector", "mtcnn")
    sharp = {key: sharpness(detect_and_align(read_rgb(embedded_faces_dir() / key), detector).crop)
             for key in ("ardern_1.jpg", "ardern_2.jpg")}
    assert ref["source"] == max(sharp, key=sharp.get)


# ------------------------------------------------------------ the echo backend


def test_echo_records_every_control_and_its_yaw_varies_within_an_identity(echo_build):
    out, summary = echo_build
    rows = [r for r in rows_of(out) if r["status"] == "ok"]
    controls = {"control.yaw", "control.pitch", "control.roll", "control.jaw", "control.expression_norm",
                "control.scale", "control.offset_x", "control.offset_y", "control.light_ambient",
                "control.light_directional", "control.light_energy", "control.light_frontal",
                "control.light_direction_x", "control.light_direction_y", "control.light_direction_z",
                "control.prompt", "control.scene", "control.source"}
    for row in rows:
        assert controls <= set(row), sorted(controls - set(row))
    degraded = [r for r in rows if r["role"] == "degraded"]
    for identity in ("ardern", "macron", "obama", "sunak"):
        yaws = [r["params"]["pose.abs_yaw"] for r in degraded if r["identity"] == identity]
        assert max(yaws) - min(yaws) > 8, (identity, yaws)
    planned = [abs(r["control.yaw"]) for r in degraded]
    measured = [r["params"]["pose.abs_yaw"] for r in degraded]
    assert spearmanr(planned, measured)[0] > 0.6
    refs = [r for r in rows if r["role"] == "reference"]
    assert all(abs(r["control.yaw"]) < 5 and r["control.prompt"].startswith("a high-resolution") for r in refs)
    assert all(r["control.prompt"].startswith("a photo of a human face") for r in degraded)
    assert summary["references"] == 8 and summary["degraded"] == 32


def test_echo_turns_the_face_the_planned_way():
    """Positive planned yaw turns the nose to the image's right: the nose tip moves right of
    the eyes' midpoint (measured by the detector on the warped photo)."""
    from synfiqa.generation import embedded_faces_dir
    from synfiqa.images import read_rgb
    from synfiqa.registry import get_registry
    from synfiqa.stages.s3_synthesize.plan import SyntheticBank
    from dataclasses import replace
    from synfiqa_plugins.stage2.echo import EchoBackend

    detector = get_registry().create("detector", "mtcnn")
    image = read_rgb(embedded_faces_dir() / "sunak_1.jpg")
    face = max(detector.detect(image), key=lambda f: f.size)
    source = SimpleNamespace(image=image, face=face, key="sunak_1.jpg")
    base = SyntheticBank().reference_specs(1)[0]
    offsets = {}
    for yaw in (-35.0, 0.0, 35.0):
        warped = EchoBackend(size=256).warp([source], [replace(base, pose=(yaw, 0.0, 0.0, 0.0))])[0]
        points = max(detector.detect(warped), key=lambda f: f.size).landmarks
        offsets[yaw] = points[2, 0] - points[:2, 0].mean()
    assert offsets[-35.0] < offsets[0.0] - 3 < offsets[35.0] - 6


def test_faithful_prompts_reach_the_manifest(tmp_path):
    out = tmp_path / "faithful"
    build(load_config(None, ['stage2.backend="echo"', "run.references=2", "run.degraded=4", "stage2.faithful=true",
                             'annotate.chain=["fr"]', "degrade.chain=[]"]), out, **QUIET)
    reference_prompt = ("a high-resolution clear frontal face image with natural expression under good "
                        "lighting condition without any occlusion")
    for row in rows_of(out):
        if row["status"] != "ok":
            continue
        # the original's list: D reference prompts then D scene prompts, indexed by R + k
        scene = row["role"] == "degraded" and 2 + row["index"] >= 4
        assert (row["control.prompt"] != reference_prompt) == scene, row["path"]


def test_a_deca_bank_file_feeds_the_plan(tmp_path):
    def entry(yaw_radians, scale):
        return {"deca": {"pose": [[0.0, yaw_radians, 0.0, 0.1, 0.0, 0.0]], "light": [[[1.0, 1.0, 1.0]] * 9],
                         "exp": [[0.0] * 50], "tform": [[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]],
                         "cam": [[scale, 0.0, 0.0]]}}

    bank = {"REF": {"r0": entry(0.0, 8.0)}, "DEG": {"d0": entry(0.5, 8.0), "d1": entry(-0.7, 6.0)}}
    path = tmp_path / "DICT_DECA_DEG_REF.json"
    path.write_text(json.dumps(bank))
    out = tmp_path / "deca"
    build(load_config(None, ['stage2.backend="echo"', "run.references=1", "run.degraded=2",
                             f"stage2.bank={json.dumps(str(path))}", 'annotate.chain=["fr"]', "degrade.chain=[]"]),
          out, **QUIET)
    rows = [r for r in rows_of(out) if r["status"] == "ok" and r["identity"] == "sunak"]
    by_source = {r["control.source"]: r for r in rows}
    assert set(by_source) == {"REF/r0", "DEG/d0", "DEG/d1"}
    assert by_source["DEG/d0"]["control.yaw"] == pytest.approx(np.degrees(0.5))
    assert by_source["DEG/d1"]["control.scale"] == pytest.approx(6.0 / 8.0)


def test_a_missing_bank_file_is_a_config_error(tmp_path):
    result = CliRunner().invoke(cli, ["build", "--out", str(tmp_path / "x"), "--set",
                                      f'stage2.bank="{tmp_path / "nowhere.json"}"'])
    assert result.exit_code == 2 and "stage2.bank names no file" in result.output
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------ resume and shards


def test_echo_build_resumes_byte_identical_after_kill_9(echo_build, tmp_path):
    out, _ = echo_build
    killed = tmp_path / "killed"
    arguments = [arg for item in ECHO for arg in ("--set", item)]
    process = subprocess.Popen([sys.executable, "-m", "synfiqa_cli", "build", "--out", str(killed), "--no-progress",
                                *arguments], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    records = killed / ".synfiqa" / "identities"
    deadline = time.time() + 180
    while time.time() < deadline and not (records.is_dir() and any(records.glob("*.json"))):
        if process.poll() is not None:
            pytest.fail(f"build ended before it could be killed: {process.stderr.read().decode()}")
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = len(list(records.glob("*.json")))
    assert 1 <= done < 4, "the kill should land mid-build"
    result = CliRunner().invoke(cli, ["build", "--out", str(killed), *arguments])
    assert result.exit_code == 0, result.output
    assert f"({done} already built)" in result.output
    assert tree_bytes(killed) == tree_bytes(out)


def test_echo_shards_merge_into_the_same_dataset(echo_build, tmp_path):
    out, _ = echo_build
    sharded = tmp_path / "sharded"
    config = load_config(None, ECHO)
    for index in range(2):
        build(config, sharded, shard=(index, 2), **QUIET)
    build(config, sharded, **QUIET)
    assert tree_bytes(sharded) == tree_bytes(out)


# ------------------------------------------------------------ the contract


def registry_with_backend(tmp_path, monkeypatch, source: str):
    from synfiqa.plugins import SynfiqaPluginManager
    from synfiqa.registry import Registry

    import importlib

    name = f"third_party_backend_{tmp_path.name}"   # one module per test: sources differ
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module(name)
    manager = SynfiqaPluginManager()
    manager.register_module(module, "third-party", "1.0")
    manager.load_missing_builtins()
    return Registry(manager)


MIRROR = """
    from synfiqa import hookimpl
    from synfiqa.synthesis import Rendered

    class Mirror:
        '''{doc}'''
        def render(self, identity, plan, context):
            photo = identity.photos[0]
            {body}

    @hookimpl
    def register_stage2_backends(register):
        register("mirror", Mirror)
"""


def mirror(body: str) -> str:
    return MIRROR.format(doc="every image is the first photo mirrored", body=body)


def test_a_third_party_backend_builds_with_public_helpers_only(tmp_path, monkeypatch):
    registry = registry_with_backend(tmp_path, monkeypatch, mirror(
        "for spec in plan:\n"
        "                yield Rendered(spec.role, spec.index, photo.image[:, ::-1].copy(), source='mirrored',"
        " spec=spec)"))
    assert registry.get("stage2-backend", "mirror").distribution == "third-party"
    out = tmp_path / "out"
    config = load_config(None, ['stage2.backend="mirror"', "run.references=1", "run.degraded=2",
                                'annotate.chain=["fr"]'], registry)
    summary = build(config, out, registry=registry, **QUIET)
    rows = [r for r in rows_of(out) if r["status"] == "ok"]
    assert summary["references"] == 4 and summary["degraded"] == 8
    assert all(r["source"] == "mirrored" and "control.yaw" in r for r in rows)
    assert all(r["plugins"]["stage2"].startswith("mirror (third-party") for r in rows)
    assert summary["identities_circular"] == 4   # its references and samples share their source


def test_degrading_the_detector_crop_then_aligning_matches_the_aligned_crop(tmp_path, monkeypatch):
    """With no degradation, a sample made in the original's order (detector crop, then align)
    is its reference again, up to the two resamplings, with no black corners; the other order
    (stage2.degrade_on = "aligned-crop") gives the reference's bytes before JPEG exactly."""
    registry = registry_with_backend(tmp_path, monkeypatch, mirror(
        "for spec in plan:\n"
        "                yield Rendered(spec.role, spec.index, photo.image, source=photo.key, face=photo.face)"))
    from PIL import Image

    for order in ("detector-crop", "aligned-crop"):
        out = tmp_path / order
        config = load_config(None, ['stage2.backend="mirror"', "run.references=1", "run.degraded=1",
                                    "degrade.chain=[]", 'annotate.chain=["fr"]', f'stage2.degrade_on="{order}"'],
                             registry)
        build(config, out, registry=registry, **QUIET)
        for identity in ("ardern", "macron", "obama", "sunak"):
            ref = np.asarray(Image.open(out / "data" / identity / "Ref-0.jpg"), dtype=np.float64)
            sample = np.asarray(Image.open(out / "data" / identity / "0.jpg"), dtype=np.float64)
            difference = np.abs(ref - sample)[4:-4, 4:-4].mean()
            if order == "aligned-crop":
                assert difference == 0, (identity, difference)
            else:  # two resamplings blur a little; a crop one pixel off differs much more
                shifted = np.abs(ref - np.roll(ref, 1, axis=1))[4:-4, 4:-4].mean()
                assert difference < 0.75 * shifted, (identity, difference, shifted)
            assert (sample.sum(-1) < 15).mean() <= (ref.sum(-1) < 15).mean() + 0.005, "black corners"


@pytest.mark.parametrize("body, message", [
    ("yield Rendered('degraded', 99, photo.image, source='x')", "does not hold"),
    ("yield Rendered('reference', 0, photo.image, source='x')\n"
     "            yield Rendered('reference', 0, photo.image, source='x')", "twice"),
    ("yield photo.image", "not synfiqa.synthesis.Rendered"),
])
def test_a_misbehaving_backend_is_named(tmp_path, monkeypatch, body, message):
    registry = registry_with_backend(tmp_path, monkeypatch, mirror(body))
    config = load_config(None, ['stage2.backend="mirror"', "run.references=1", "run.degraded=2",
                                'annotate.chain=["fr"]'], registry)
    with pytest.raises(PluginError, match=message) as error:
        build(config, tmp_path / "out", registry=registry, **QUIET)
    assert "'mirror'" in str(error.value)


def test_an_image_without_a_face_is_a_skipped_row(tmp_path, monkeypatch):
    registry = registry_with_backend(tmp_path, monkeypatch, mirror(
        "import numpy as np\n"
        "            for spec in plan:\n"
        "                image = photo.image if spec.role == 'reference' or spec.index != 1 else "
        "np.full((200, 200, 3), 127, np.uint8)\n"
        "                yield Rendered(spec.role, spec.index, image, source=photo.key)"))
    config = load_config(None, ['stage2.backend="mirror"', "run.references=1", "run.degraded=3",
                                'annotate.chain=["fr"]'], registry)
    summary = build(config, tmp_path / "out", registry=registry, **QUIET)
    skipped = [r for r in rows_of(tmp_path / "out") if r["status"] == "skipped"]
    assert {(r["role"], r["index"], r["reason"]) for r in skipped} == {("degraded", 1, "no-face")}
    assert len(skipped) == 4 and summary["images_skipped"] == {"degraded: no-face": 4}
    assert not any((tmp_path / "out" / "data").glob("*/1.jpg"))


COUNTING = """
    import os
    from pathlib import Path
    from synfiqa import hookimpl
    from synfiqa.synthesis import Rendered

    class Counting:
        '''an expensive backend: every image it makes is logged; it dies after CRASH_AFTER images'''
        stores_images = True

        def render(self, identity, plan, context):
            photo = identity.photos[0]
            log_path = Path(os.environ["COUNTING_LOG"])
            for spec in plan:
                with log_path.open("a") as log:
                    log.write(f"{identity.name} {spec.role} {spec.index}\\n")
                made = len(log_path.read_text().splitlines())
                if made > int(os.environ.get("CRASH_AFTER", "1000000")):
                    raise RuntimeError("the GPU went away")
                yield Rendered(spec.role, spec.index, photo.image[:, ::-1].copy(), source="generated", spec=spec)

    @hookimpl
    def register_stage2_backends(register):
        register("counting", Counting)
"""


def test_stored_images_are_reused_after_a_crash(tmp_path, monkeypatch):
    """A backend that stores_images: a build that dies mid-identity keeps every image made so
    far, and the rerun asks the backend only for the others; the result equals an
    uninterrupted build's."""
    registry = registry_with_backend(tmp_path, monkeypatch, COUNTING)
    settings = ['stage2.backend="counting"', "run.references=2", "run.degraded=3", 'annotate.chain=["fr"]',
                'generate.params.folder.grouping="file"']
    faces = tmp_path / "faces"
    faces.mkdir()
    from synfiqa.generation import embedded_faces_dir

    for name in ("obama_1.jpg", "sunak_1.jpg"):
        (faces / name).write_bytes((embedded_faces_dir() / name).read_bytes())
    settings.append(f"generate.params.folder.path={json.dumps(str(faces))}")
    config = load_config(None, settings, registry)

    monkeypatch.setenv("COUNTING_LOG", str(tmp_path / "whole.log"))
    whole = tmp_path / "whole"
    build(config, whole, registry=registry, **QUIET)
    assert len((tmp_path / "whole.log").read_text().splitlines()) == 10   # 2 identities x 5 images

    monkeypatch.setenv("COUNTING_LOG", str(tmp_path / "crashed.log"))
    monkeypatch.setenv("CRASH_AFTER", "7")   # identity 1 done, identity 2 dies after 2 of its 5 images
    crashed = tmp_path / "crashed"
    with pytest.raises(RuntimeError, match="the GPU went away"):
        build(config, crashed, registry=registry, **QUIET)
    stored = sorted(p.name for p in (crashed / "generated" / "stage2" / "sunak_1").glob("*.png"))
    assert stored == ["reference-0.png", "reference-1.png"]
    monkeypatch.delenv("CRASH_AFTER")
    build(config, crashed, registry=registry, **QUIET)
    calls = (tmp_path / "crashed.log").read_text().splitlines()
    assert calls[8:] == ["sunak_1 degraded 0", "sunak_1 degraded 1", "sunak_1 degraded 2"]
    assert tree_bytes(crashed) == tree_bytes(whole)


def test_the_conformance_kit_catches_a_backend_seeded_by_batch_position():
    """A backend whose image depends on the entry's place in the request (not on the entry)
    fails the kit's subset check, and a stores_images backend's rerun would get wrong images."""
    from synfiqa.synthesis import Rendered
    from synfiqa.testing import Stage2BackendConformance, run_checks

    class ByPosition:
        def render(self, identity, plan, context):
            for position, spec in enumerate(plan):
                image = np.full((64, 64, 3), 10 * position, np.uint8)
                yield Rendered(spec.role, spec.index, image, source="x", spec=spec)

    class ByEntry(ByPosition):
        def render(self, identity, plan, context):
            for spec in plan:
                image = np.full((64, 64, 3), 10 * spec.index + (spec.role == "degraded"), np.uint8)
                yield Rendered(spec.role, spec.index, image, source="x", spec=spec)

    bad = {r.check: r.passed for r in run_checks(Stage2BackendConformance, factory=ByPosition)}
    good = {r.check: r.passed for r in run_checks(Stage2BackendConformance, factory=ByEntry)}
    assert bad == {**good, "test_an_entry_does_not_depend_on_the_others_asked_for": False}
    assert all(good.values()), good

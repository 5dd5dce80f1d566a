"""A build with the caphuman backend end to end on the test photos, every model a tiny random one
saved in its real format and found through $SYNFIQA_WEIGHTS: the converted CapHuman folder
(from generated original files, through `synfiqa convert`'s code), a random FaceNet, a tiny
DECA E_flame in deca_model.tar, the tiny FLAME of the head-model tests with a 50-component
texture space. Random networks draw no faces: every image is a skipped row with its reason,
and the images are kept under generated/stage2/."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from synfiqa.config import load_config
from synfiqa.errors import WeightsNotFoundError
from synfiqa.stages.build import build
from tests.test_deca_encoder import tiny_e_flame
from tests.test_hints import head_model
from tests.test_headmodel import dump_with_fake_chumpy, tiny_landmarks
from tests.test_stage2_caphuman_convert import write_originals

QUIET = dict(echo=lambda *_: None)
SETTINGS = ['stage2.backend="caphuman"', "run.references=2", "run.degraded=3", "run.device=\"cpu\"",
            "stage2.params.caphuman.size=128", "stage2.params.caphuman.steps=3",
            "stage2.params.caphuman.batch_size=4"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    from facenet_pytorch import InceptionResnetV1

    from synfiqa_plugins.stage2.caphuman.convert import convert_files

    root = tmp_path_factory.mktemp("weights")
    control, sd, clip = write_originals(tmp_path_factory.mktemp("originals"))
    convert_files(control, sd, clip, root / "caphuman-diffusers")
    (root / "facenet-vggface2").mkdir()
    torch.manual_seed(0)
    torch.save(InceptionResnetV1(pretrained=None, classify=False).state_dict(),
               root / "facenet-vggface2" / "20180402-114759-vggface2.pt")
    (root / "deca-model").mkdir()
    torch.save({"E_flame": tiny_e_flame()}, root / "deca-model" / "deca_model.tar")
    raw = head_model()
    (root / "flame-generic-model").mkdir()
    (root / "flame-generic-model" / "generic_model.pkl").write_bytes(dump_with_fake_chumpy(raw))
    (root / "flame-landmark-embedding").mkdir()
    np.save(root / "flame-landmark-embedding" / "landmark_embedding.npy", tiny_landmarks(len(raw["f"])), allow_pickle=True)
    (root / "flame-texture").mkdir()
    rng = np.random.default_rng(1)
    np.savez(root / "flame-texture" / "FLAME_texture.npz", mean=rng.uniform(50, 200, (1, 8 * 8 * 3)),
             tex_dir=rng.normal(0, 2, (8 * 8 * 3, 50)))
    from synfiqa_plugins.stage2.caphuman.face_parser import BiSeNet

    (root / "caphuman-face-parser").mkdir()
    torch.save(BiSeNet().state_dict(), root / "caphuman-face-parser" / "FaceParser.pth")
    return root


@pytest.fixture
def weights_env(weights, monkeypatch, tmp_path):
    monkeypatch.setenv("SYNFIQA_WEIGHTS", str(weights))
    monkeypatch.setenv("HOME", str(tmp_path))
    return weights


def test_a_caphuman_build_runs_end_to_end_and_records_the_faceless_images(weights_env, tmp_path):
    out = tmp_path / "out"
    summary = build(load_config(None, SETTINGS), out, **QUIET)
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    made = [r for r in rows if r.get("role") in ("reference", "degraded")]
    identities = {r["identity"] for r in made}
    assert len(identities) == 4                                   # the four test identities
    assert len(made) == 4 * (2 + 3)
    skipped = [r for r in made if r["status"] == "skipped"]
    # random networks draw noise: the detector finds no face (a rare false detection becomes a row
    # like any other, with its controls)
    assert len(skipped) >= len(made) - 2
    assert all(r["reason"] in ("no-face", "image-too-small") for r in skipped)
    assert all("control.yaw" in r and r["control.prompt"] for r in made if r["status"] != "skipped")
    # every generated image is kept, 128 x 128, one per plan entry
    for identity in identities:
        folder = out / "generated" / "stage2" / identity
        names = sorted(p.name for p in folder.glob("*.png"))
        assert names == sorted([f"reference-{k}.png" for k in range(2)] + [f"degraded-{k}.png" for k in range(3)])
        with Image.open(folder / "degraded-0.png") as image:
            assert image.size == (128, 128)
    assert summary is not None


def test_an_image_does_not_depend_on_the_batch_it_was_made_in(weights_env, tmp_path):
    """The plan rendered whole, then a subset of it (what the core asks after a crash), in other
    batches: the subset's images are the same bytes."""
    from types import SimpleNamespace

    from synfiqa.registry import get_registry
    from synfiqa.stages.s3_synthesize import draw_plan
    from synfiqa.stages.s3_synthesize.plan import SyntheticBank
    from synfiqa.synthesis import Plan
    from synfiqa.context import RunContext

    config = load_config(None, SETTINGS)
    context = RunContext(config, get_registry())
    backend = context.create("stage2-backend", "caphuman", config["stage2"]["params"]["caphuman"])
    photo = SimpleNamespace(key="x", image=np.asarray(Image.open("tests/data/faces/obama_1.jpg").convert("RGB")),
                            face=context.model("detector").detect(np.asarray(Image.open("tests/data/faces/obama_1.jpg").convert("RGB")))[0])
    identity = SimpleNamespace(name="obama", photos=(photo,))
    plan = draw_plan(config, "obama", SyntheticBank())
    whole = {(r.role, r.index): r.image for r in backend.render(identity, plan, context)}
    subset = Plan(references=(plan.references[1],), degraded=(plan.degraded[2], plan.degraded[0]))
    again = {(r.role, r.index): r.image for r in backend.render(identity, subset, context)}
    assert set(again) == {("reference", 1), ("degraded", 2), ("degraded", 0)}
    for key, image in again.items():
        assert np.array_equal(image, whole[key]), key
    assert not np.array_equal(whole[("degraded", 0)], whole[("degraded", 1)])


def test_missing_weights_are_named_on_one_line(tmp_path, monkeypatch):
    for variable in ("HOME", "SYNFIQA_WEIGHTS", "TORCH_HOME", "HF_HOME"):
        monkeypatch.setenv(variable, str(tmp_path))
    from synfiqa_plugins.stage2.caphuman.backend import CapHumanBackend

    with pytest.raises(WeightsNotFoundError) as error:
        CapHumanBackend(device="cpu")
    message = str(error.value)
    assert "\n" not in message
    for name in ("caphuman.json", "20180402-114759-vggface2.pt", "deca_model.tar", "generic_model.pkl",
                 "landmark_embedding.npy", "FLAME_texture.npz", "FaceParser.pth"):
        assert name in message

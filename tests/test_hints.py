"""Conditioning hints (synfiqa_plugins.headmodel.hints) of the tiny FLAME-like model of
tests/test_headmodel.py, saved in the real file formats, rendered through the real
synfiqa.ops.rasterize; and the `synfiqa render` command on it through $SYNFIQA_WEIGHTS."""
from __future__ import annotations

import math
from dataclasses import replace

import click
import numpy as np
import pytest
import scipy.sparse as sp
import torch
from click.testing import CliRunner

from synfiqa.stages.s3_synthesize.plan import SyntheticBank
from synfiqa_plugins import headmodel as hm
from synfiqa_plugins.headmodel.hints import hints_grid, plan_entry, render_hints, render_hints_batch, uv_layout
from tests.test_headmodel import N_EXP, N_SHAPE, dump_with_fake_chumpy, tiny_landmarks, tiny_model

SIZE = 96
C0 = 1 / math.sqrt(4 * math.pi)  # DECA's first SH constant, 0.28209479...
NOSE = 30  # the nose tip of the 68-point layout: static landmark 30 - 17 = 13


def head_model():
    """The tiny model made head-like: a nose bump on +z, rigid (all weight on the global joint,
    which sits at the vertex mean), no pose correctives."""
    raw = tiny_model(weights=np.tile([1.0, 0, 0, 0, 0], (42, 1)), posedirs_scale=0)
    v = raw["v_template"].copy()
    front = v[:, 2] / np.linalg.norm(v, axis=1) > 0.8
    v[front] *= 1.6
    raw["v_template"] = v
    regressor = raw["J_regressor"].toarray()
    regressor[0] = 1.0 / len(v)
    raw["J_regressor"] = sp.csc_matrix(regressor)
    return raw


def save_model(folder, raw):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "generic_model.pkl").write_bytes(dump_with_fake_chumpy(raw))
    np.save(folder / "landmark_embedding.npy", tiny_landmarks(len(raw["f"])), allow_pickle=True)


def tiny_texture():
    rng = np.random.default_rng(5)
    side = 8
    return hm.FlameTexture({"mean": rng.uniform(0.2, 0.9, (1, side * side * 3)),
                            "basis": rng.normal(0, 0.01, (side * side * 3, 2))}, n_tex=2, uv_size=side)


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    folder = tmp_path_factory.mktemp("flame")
    raw = head_model()
    save_model(folder, raw)
    model = hm.load_generic_model(folder / "generic_model.pkl")
    flame = hm.Flame(model, hm.load_landmark_embedding(folder / "landmark_embedding.npy"), n_shape=N_SHAPE, n_exp=N_EXP)
    # the nose tip on the front-most face, at its centroid
    centroids = flame.v_template[flame.faces].mean(1)
    flame.lmk_faces_idx[NOSE - 17] = int(centroids[:, 2].argmax())
    flame.lmk_bary_coords[NOSE - 17] = 1 / 3
    return flame, uv_layout(model)


def frontal():
    spec = SyntheticBank().reference_specs(1)[0]
    assert spec.pose == (0.0, 0.0, 0.0, 0.0) and spec.framing == (1.0, 0.0, 0.0)
    return spec


def centroid_x(alpha):
    weights = alpha[0].double()
    cols = torch.arange(alpha.shape[-1], dtype=torch.float64) + 0.5
    return float((weights.sum(0) * cols).sum() / weights.sum())


def test_shapes_dtypes_and_the_mask(head):
    flame, uv = head
    specs = [frontal()] + SyntheticBank().degraded_specs(2, 0, "someone")
    hints = render_hints_batch(flame, tiny_texture(), torch.zeros(N_SHAPE), specs, SIZE, uv=uv)
    assert len(hints) == 3
    for h in hints:
        for name, channels in (("normal", 3), ("albedo", 3), ("shaded", 3), ("alpha", 1), ("depth", 1),
                               ("landmark_image", 3), ("caphuman", 9), ("arc2face_normal", 3)):
            value = getattr(h, name)
            assert value.shape == (channels, SIZE, SIZE) and value.dtype == torch.float32, name
        assert h.landmarks.shape == (68, 2) and h.landmarks.dtype == torch.float32
        assert h.pix_to_face.shape == (SIZE, SIZE) and h.pix_to_face.dtype == torch.int64
        assert h.albedo_source == "uv"
        background = h.pix_to_face == -1
        assert 0 < int(background.sum()) < SIZE * SIZE
        # alpha is 0 exactly on the background and 1 elsewhere; every hint is 0 there
        assert torch.equal(h.alpha[0] == 0, background) and set(h.alpha.unique().tolist()) == {0.0, 1.0}
        for value in (h.normal, h.albedo, h.shaded, h.depth):
            assert float(value[:, background].abs().max()) == 0.0
        assert torch.equal(h.caphuman, torch.cat([h.normal, h.albedo, h.shaded]))
        assert torch.equal(h.arc2face_normal, h.normal * 0.5 + 0.5)
        assert torch.all(h.arc2face_normal[:, background] == 0.5)
        assert float(h.depth.min()) >= 0 and float(h.depth.max()) <= 1
        assert float(h.depth.max()) > 0.9  # the nearest pixels are near 1 (DECA's normalisation)
        assert float(h.normal.abs().max()) <= 1 + 1e-6
    # one spec alone renders the same as inside the batch
    alone = render_hints(flame, tiny_texture(), torch.zeros(N_SHAPE), specs[2], SIZE, uv=uv)
    assert torch.equal(alone.pix_to_face, hints[2].pix_to_face)
    torch.testing.assert_close(alone.caphuman, hints[2].caphuman)


def test_frontal_normals_are_unit_and_face_the_camera(head):
    flame, uv = head
    h = render_hints(flame, None, torch.zeros(N_SHAPE), frontal(), SIZE, uv=uv)
    inside = h.alpha[0] > 0
    length = h.normal.norm(dim=0)[inside]
    # unit vertex normals interpolated without renormalising (DECA): 1 at vertices, a little
    # shorter inside the coarse tiny mesh's faces
    assert float(length.max()) <= 1 + 1e-5 and float(length.min()) > 0.75 and float(length.mean()) > 0.85
    # world +z points at the camera: every visible normal of a frontal head has z > 0
    assert float(h.normal[2][inside].min()) > 0
    centre = h.normal[:, SIZE // 2, SIZE // 2]
    assert float(centre[2]) > 0.9


def test_yaw_moves_the_nose_and_the_silhouette_to_the_image_right(head):
    flame, uv = head
    spec = frontal()
    turned = replace(spec, pose=(30.0, 0.0, 0.0, 0.0))
    a, b = render_hints_batch(flame, None, torch.zeros(N_SHAPE), [spec, turned], SIZE, uv=uv)
    # frontal: the nose where the documented camera puts it: u = s x, v = -s y, pixel = (p + 1) / 2 * size
    world = flame(shape=torch.zeros(1, N_SHAPE)).landmarks2d[0, NOSE].double()
    s = hm.REFERENCE_SCALE
    expected = [(s * float(world[0]) + 1) / 2 * SIZE, (-s * float(world[1]) + 1) / 2 * SIZE]
    torch.testing.assert_close(a.landmarks[NOSE].double(), torch.tensor(expected, dtype=torch.float64), atol=1e-3, rtol=0)
    # +30 deg yaw (s3_synthesize.plan: the nose turns to +x, the image's right)
    assert float(b.landmarks[NOSE, 0]) - float(a.landmarks[NOSE, 0]) > 0.1 * SIZE
    assert abs(float(b.landmarks[NOSE, 1]) - float(a.landmarks[NOSE, 1])) < 1.0
    assert centroid_x(b.alpha) - centroid_x(a.alpha) > 0.5
    # and -30 deg the other way
    (c,) = render_hints_batch(flame, None, torch.zeros(N_SHAPE), [replace(spec, pose=(-30.0, 0, 0, 0))], SIZE, uv=uv)
    assert float(c.landmarks[NOSE, 0]) < float(a.landmarks[NOSE, 0]) - 0.1 * SIZE
    assert centroid_x(c.alpha) < centroid_x(a.alpha) - 0.5


def test_framing_offsets_and_scale_move_the_landmarks_as_documented(head):
    flame, uv = head
    spec = frontal()
    moved = replace(spec, framing=(0.5, 0.25, -0.125))
    a, b = render_hints_batch(flame, None, torch.zeros(N_SHAPE), [spec, moved], SIZE, uv=uv)
    # u = s x + ox, v = -s y + oy, pixel = (p + 1) / 2 * size: the framing centre moves by the offsets
    # (in half-widths of the crop, +x right, +y down) and distances about it halve
    centre = torch.tensor([SIZE / 2, SIZE / 2])
    expected = centre + (a.landmarks - centre) * 0.5 + torch.tensor([0.25, -0.125]) * SIZE / 2
    torch.testing.assert_close(b.landmarks, expected, atol=1e-3, rtol=0)
    assert 0.2 < float(b.alpha.sum() / a.alpha.sum()) < 0.3


def test_shaded_with_a_dc_only_light_is_albedo_times_c0_l0(head):
    flame, uv = head
    light = ((2.0, 1.0, 0.5),) + ((0.0, 0.0, 0.0),) * 8
    spec = replace(SyntheticBank().degraded_specs(1, 3, "x")[0], light=light)
    for texture in (tiny_texture(), None):
        h = render_hints(flame, texture, torch.zeros(N_SHAPE), spec, SIZE, uv=uv)
        expected = h.albedo * torch.tensor([2.0, 1.0, 0.5])[:, None, None] * C0
        torch.testing.assert_close(h.shaded, expected, atol=1e-6, rtol=1e-5)
        if texture is None:
            assert h.albedo_source == "flat"
            inside = h.alpha[0] > 0
            assert torch.all(h.albedo[:, inside] == hm.FLAT_ALBEDO)
        else:  # sampled from the UV map: inside its range, not constant
            inside = h.alpha[0] > 0
            values = h.albedo[:, inside]
            # (bilinear, zero padding outside the map as DECA's grid_sample: darker only at the UV seams)
            assert float(values.min()) >= 0 and float(values.max()) <= 0.9 + 0.05
            assert float(values.median()) >= 0.2
            assert float(values.std()) > 0.01


def test_landmark_image_has_dots_at_the_landmarks(head):
    flame, uv = head
    h = render_hints(flame, None, torch.zeros(N_SHAPE), frontal(), SIZE, uv=uv)
    x, y = (int(v) for v in h.landmarks[NOSE].tolist())
    assert torch.all(h.landmark_image[:, y, x] == 1.0)
    assert set(h.landmark_image.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(h.landmark_image[0], h.landmark_image[2])


# ------------------------------------------------------------------ the command

def render_cli():
    from synfiqa_cli.main import SynfiqaGroup

    @click.group(cls=SynfiqaGroup)
    def cli():
        pass

    hm.register_commands(cli)
    return cli


def weights_env(monkeypatch, root):
    for variable in ("HOME", "SYNFIQA_WEIGHTS", "TORCH_HOME", "HF_HOME"):
        monkeypatch.setenv(variable, str(root))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)


def flame_weights(tmp_path, monkeypatch):
    """The tiny head model's FLAME files where synfiqa.weights finds them."""
    weights = tmp_path / "weights"
    raw = head_model()
    (weights / "flame-generic-model").mkdir(parents=True)
    (weights / "flame-generic-model" / "generic_model.pkl").write_bytes(dump_with_fake_chumpy(raw))
    (weights / "flame-landmark-embedding").mkdir()
    np.save(weights / "flame-landmark-embedding" / "landmark_embedding.npy", tiny_landmarks(len(raw["f"])),
            allow_pickle=True)
    weights_env(monkeypatch, weights)


def test_render_command_writes_the_hints(tmp_path, monkeypatch):
    flame_weights(tmp_path, monkeypatch)
    np.save(tmp_path / "alice.npy", np.full(20, 0.5, np.float32))
    out = tmp_path / "out"
    result = CliRunner().invoke(render_cli(), ["render", "--identity-shape", str(tmp_path / "alice.npy"),
                                               "--index", "12", "--size", "64", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "degraded 2" in result.output and "flat grey albedo" in result.output
    for name in ("normal", "albedo", "shaded", "depth", "landmarks"):
        from PIL import Image

        with Image.open(out / f"{name}.png") as image:
            assert image.size == (64, 64) and image.mode == "RGB"
    caphuman = np.load(out / "caphuman.npy")
    assert caphuman.shape == (9, 64, 64) and caphuman.dtype == np.float32
    # the plan entry is the plan's: identity "alice", seed 0, 10 references, degraded 2
    assert plan_entry(12, "synthetic", 0, "alice").index == 2


def test_render_command_refuses_in_one_line_without_the_assets(tmp_path, monkeypatch):
    weights_env(monkeypatch, tmp_path)
    result = CliRunner().invoke(render_cli(), ["render", "--identity-shape", "zeros", "--index", "0",
                                               "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    message = result.output.strip()
    assert "\n" not in message and message.startswith("Error:")
    assert "generic_model.pkl" in message and "landmark_embedding.npy" in message
    assert not (tmp_path / "out").exists()


def write_example(path="docs/hints_example.png", size=256):
    """docs/hints_example.png: the hints of one synthetic plan entry for the tiny model (2 x 3:
    normal, albedo, shaded / depth, landmarks, alpha). Run: python -c 'from tests.test_hints
    import write_example; write_example()'."""
    import tempfile
    from pathlib import Path

    from PIL import Image

    with tempfile.TemporaryDirectory() as folder:
        raw = head_model()
        save_model(Path(folder), raw)
        model = hm.load_generic_model(Path(folder) / "generic_model.pkl")
        flame = hm.Flame(model, hm.load_landmark_embedding(Path(folder) / "landmark_embedding.npy"),
                         n_shape=N_SHAPE, n_exp=N_EXP)
    spec = plan_entry(31, "synthetic", 0, "example")  # yaw +22, bright light
    h = render_hints(flame, tiny_texture(), torch.zeros(N_SHAPE), spec, size, uv=uv_layout(model))
    Image.fromarray(hints_grid(h)).save(path)
    return spec


def test_synfiqa_render_is_reachable_from_the_command_line(tmp_path, monkeypatch):
    """The headmodel plugin registers only a command: registry.toml's [[module]] entry makes it
    an entry point, so the installed `synfiqa` has `render`, with --identity choosing the plan."""
    import subprocess
    import sys

    help_text = subprocess.run([sys.executable, "-m", "synfiqa_cli", "render", "--help"], capture_output=True,
                               text=True, timeout=120)
    assert help_text.returncode == 0, help_text.stderr
    assert "--identity NAME" in help_text.stdout and "--index" in help_text.stdout
    flame_weights(tmp_path, monkeypatch)
    outputs = {}
    for identity in ("ardern", "macron"):
        out = tmp_path / identity
        result = CliRunner().invoke(render_cli(), ["render", "--identity-shape", "zeros", "--identity", identity,
                                                   "--index", "15", "--size", "48", "--out", str(out)])
        assert result.exit_code == 0, result.output
        outputs[identity] = np.load(out / "caphuman.npy")
    # degraded sample 5 of two identities: two plan entries, two different poses
    assert plan_entry(15, "synthetic", 0, "ardern").pose != plan_entry(15, "synthetic", 0, "macron").pose
    assert not np.array_equal(outputs["ardern"], outputs["macron"])

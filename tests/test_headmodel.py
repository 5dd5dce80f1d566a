"""The FLAME head model (synfiqa_plugins.headmodel) on a tiny random FLAME-like model saved in
the real file formats (a Python-2-style pickle with chumpy objects and a scipy sparse
J_regressor; DECA's object .npy landmark embedding with torch tensors; the texture npz) and
read through the real loaders. Expected values are computed independently: hand-written
rotation matrices, explicit loops, SH constants worked out by hand."""
from __future__ import annotations

import math
import pickle
import sys
import types

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from synfiqa.errors import CheckpointError, WeightsNotFoundError
from synfiqa_plugins import headmodel as hm

N_SHAPE_COLS, N_EXP_COLS, N_SHAPE, N_EXP = 300, 100, 10, 5


# ------------------------------------------------------------------ the tiny model, in FLAME's formats

def icosphere(subdivisions: int = 1, radius: float = 0.1):
    t = (1 + 5 ** 0.5) / 2
    verts = [(-1, t, 0), (1, t, 0), (-1, -t, 0), (1, -t, 0), (0, -1, t), (0, 1, t), (0, -1, -t), (0, 1, -t),
             (t, 0, -1), (t, 0, 1), (-t, 0, -1), (-t, 0, 1)]
    faces = [(0, 11, 5), (0, 5, 1), (0, 1, 7), (0, 7, 10), (0, 10, 11), (1, 5, 9), (5, 11, 4), (11, 10, 2),
             (10, 7, 6), (7, 1, 8), (3, 9, 4), (3, 4, 2), (3, 2, 6), (3, 6, 8), (3, 8, 9), (4, 9, 5), (2, 4, 11),
             (6, 2, 10), (8, 6, 7), (9, 8, 1)]
    verts = [np.array(v, float) / np.linalg.norm(v) for v in verts]
    for _ in range(subdivisions):
        midpoint, new_faces = {}, []

        def mid(a, b):
            key = (min(a, b), max(a, b))
            if key not in midpoint:
                m = verts[a] + verts[b]
                verts.append(m / np.linalg.norm(m))
                midpoint[key] = len(verts) - 1
            return midpoint[key]
        for a, b, c in faces:
            ab, bc, ca = mid(a, b), mid(b, c), mid(c, a)
            new_faces += [(a, ab, ca), (b, bc, ab), (c, ca, bc), (ab, bc, ca)]
        faces = new_faces
    return np.array(verts) * radius, np.array(faces, dtype=np.int64)


class FakeCh:
    """Pickles like chumpy.ch.Ch: its state is __dict__ without _parents/_cache, value under 'x'."""

    def __init__(self, x):
        self.x = np.asarray(x, np.float64)
        self._dirty_vars = {"x"}
        self._itr = None
        self._depends_on_deps = {}
        self._make_dense = False
        self._make_sparse = False


def dump_with_fake_chumpy(payload, protocol: int = 2) -> bytes:
    """Pickle with FakeCh known to pickle as chumpy.ch.Ch (modules injected only meanwhile)."""
    chumpy, ch = types.ModuleType("chumpy"), types.ModuleType("chumpy.ch")
    ch.Ch, chumpy.ch = FakeCh, ch
    saved = (FakeCh.__module__, FakeCh.__qualname__)
    FakeCh.__module__, FakeCh.__qualname__ = "chumpy.ch", "Ch"
    sys.modules.update({"chumpy": chumpy, "chumpy.ch": ch})
    try:
        return pickle.dumps(payload, protocol=protocol)
    finally:
        FakeCh.__module__, FakeCh.__qualname__ = saved
        del sys.modules["chumpy"], sys.modules["chumpy.ch"]


def tiny_model(seed: int = 0, weights=None, posedirs_scale: float = 0.01):
    rng = np.random.default_rng(seed)
    v, f = icosphere(1)
    count = len(v)
    if weights is None:
        weights = rng.random((count, 5)) + 0.05
        weights /= weights.sum(1, keepdims=True)
    regressor = np.zeros((5, count))
    for j in range(5):
        members = rng.choice(count, 4, replace=False)
        regressor[j, members] = 0.25
    theta = np.arctan2(v[:, 0], v[:, 2])
    vt = np.stack([theta / (2 * np.pi) + 0.5, v[:, 1] / 0.2 + 0.5], 1)
    return {
        "v_template": v,
        "f": f.astype(np.uint32),
        "shapedirs": FakeCh(rng.normal(0, 0.01, (count, 3, N_SHAPE_COLS + N_EXP_COLS))),
        "posedirs": rng.normal(0, posedirs_scale, (count, 3, 36)) if posedirs_scale else np.zeros((count, 3, 36)),
        "J_regressor": sp.csc_matrix(regressor),
        "kintree_table": np.array([[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]], dtype=np.int64),
        "weights": weights,
        "J": regressor @ v,
        "bs_style": "lbs",
        "bs_type": "lrotmin",
        "vt": vt,
        "ft": f.copy(),
    }


def tiny_landmarks(faces_count: int, seed: int = 1):
    rng = np.random.default_rng(seed)

    def bary(*shape):
        b = rng.random((*shape, 3)) + 0.1
        return b / b.sum(-1, keepdims=True)
    return {
        "static_lmk_faces_idx": rng.integers(0, faces_count, 51),
        "static_lmk_bary_coords": bary(51),
        "dynamic_lmk_faces_idx": torch.from_numpy(rng.integers(0, faces_count, (79, 17))),
        "dynamic_lmk_bary_coords": torch.from_numpy(bary(79, 17)).float(),
        "full_lmk_faces_idx": rng.integers(0, faces_count, (1, 68)),
        "full_lmk_bary_coords": bary(1, 68),
    }


@pytest.fixture
def files(tmp_path):
    raw = tiny_model()
    (tmp_path / "generic_model.pkl").write_bytes(dump_with_fake_chumpy(raw))
    embedding = tiny_landmarks(len(raw["f"]))
    np.save(tmp_path / "landmark_embedding.npy", embedding, allow_pickle=True)
    return tmp_path, raw, embedding


def flame_from(tmp_path, dtype=torch.float64, **options):
    model = hm.load_generic_model(tmp_path / "generic_model.pkl")
    landmarks = hm.load_landmark_embedding(tmp_path / "landmark_embedding.npy")
    return hm.Flame(model, landmarks, n_shape=N_SHAPE, n_exp=N_EXP, dtype=dtype, **options)


def rot_y(angle):
    c, s = math.cos(angle), math.sin(angle)
    return torch.tensor([[c, 0, s], [0, 1, 0], [-s, 0, c]], dtype=torch.float64)


def rot_x(angle):
    c, s = math.cos(angle), math.sin(angle)
    return torch.tensor([[1, 0, 0], [0, c, -s], [0, s, c]], dtype=torch.float64)


# ------------------------------------------------------------------ loaders

def test_the_pickle_really_references_chumpy_and_scipy(files):
    import pickletools
    tmp_path, _, _ = files
    text = []
    for op, arg, _ in pickletools.genops((tmp_path / "generic_model.pkl").read_bytes()):
        if isinstance(arg, str):
            text.append(arg)
    assert "chumpy.ch Ch" in text  # GLOBAL, as in the real file
    assert any(s.startswith("scipy.sparse") and s.endswith("csc_matrix") for s in text)
    assert "chumpy" not in sys.modules  # the fake was only there while pickling


@pytest.mark.parametrize("protocol", [0, 2])
def test_generic_model_loads_without_chumpy(tmp_path, protocol):
    raw = tiny_model()
    (tmp_path / "m.pkl").write_bytes(dump_with_fake_chumpy(raw, protocol))
    model = hm.load_generic_model(tmp_path / "m.pkl")
    np.testing.assert_array_equal(model["shapedirs"], raw["shapedirs"].x)
    np.testing.assert_array_equal(model["J_regressor"], raw["J_regressor"].toarray())
    np.testing.assert_array_equal(model["v_template"], raw["v_template"])
    np.testing.assert_array_equal(model["f"], raw["f"])
    assert model["bs_style"] == "lbs"


def test_landmark_embedding_loads_tensors_as_arrays(files):
    tmp_path, _, embedding = files
    loaded = hm.load_landmark_embedding(tmp_path / "landmark_embedding.npy")
    np.testing.assert_array_equal(loaded["dynamic_lmk_faces_idx"], embedding["dynamic_lmk_faces_idx"].numpy())
    np.testing.assert_array_equal(loaded["static_lmk_bary_coords"], embedding["static_lmk_bary_coords"])


def test_the_unpickler_refuses_os_system_and_names_it(tmp_path):
    marker = tmp_path / "ran"
    payload = f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()
    (tmp_path / "generic_model.pkl").write_bytes(payload)
    with pytest.raises(CheckpointError, match=r"refused to unpickle os\.system") as caught:
        hm.load_generic_model(tmp_path / "generic_model.pkl")
    assert "\n" not in str(caught.value) and str(tmp_path / "generic_model.pkl") in str(caught.value)
    assert not marker.exists()
    # the same inside an .npy object array
    with open(tmp_path / "landmark_embedding.npy", "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, {"descr": "|O", "fortran_order": False, "shape": ()})
        handle.write(payload)
    with pytest.raises(CheckpointError, match=r"refused to unpickle os\.system"):
        hm.load_landmark_embedding(tmp_path / "landmark_embedding.npy")
    assert not marker.exists()


def test_texture_spaces(tmp_path):
    rng = np.random.default_rng(3)
    side = 8
    mean = rng.uniform(0, 255, (1, side * side * 3))
    tex_dir = rng.normal(0, 10, (side * side * 3, 4))
    np.savez(tmp_path / "FLAME_texture.npz", mean=mean, tex_dir=tex_dir)
    np.savez(tmp_path / "FLAME_albedo_from_BFM.npz", MU=mean / 255, PC=tex_dir[:, :3] / 255)
    code = torch.tensor([[0.5, -1.0]])
    for name in ("FLAME_texture.npz", "FLAME_albedo_from_BFM.npz"):
        texture = hm.FlameTexture(hm.load_texture_space(tmp_path / name), n_tex=2, uv_size=side)
        image = texture(code)
        flat = (mean[0] + tex_dir[:, 0] * 0.5 - tex_dir[:, 1]) / 255
        expected = flat.reshape(side, side, 3)[:, :, ::-1].transpose(2, 0, 1)  # BGR -> RGB, CHW
        np.testing.assert_allclose(image[0].numpy(), expected, rtol=1e-5, atol=1e-6)
    assert hm.FlameTexture(hm.load_texture_space(tmp_path / name), n_tex=2, uv_size=4)(code).shape == (1, 3, 4, 4)


def test_a_missing_asset_is_the_usual_error(tmp_path, monkeypatch):
    for variable in ("HOME", "SYNFIQA_WEIGHTS", "TORCH_HOME", "HF_HOME"):
        monkeypatch.setenv(variable, str(tmp_path))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    with pytest.raises(WeightsNotFoundError, match="flame-generic-model.*generic_model.pkl"):
        hm.locate_file("flame-generic-model")
    (tmp_path / "flame-generic-model").mkdir()
    (tmp_path / "flame-generic-model" / "generic_model.pkl").write_bytes(b"x")
    assert hm.locate_file("flame-generic-model").name == "generic_model.pkl"


# ------------------------------------------------------------------ the model

def test_zero_codes_give_the_template(files):
    tmp_path, raw, _ = files
    out = flame_from(tmp_path)(shape=torch.zeros(2, N_SHAPE, dtype=torch.float64))
    torch.testing.assert_close(out.vertices, torch.from_numpy(raw["v_template"]).expand(2, -1, -1),
                               rtol=0, atol=1e-15)


def test_shape_and_expression_add_their_blend_shapes(files):
    tmp_path, raw, _ = files
    flame = flame_from(tmp_path)
    shape = torch.zeros(1, N_SHAPE, dtype=torch.float64)
    expression = torch.zeros(1, N_EXP, dtype=torch.float64)
    expression[0, 3] = 1.0
    out = flame(shape=shape, expression=expression)
    delta = out.vertices[0].numpy() - raw["v_template"]
    np.testing.assert_allclose(delta, raw["shapedirs"].x[:, :, N_SHAPE_COLS + 3], rtol=0, atol=1e-15)
    shape[0, 7] = -2.0
    out = flame(shape=shape, expression=torch.zeros(1, N_EXP, dtype=torch.float64))
    np.testing.assert_allclose(out.vertices[0].numpy() - raw["v_template"], -2 * raw["shapedirs"].x[:, :, 7],
                               rtol=0, atol=1e-15)


def test_global_rotation_of_90_degrees_about_y(files):
    tmp_path, raw, _ = files
    flame = flame_from(tmp_path)
    pose = torch.tensor([[0.0, math.pi / 2, 0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    out = flame(pose=pose)
    template = torch.from_numpy(raw["v_template"])
    root = torch.from_numpy(raw["J_regressor"].toarray() @ raw["v_template"])[0]
    r = torch.tensor([[0.0, 0, 1], [0, 1, 0], [-1, 0, 0]], dtype=torch.float64)  # R_y(90 deg) by hand
    expected = (template - root) @ r.T + root
    torch.testing.assert_close(out.vertices[0], expected, rtol=0, atol=1e-14)
    # and the normals turn with it
    faces = flame.faces
    torch.testing.assert_close(hm.vertex_normals(out.vertices, faces)[0],
                               hm.vertex_normals(template[None], faces)[0] @ r.T, rtol=0, atol=1e-12)


def test_one_joint_weight_moves_rigidly(tmp_path):
    count = len(icosphere(1)[0])
    weights = np.zeros((count, 5))
    weights[:, 2] = 1.0  # every vertex on the jaw
    raw = tiny_model(weights=weights, posedirs_scale=0)
    (tmp_path / "generic_model.pkl").write_bytes(dump_with_fake_chumpy(raw))
    model = hm.load_generic_model(tmp_path / "generic_model.pkl")
    flame = hm.Flame(model, None, n_shape=N_SHAPE, n_exp=N_EXP, dtype=torch.float64)
    angle = 0.4
    pose = torch.tensor([[0.0, 0, 0, angle, 0, 0]], dtype=torch.float64)  # jaw about x
    out = flame(pose=pose)
    template = torch.from_numpy(raw["v_template"])
    jaw = torch.from_numpy(raw["J_regressor"].toarray() @ raw["v_template"])[2]
    expected = (template - jaw) @ rot_x(angle).T + jaw
    torch.testing.assert_close(out.vertices[0], expected, rtol=0, atol=1e-14)
    pairwise = lambda v: (v[:, None] - v[None]).norm(dim=-1)  # noqa: E731
    torch.testing.assert_close(pairwise(out.vertices[0]), pairwise(template), rtol=0, atol=1e-14)


def test_pose_correctives(tmp_path):
    count = len(icosphere(1)[0])
    weights = np.zeros((count, 5))
    weights[:, 0] = 1.0  # all on the root: the jaw's rotation acts only through its correctives
    raw = tiny_model(weights=weights)
    (tmp_path / "generic_model.pkl").write_bytes(dump_with_fake_chumpy(raw))
    flame = hm.Flame(hm.load_generic_model(tmp_path / "generic_model.pkl"), None, n_shape=N_SHAPE, n_exp=N_EXP,
                     dtype=torch.float64)
    template = raw["v_template"]
    # zero pose: no correctives at all
    np.testing.assert_allclose(flame().vertices[0].numpy(), template, rtol=0, atol=1e-15)
    # jaw (joint 2) rotation: the feature is vec(R_jaw - I), entries 9..17 of the 36
    angle = 0.3
    feature = np.zeros(36)
    feature[9:18] = (rot_x(angle).numpy() - np.eye(3)).ravel()
    expected = template + np.einsum("vkp,p->vk", raw["posedirs"], feature)
    out = flame(pose=torch.tensor([[0.0, 0, 0, angle, 0, 0]], dtype=torch.float64))
    np.testing.assert_allclose(out.vertices[0].numpy(), expected, rtol=0, atol=1e-14)


def test_landmarks_are_barycentric_points_of_the_right_faces(files):
    tmp_path, raw, embedding = files
    flame = flame_from(tmp_path)
    faces = raw["f"].astype(np.int64)
    for yaw_degrees, row in ((20, 20), (-20, 59), (0, 0), (60, 39), (-60, 78), (-39, 78), (-1, 40)):
        pose = torch.tensor([[0.0, math.radians(yaw_degrees), 0, 0.1, 0, 0]], dtype=torch.float64)
        out = flame(pose=pose, expression=torch.full((1, N_EXP), 0.5, dtype=torch.float64))
        vertices = out.vertices[0].numpy()
        idx = np.concatenate([embedding["dynamic_lmk_faces_idx"][row].numpy(), embedding["static_lmk_faces_idx"]])
        bary = np.concatenate([embedding["dynamic_lmk_bary_coords"][row].double().numpy(),
                               embedding["static_lmk_bary_coords"]])
        expected = np.array([sum(bary[l, k] * vertices[faces[idx[l], k]] for k in range(3)) for l in range(68)])
        np.testing.assert_allclose(out.landmarks2d[0].numpy(), expected, rtol=0, atol=1e-14, err_msg=str(yaw_degrees))
    full = np.array([sum(embedding["full_lmk_bary_coords"][0, l, k] * vertices[faces[embedding["full_lmk_faces_idx"][0, l], k]]
                         for k in range(3)) for l in range(68)])
    np.testing.assert_allclose(out.landmarks3d[0].numpy(), full, rtol=0, atol=1e-14)


def test_contour_row_follows_deca():
    yaw = torch.tensor([0.0, 0.4, 0.6, 39.0, 45.0, -0.6, -1.0, -38.6, -39.0, -39.4, -39.6, -80.0])
    assert hm.contour_row(yaw).tolist() == [0, 0, 1, 39, 39, 40, 40, 78, 78, 78, 78, 78]
    # the neck's yaw counts too (chain global @ neck)
    full = torch.zeros(1, 15, dtype=torch.float64)
    full[0, 4] = math.radians(10)
    full[0, 1] = math.radians(15)
    rotation = hm.rodrigues(full.reshape(5, 3)[0]) @ hm.rodrigues(full.reshape(5, 3)[1])
    assert round(math.degrees(hm.yaw_of(rotation).item())) == 25


def test_rodrigues_matches_hand_written_rotations():
    torch.testing.assert_close(hm.rodrigues(torch.tensor([0.0, 0.7, 0.0], dtype=torch.float64)), rot_y(0.7))
    torch.testing.assert_close(hm.rodrigues(torch.tensor([-0.2, 0.0, 0.0], dtype=torch.float64)), rot_x(-0.2))
    assert torch.equal(hm.rodrigues(torch.zeros(3)), torch.eye(3))


# ------------------------------------------------------------------ camera and shading

def test_orthographic_projection_to_pixels():
    point = torch.tensor([[[0.1, -0.2, 0.3]]], dtype=torch.float64)
    cam = torch.tensor([[5.0, 0.02, 0.04]], dtype=torch.float64)
    projected = hm.project(point, cam)
    # by hand: s * (x + tx) = 5 * 0.12 = 0.6; s * (y + ty) = 5 * -0.16 = -0.8 -> flipped 0.8; z: -5 * 0.3
    torch.testing.assert_close(projected[0, 0], torch.tensor([0.6, 0.8, -1.5], dtype=torch.float64))
    # in a 224 crop: (0.6 + 1) / 2 * 224 = 179.2, (0.8 + 1) / 2 * 224 = 201.6
    torch.testing.assert_close(hm.crop_pixels(projected, 224)[0, 0], torch.tensor([179.2, 201.6], dtype=torch.float64))
    # the crop was cut as crop = 0.5 * original + (10, 20): back in the original image 2 * (crop - (10, 20))
    crop_tform = torch.tensor([[[0.5, 0, 10], [0, 0.5, 20], [0, 0, 1]]], dtype=torch.float64)
    original = hm.transform_points(projected, hm.crop_to_image_matrix(crop_tform), points_scale=224)
    torch.testing.assert_close(original[0, 0], torch.tensor([338.4, 363.2, -1.5], dtype=torch.float64))
    normalised = hm.transform_points(projected, hm.crop_to_image_matrix(crop_tform), 224, out_size=(400, 500))
    torch.testing.assert_close(normalised[0, 0, :2], torch.tensor([338.4 / 500 * 2 - 1, 363.2 / 400 * 2 - 1],
                                                                  dtype=torch.float64))


def test_sh_shading_with_only_the_dc_term():
    normals = torch.nn.functional.normalize(torch.randn(2, 3, 5, 6, generator=torch.Generator().manual_seed(0)), dim=1)
    albedo = torch.rand(2, 3, 5, 6, generator=torch.Generator().manual_seed(1))
    sh = torch.zeros(2, 9, 3)
    sh[:, 0] = torch.tensor([0.7, 0.5, 0.3])
    shading = hm.sh_shading(normals, sh)
    dc = 1 / (2 * math.sqrt(math.pi))  # Y_00 = 1 / sqrt(4 pi)
    expected = torch.tensor([0.7, 0.5, 0.3])[None, :, None, None] * dc
    torch.testing.assert_close(shading, expected.expand_as(shading))
    torch.testing.assert_close(albedo * shading, albedo * expected)
    # one linear term, by hand: (2 pi / 3) * sqrt(3 / (4 pi)) = sqrt(pi / 3), times n_x
    sh = torch.zeros(1, 9, 3)
    sh[0, 1] = 1.0
    n = torch.tensor([1.0, 0, 0]).reshape(1, 3, 1, 1)
    torch.testing.assert_close(hm.sh_shading(n, sh)[0, :, 0, 0], torch.full((3,), math.sqrt(math.pi / 3)))
    # the last term, by hand: (pi / 4) * (1 / 2) * sqrt(5 / (4 pi)) * (3 z^2 - 1) at z = 1
    sh = torch.zeros(1, 9, 3)
    sh[0, 8] = 1.0
    n = torch.tensor([0.0, 0, 1]).reshape(1, 3, 1, 1)
    torch.testing.assert_close(hm.sh_shading(n, sh)[0, :, 0, 0],
                               torch.full((3,), math.pi / 8 * math.sqrt(5 / (4 * math.pi)) * 2))


def test_float32_model_runs_batched(files):
    tmp_path, _, _ = files
    flame = flame_from(tmp_path, dtype=torch.float32)
    out = flame(shape=torch.randn(3, N_SHAPE) * 0.5, expression=torch.randn(3, N_EXP) * 0.5,
                pose=torch.randn(3, 6) * 0.2)
    assert out.vertices.shape == (3, 42, 3) and out.landmarks2d.shape == (3, 68, 3) and out.joints.shape == (3, 5, 3)
    assert torch.isfinite(out.vertices).all()

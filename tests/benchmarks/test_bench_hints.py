"""Benchmark: the conditioning hints of one identity's whole plan (R = 10 references +
D = 100 samples) at 512x512 on a FLAME-sized head (about 5k vertices, 10k faces, 400 blend
shapes, a 256x256 UV texture space), the work a CapHuman-style backend does per identity
before any diffusion step. Goal: under 2 s on the 2-core CPU machine.

    python -m pytest tests/benchmarks/test_bench_hints.py --benchmark-enable
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from synfiqa.stages.s3_synthesize.plan import SyntheticBank, plan_identity
from synfiqa_plugins.headmodel import Flame, FlameTexture, render_hints_batch

BATCH = 4    # specs per rasteriser call (smaller batches stay in cache: 4 was fastest of 3-14)


def hemisphere_mesh(subdivisions: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """The front half of an icosphere: about FLAME's 5023 vertices and 9976 faces at level 5."""
    t = (1 + 5 ** 0.5) / 2
    verts = [np.array(v, float) / np.linalg.norm(v) for v in
             [(-1, t, 0), (1, t, 0), (-1, -t, 0), (1, -t, 0), (0, -1, t), (0, 1, t), (0, -1, -t), (0, 1, -t),
              (t, 0, -1), (t, 0, 1), (-t, 0, -1), (-t, 0, 1)]]
    faces = [(0, 11, 5), (0, 5, 1), (0, 1, 7), (0, 7, 10), (0, 10, 11), (1, 5, 9), (5, 11, 4), (11, 10, 2),
             (10, 7, 6), (7, 1, 8), (3, 9, 4), (3, 4, 2), (3, 2, 6), (3, 6, 8), (3, 8, 9), (4, 9, 5), (2, 4, 11),
             (6, 2, 10), (8, 6, 7), (9, 8, 1)]
    for _ in range(subdivisions):
        cache, refined = {}, []

        def middle(a, b):
            key = (min(a, b), max(a, b))
            if key not in cache:
                m = verts[a] + verts[b]
                verts.append(m / np.linalg.norm(m))
                cache[key] = len(verts) - 1
            return cache[key]
        for a, b, c in faces:
            ab, bc, ca = middle(a, b), middle(b, c), middle(c, a)
            refined += [(a, ab, ca), (b, bc, ab), (c, ca, bc), (ab, bc, ca)]
        faces = refined
    v, f = np.array(verts) * 0.1, np.array(faces)
    keep = v[f].mean(1)[:, 2] > -0.005
    f = f[keep]
    used = np.unique(f)
    remap = np.full(len(v), -1)
    remap[used] = np.arange(len(used))
    return v[used], remap[f]


def flame_sized_head(seed: int = 0):
    rng = np.random.default_rng(seed)
    v, f = hemisphere_mesh()
    count = len(v)
    weights = rng.random((count, 5)) + 0.05
    weights /= weights.sum(1, keepdims=True)
    regressor = np.zeros((5, count))
    for j in range(5):
        regressor[j, rng.choice(count, 4, replace=False)] = 0.25
    model = {"v_template": v, "f": f, "shapedirs": rng.normal(0, 0.001, (count, 3, 400)),
             "posedirs": rng.normal(0, 0.001, (count, 3, 36)), "J_regressor": regressor,
             "kintree_table": np.array([[-1, 0, 1, 1, 1], [0, 1, 2, 3, 4]]), "weights": weights}
    landmarks = {
        "static_lmk_faces_idx": rng.integers(0, len(f), 51), "static_lmk_bary_coords": np.full((51, 3), 1 / 3),
        "dynamic_lmk_faces_idx": rng.integers(0, len(f), (79, 17)),
        "dynamic_lmk_bary_coords": np.full((79, 17, 3), 1 / 3),
    }
    flame = Flame(model, landmarks, n_shape=100, n_exp=50)
    side = 256
    texture = FlameTexture({"mean": rng.uniform(0.2, 0.9, (1, side * side * 3)),
                            "basis": rng.normal(0, 0.01, (side * side * 3, 50))}, n_tex=50, uv_size=side)
    theta = np.arctan2(v[:, 0], v[:, 2])
    vt = np.stack([theta / np.pi + 0.5, v[:, 1] / 0.2 + 0.5], 1)
    uv = (torch.from_numpy(vt).float(), torch.from_numpy(f))
    return flame, texture, uv


def identity_specs(references: int = 10, degraded: int = 100):
    return plan_identity("id_00001", 0, references, degraded, SyntheticBank())


def render_plan(flame, texture, uv, specs):
    out = []
    shape = torch.zeros(100)
    for start in range(0, len(specs), BATCH):
        out += render_hints_batch(flame, texture, shape, specs[start:start + BATCH], size=512, uv=uv)
    return out


@pytest.fixture(scope="module")
def head():
    return flame_sized_head()


def test_mesh_is_flame_sized(head):
    flame, _, _ = head
    assert 4500 <= flame.v_template.shape[0] <= 5600 and 9000 <= flame.faces.shape[0] <= 11000   # FLAME: 5023, 9976


def test_hints_of_one_identity(benchmark, head):
    flame, texture, uv = head
    specs = identity_specs()
    with torch.inference_mode():
        hints = benchmark.pedantic(render_plan, args=(flame, texture, uv, specs), rounds=3, iterations=1)
    assert len(hints) == 110
    assert all(h.caphuman.shape == (9, 512, 512) for h in hints[:3])

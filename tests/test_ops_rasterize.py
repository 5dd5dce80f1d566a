"""synfiqa::rasterize: the C++ kernel against its pure-torch twin (bit for bit), and both
against independent values: exact rational inside tests (fractions.Fraction), the pixel-centre
formula, occlusion, shared edges, z behind the camera; opcheck and the fake kernel.

The first run compiles the C++ library (about a minute); later runs load it from the cache."""
from __future__ import annotations

import math
import random
from fractions import Fraction

import pytest
import torch

import synfiqa.ops as ops
from synfiqa.ops import loader


@pytest.fixture(scope="module", autouse=True)
def native_library():
    if not loader.ensure_cpu():
        pytest.fail(f"the native CPU library did not build: {loader.state('cpu').error}")


def both(verts, faces, height, width):
    """Native and twin results, asserted bit-identical; returns the native one."""
    native = ops.rasterize(verts, faces, height, width, impl="native")
    reference = ops.rasterize(verts, faces, height, width, impl="reference")
    for name, a, b in zip(("pix_to_face", "bary", "zbuf"), native, reference):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert torch.equal(a, b), f"{name}: {int((a != b).sum())} values differ"
    return native


def random_mesh(n, v, f, seed, spread=1.3, z=(-0.5, 2.0)):
    g = torch.Generator().manual_seed(seed)
    verts = torch.rand(n, v, 3, generator=g) * 2 * spread - spread
    verts[..., 2] = torch.rand(n, v, generator=g) * (z[1] - z[0]) + z[0]
    faces = torch.randint(0, v, (f, 3), generator=g)
    return verts, faces


def centre(row, col, height, width):
    """Independent pixel-centre formula, exact: ((W-1-2c)/S, (H-1-2r)/S), S = min(H, W)."""
    s = min(height, width)
    return Fraction(width - 1 - 2 * col, s), Fraction(height - 1 - 2 * row, s)


def cross(ax, ay, bx, by, px, py):
    """cross(b - a, p - a), exact."""
    return (bx - ax) * (py - ay) - (by - ay) * (px - ax)


def covers_exact(tri, px, py):
    """Is p + (eps, -eps^2) strictly inside tri (eps -> 0+)? Exact rationals: the documented tie
    rule (on an edge: the face on its +X side; on a horizontal edge: the face on its -Y side)."""
    (x0, y0), (x1, y1), (x2, y2) = tri
    area = cross(x0, y0, x1, y1, x2, y2)
    if area == 0:
        return False
    sign = 1 if area > 0 else -1
    for (ax, ay), (bx, by) in (((x0, y0), (x1, y1)), ((x1, y1), (x2, y2)), ((x2, y2), (x0, y0))):
        dx, dy = bx - ax, by - ay
        # cross(d, p + delta - a) = cross(d, p - a) + eps * cross(d, (1, 0)) + eps^2 * cross(d, (0, -1))
        terms = (cross(ax, ay, bx, by, px, py), -dy, -dx)
        leading = next((t for t in terms if t != 0), 0)
        if sign * leading <= 0:
            return False
    return True


def strictly_inside(tri, px, py):
    (x0, y0), (x1, y1), (x2, y2) = tri
    values = [cross(x0, y0, x1, y1, px, py), cross(x1, y1, x2, y2, px, py), cross(x2, y2, x0, y0, px, py)]
    return all(v > 0 for v in values) or all(v < 0 for v in values)


def single(tri_xy, z=1.0):
    verts = torch.tensor([[[float(x), float(y), z] for x, y in tri_xy]], dtype=torch.float32)
    return verts, torch.tensor([[0, 1, 2]])


# ---------------------------------------------------------------- native == twin

@pytest.mark.parametrize("n, height, width, seed", [(1, 37, 53, 0), (3, 37, 53, 1), (3, 53, 37, 2), (1, 64, 64, 3),
                                                    (2, 1, 7, 4), (2, 40, 40, 5)])
def test_native_equals_twin_bit_for_bit(n, height, width, seed):
    verts, faces = random_mesh(n, 60, 120, seed)  # overlapping, some behind the camera, some degenerate
    faces[:5, 1] = faces[:5, 0]  # zero-area faces
    out = both(verts, faces, height, width)
    assert 0.1 < float((out[0] >= 0).float().mean()) < 1.0  # (1 x 7: the long side spans [-7, 7])


def test_non_contiguous_verts_and_faces():
    verts, faces = random_mesh(3, 50, 80, 7)
    strided = torch.rand(3, 3, 50).transpose(1, 2)  # [3, 50, 3], not contiguous
    strided[:] = verts
    wide_faces = torch.zeros(80, 6, dtype=torch.int64)[:, ::2]
    wide_faces[:] = faces
    assert not strided.is_contiguous() and not wide_faces.is_contiguous()
    expected = both(verts, faces, 45, 31)
    got = both(strided, wide_faces, 45, 31)
    assert all(torch.equal(a, b) for a, b in zip(got, expected))
    # float64 and int32 inputs go through float32 / int64
    assert all(torch.equal(a, b) for a, b in zip(both(verts.double(), faces.int(), 45, 31), expected))


def test_batch_equals_singles_and_pix_to_face_is_packed():
    verts, faces = random_mesh(3, 40, 70, 8)
    batch = both(verts, faces, 33, 29)
    for i in range(3):
        one = both(verts[i : i + 1], faces, 33, 29)
        hit = one[0] >= 0
        assert torch.equal(batch[0][i : i + 1][hit], one[0][hit] + i * faces.shape[0])  # n * F + f
        assert torch.equal(batch[0][i : i + 1][~hit], one[0][~hit])
        assert torch.equal(batch[1][i : i + 1], one[1]) and torch.equal(batch[2][i : i + 1], one[2])


def test_background_is_minus_one_everywhere():
    verts, faces = single([(0.2, 0.2), (0.5, 0.2), (0.2, 0.5)])
    pix, bary, zbuf = both(verts, faces, 20, 20)
    background = pix < 0
    assert 0 < int((~background).sum()) < 400
    assert bool((bary[background] == -1).all()) and bool((zbuf[background] == -1).all())
    empty = both(verts, faces[:0], 5, 6)
    assert bool((empty[0] == -1).all()) and bool((empty[1] == -1).all()) and bool((empty[2] == -1).all())


# ---------------------------------------------------------------- independent values

def dyadic_triangle(rng, span=256, limit=1.2, odd=False):
    """Vertices k / span (odd k: on pixel centres when span = min(H, W), so edges run through them)."""
    def coordinate():
        k = rng.randint(-int(limit * span), int(limit * span))
        return Fraction(k | 1 if odd else k, span)
    return [(coordinate(), coordinate()) for _ in range(3)]


@pytest.mark.parametrize("height, width", [(64, 64), (32, 64), (64, 16)])
def test_coverage_equals_an_exact_rational_inside_test(height, width):
    """Dyadic vertices on power-of-two images: every float32 edge function is exact, so the
    kernel must cover exactly the centres the rational test puts inside, ties included."""
    rng = random.Random(height * 1000 + width)
    ties = 0
    for trial in range(12):
        tri = dyadic_triangle(rng, span=min(height, width), odd=True) if trial % 2 == 0 else dyadic_triangle(rng)
        verts, faces = single(tri)
        pix = both(verts, faces, height, width)[0][0]
        expected = torch.zeros(height, width, dtype=torch.bool)
        strict = 0
        for r in range(height):
            for c in range(width):
                px, py = centre(r, c, height, width)
                expected[r, c] = covers_exact(tri, px, py)
                strict += strictly_inside(tri, px, py)
        assert torch.equal(pix >= 0, expected), f"triangle {tri}"
        ties += int(expected.sum()) - strict
        if int(expected.sum()) == strict:  # no centre on an edge: the count is pytorch3d's strict one
            assert int((pix >= 0).sum()) == strict
    assert ties > 0  # the tie rule was exercised


def test_random_float_triangle_counts_match_the_strict_rational_count():
    """Arbitrary float32 vertices (no centre near an edge by construction of the check)."""
    rng = random.Random(5)
    height, width = 41, 57
    for _ in range(6):
        tri_f = [(rng.uniform(-1.3, 1.3), rng.uniform(-1.0, 1.0)) for _ in range(3)]
        verts, faces = single(tri_f)
        tri = [(Fraction(float(verts[0, k, 0])), Fraction(float(verts[0, k, 1]))) for k in range(3)]
        pix = both(verts, faces, height, width)[0][0]
        count = 0
        for r in range(height):
            for c in range(width):
                px, py = centre(r, c, height, width)
                inside = strictly_inside(tri, px, py)
                count += inside
                assert bool(pix[r, c] >= 0) == inside
        assert int((pix >= 0).sum()) == count


@pytest.mark.parametrize("height, width", [(37, 53), (53, 37), (16, 16)])
def test_pixel_centre_convention_a_tiny_triangle_covers_exactly_its_pixel(height, width):
    s = min(height, width)
    for row, col in [(0, 0), (0, width - 1), (height - 1, 0), (height // 3, width // 2), (height - 1, width - 1)]:
        x, y = (float(v) for v in centre(row, col, height, width))
        d = 0.3 / s
        for tri in ([(x - d, y - d), (x + d, y - d), (x, y + d)], [(x - d, y - d), (x, y + d), (x + d, y - d)]):
            pix = both(*single(tri), height, width)[0][0]
            assert (pix >= 0).nonzero().tolist() == [[row, col]]
    # +X is image left, +Y image up: a triangle in the NDC quadrant x > 0, y > 0 lands top-left
    pix = both(*single([(0.1, 0.1), (0.9, 0.1), (0.1, 0.9)]), height, width)[0][0]
    hit = (pix >= 0).nonzero().float().mean(0)
    assert hit[0] < height / 2 and hit[1] < width / 2


def test_barycentrics_sum_to_one_and_reproduce_the_pixel_centre():
    verts, faces = random_mesh(2, 30, 40, 11, z=(0.5, 3.0))
    height, width = 37, 53
    pix, bary, zbuf = both(verts, faces, height, width)
    n, r, c = (pix >= 0).nonzero(as_tuple=True)
    assert n.numel() > 300
    b = bary[n, r, c].double()
    assert torch.allclose(b.sum(-1), torch.ones_like(b[:, 0]), atol=1e-5)
    assert bool((b > 0).all())  # strictly inside (up to ties, where one is exactly 0)
    tri = verts.double()[n, faces[pix[n, r, c] % faces.shape[0]].T].permute(1, 0, 2)  # [K, 3, 3]
    point = (b.unsqueeze(-1) * tri).sum(1)
    s = min(height, width)
    assert torch.allclose(point[:, 0], (width - 1 - 2 * c).double() / s, atol=1e-5)
    assert torch.allclose(point[:, 1], (height - 1 - 2 * r).double() / s, atol=1e-5)
    assert torch.allclose(point[:, 2], zbuf[n, r, c].double(), atol=1e-5)


def test_occlusion_the_nearer_face_wins_in_either_order_and_ties_go_to_the_lower_index():
    near = [(-0.5, -0.5, 1.0), (0.6, -0.4, 1.0), (0.0, 0.7, 1.0)]
    far = [(-0.9, -0.9, 2.0), (0.9, -0.9, 2.0), (0.0, 0.9, 2.0)]
    for order in ((near, far), (far, near)):
        verts = torch.tensor([order[0] + order[1]])
        faces = torch.tensor([[0, 1, 2], [3, 4, 5]])
        pix, _, zbuf = both(verts, faces, 30, 30)
        near_index = 0 if order[0] is near else 1
        alone = both(torch.tensor([near]), torch.tensor([[0, 1, 2]]), 30, 30)[0][0] >= 0
        assert bool((pix[0][alone] == near_index).all())
        assert bool((pix[0][(pix[0] >= 0) & ~alone] == 1 - near_index).all())
        assert torch.allclose(zbuf[0][alone], torch.ones(()), atol=1e-6)
    # the same face twice: equal z everywhere, the lower index wins
    verts = torch.tensor([near + near])
    pix = both(verts, torch.tensor([[3, 4, 5], [0, 1, 2]]), 30, 30)[0]
    assert bool((pix[pix >= 0] == 0).all())


def partition_check(verts_xy, faces, height, width):
    """Each face alone, then together: no pixel centre is covered twice, the union is kept."""
    verts = torch.tensor([[[x, y, 1.0] for x, y in verts_xy]])
    faces = torch.tensor(faces)
    counts = torch.zeros(height, width, dtype=torch.int64)
    for f in range(faces.shape[0]):
        counts += (both(verts, faces[f : f + 1], height, width)[0][0] >= 0).long()
    together = both(verts, faces, height, width)[0][0]
    assert int(counts.max()) == 1, "a pixel centre covered twice"
    assert torch.equal(counts == 1, together >= 0)
    return counts


@pytest.mark.parametrize("flip", [False, True])
def test_shared_edges_cover_every_centre_exactly_once(flip):
    h = w = 16
    # a square split on its diagonal; the diagonal runs exactly through pixel centres
    quad = [(-0.75, -0.75), (0.75, -0.75), (0.75, 0.75), (-0.75, 0.75)]
    faces = [[0, 1, 2], [2, 3, 0] if not flip else [0, 3, 2]]  # same or mixed winding
    counts = partition_check(quad, faces, h, w)
    inside = [(r, c) for r in range(h) for c in range(w)
              if all(abs(v) < Fraction(3, 4) for v in centre(r, c, h, w))]
    assert int(counts.sum()) == len(inside) == 144
    # a diamond split on a horizontal edge through a row of centres (y = 1/16)
    diamond = [(0.0, 0.8125), (-0.6, 0.0625), (0.6, 0.0625), (0.0, -0.6875)]
    counts = partition_check(diamond, [[0, 1, 2], [1, 3, 2] if not flip else [1, 2, 3]], h, w)
    row = [r for r in range(h) if centre(r, 0, h, w)[1] == Fraction(1, 16)][0]
    assert int(counts[row].sum()) > 0
    # a closed fan of 6 faces around a vertex exactly on a pixel centre
    cx, cy = (float(v) for v in centre(7, 9, h, w))
    ring = [(cx + 0.5 * math.cos(k * math.pi / 3), cy + 0.5 * math.sin(k * math.pi / 3)) for k in range(6)]
    fan = [[6, k, (k + 1) % 6] if (k % 2 == 0 or not flip) else [6, (k + 1) % 6, k] for k in range(6)]
    counts = partition_check(ring + [(cx, cy)], fan, h, w)
    assert int(counts[7, 9]) == 1


def test_degenerate_faces_cover_nothing():
    verts = torch.tensor([[[-0.5, -0.5, 1.0], [0.5, 0.5, 1.0], [0.0, 0.0, 1.0], [0.7, -0.6, 1.0]]])
    faces = torch.tensor([[0, 1, 2],  # collinear
                          [0, 0, 3],  # repeated vertex
                          [3, 3, 3]])
    pix = both(verts, faces, 25, 25)[0]
    assert bool((pix == -1).all())


def test_z_behind_the_camera():
    tri = [(-0.8, -0.8), (0.8, -0.8), (0.0, 0.8)]
    # all behind: nothing
    assert bool((both(*single(tri, z=-1.0), 24, 24)[0] == -1).all())
    # crossing z = 0 (z = y): covered only where the interpolated z >= 0
    verts = torch.tensor([[[x, y, y] for x, y in tri]])
    pix, _, zbuf = both(verts, torch.tensor([[0, 1, 2]]), 24, 24)
    alone = both(*single(tri), 24, 24)[0][0] >= 0
    for r in range(24):
        y = (24 - 1 - 2 * r) / 24
        row = pix[0, r][alone[r]]
        if row.numel() and abs(y) > 1e-3:
            assert bool((row >= 0).all()) == (y > 0)
    assert bool((zbuf[pix >= 0] >= 0).all())
    # a far face shows where a nearer face is behind the camera
    verts = torch.tensor([[[x, y, -0.5] for x, y in tri] + [[x, y, 5.0] for x, y in tri]])
    pix = both(verts, torch.tensor([[0, 1, 2], [3, 4, 5]]), 24, 24)[0]
    assert torch.equal(pix[0] >= 0, alone) and bool((pix[0][alone] == 1).all())


# ---------------------------------------------------------------- registration, wrapper

def test_opcheck_on_cpu():
    verts, faces = random_mesh(2, 20, 30, 3)
    torch.library.opcheck(torch.ops.synfiqa.rasterize.default, (verts, faces, 13, 17))
    torch.library.opcheck(torch.ops.synfiqa.rasterize.default, (verts[:1], faces[:0], 4, 5))


def test_fake_kernel_shapes_and_dtypes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        verts = torch.empty(4, 100, 3)
        faces = torch.empty(50, 3, dtype=torch.int64)
        pix, bary, zbuf = torch.ops.synfiqa.rasterize(verts, faces, 31, 45)
    assert pix.shape == (4, 31, 45) and pix.dtype == torch.int64
    assert bary.shape == (4, 31, 45, 3) and bary.dtype == torch.float32
    assert zbuf.shape == (4, 31, 45) and zbuf.dtype == torch.float32


def test_wrapper_validation():
    verts, faces = random_mesh(1, 10, 5, 0)
    with pytest.raises(ValueError, match="faces must index"):
        ops.rasterize(verts, torch.tensor([[0, 1, 10]]), 8, 8)
    with pytest.raises(ValueError, match="NaN"):
        bad = verts.clone()
        bad[0, 0, 0] = float("nan")
        ops.rasterize(bad, faces, 8, 8)
    with pytest.raises(ValueError, match="verts must be"):
        ops.rasterize(verts[0], faces, 8, 8)
    with pytest.raises(TypeError, match="faces must be an integer"):
        ops.rasterize(verts, faces.float(), 8, 8)
    with pytest.raises(ValueError, match="height"):
        ops.rasterize(verts, faces, 0, 8)
    with pytest.raises(ValueError, match="impl"):
        ops.rasterize(verts, faces, 8, 8, impl="fast")


def test_auto_falls_back_to_the_twin_when_native_is_disabled(monkeypatch):
    verts, faces = random_mesh(1, 20, 30, 4)
    monkeypatch.setenv("SYNFIQA_NO_NATIVE_OPS", "1")
    auto = ops.rasterize(verts, faces, 19, 23)
    assert all(torch.equal(a, b) for a, b in zip(auto, ops.rasterize(verts, faces, 19, 23, impl="reference")))


# ---------------------------------------------------------------- pytorch3d (opt-in)

def test_matches_pytorch3d_rasterize_meshes_when_installed():
    pytest.importorskip("pytorch3d")
    from pytorch3d.renderer.mesh.rasterize_meshes import rasterize_meshes
    from pytorch3d.structures import Meshes

    verts, faces = random_mesh(2, 60, 120, 21, z=(0.5, 3.0))
    height, width = 37, 53
    pix, bary, zbuf = ops.rasterize(verts, faces, height, width, impl="native")
    meshes = Meshes(verts=list(verts), faces=[faces, faces])
    p3_pix, p3_z, p3_bary, _ = rasterize_meshes(meshes, image_size=(height, width), blur_radius=0.0,
                                                faces_per_pixel=1, bin_size=0, perspective_correct=False)
    agree = (pix == p3_pix[..., 0]).float().mean()
    assert float(agree) > 0.999  # only centres exactly on an edge or equal-z ties may differ
    same = pix == p3_pix[..., 0]
    assert torch.allclose(zbuf[same], p3_z[..., 0][same], atol=1e-6)
    assert torch.allclose(bary[same], p3_bary[..., 0, :][same], atol=1e-6)

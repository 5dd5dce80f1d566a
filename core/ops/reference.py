"""The pure-torch twins of the compiled ops, exactly one per op:

    blur_resample  -> blur_resample_reference
    ref_cosine     -> ref_cosine_reference
    greedy_unique  -> greedy_unique_reference
    rasterize      -> rasterize_reference

Each is the definition its native kernel must match, the oracle of the parity tests
(tests/test_ops.py), and what `synfiqa.ops` runs when no native build is available
(impl="reference", SYNFIQA_NO_NATIVE_OPS=1, or a failed build). Code that needs "the
reference" calls the op wrapper with impl="reference" rather than keeping a copy.

They take already-validated arguments (see synfiqa.ops for the public wrappers). The slow
baselines the ops are timed against (the plain greedy loop, per-sample loops, kornia,
scipy + PIL, OpenCV) are not twins and live with the benchmarks, in
tests/benchmarks/baselines.py.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def downscaled_size(height: int, width: int, factor: float) -> tuple[int, int]:
    """The size of the downscaled image: round(side / factor) (Python's round, half to
    even), at least 1."""
    return max(1, round(height / factor)), max(1, round(width / factor))


def blur_resample_reference(images: torch.Tensor, kernels: torch.Tensor, factors: torch.Tensor,
                            out_size: tuple[int, int] | None = None) -> torch.Tensor:
    """Blur, downscale, resize back; the definition of `blur_resample`.

    1. blur: per-sample correlation (F.conv2d) with the sample's KxK kernel, reflect padding
       (no edge repeat), each channel alike;
    2. downscale to `downscaled_size(H, W, factor)` with torch's antialiased bicubic
       (F.interpolate bicubic, antialias=True, align_corners=False: PIL's filter, Keys
       a = -0.5, stretched by the scale, clipped at the border and renormalised);
    3. resize to `out_size` (default: the input size) with torch's bicubic (a = -0.75,
       align_corners=False, border indices clamped);
    4. round half to even, clamp to [0, 255], uint8.
    All arithmetic in float32.
    """
    n, channels, height, width = images.shape
    out_h, out_w = (height, width) if out_size is None else (int(out_size[0]), int(out_size[1]))
    if n == 0:
        return torch.empty((0, channels, out_h, out_w), dtype=torch.uint8, device=images.device)
    pad = kernels.shape[-1] // 2
    x = images.to(torch.float32)
    padded = F.pad(x.reshape(1, n * channels, height, width), (pad, pad, pad, pad), mode="reflect")
    weight = kernels.to(torch.float32).repeat_interleave(channels, dim=0)[:, None]
    blurred = F.conv2d(padded, weight, groups=n * channels).reshape(n, channels, height, width)
    out = torch.empty((n, channels, out_h, out_w), dtype=torch.float32, device=images.device)
    for i in range(n):
        small = downscaled_size(height, width, float(factors[i]))
        down = F.interpolate(blurred[i : i + 1], size=small, mode="bicubic", antialias=True, align_corners=False)
        out[i] = F.interpolate(down, size=(out_h, out_w), mode="bicubic", align_corners=False)[0]
    return out.round().clamp(0, 255).to(torch.uint8)


def ref_cosine_reference(samples: torch.Tensor, sample_ids: torch.Tensor, references: torch.Tensor,
                         reference_ids: torch.Tensor) -> torch.Tensor:
    """Cosine of each sample to the plain mean (float64, not re-normalised) of the references
    of its identity; NaN where the identity has no reference. A zero vector gives 0 (the
    denominator is clamped at 1e-12, as in synfiqa.mr_label.reference_cosine). The result has
    the samples' dtype."""
    n = samples.shape[0]
    out = torch.full((n,), float("nan"), dtype=samples.dtype, device=samples.device)
    if n == 0 or references.shape[0] == 0:
        return out
    identities, row_of_reference = torch.unique(reference_ids, sorted=True, return_inverse=True)
    sums = torch.zeros((len(identities), samples.shape[1]), dtype=torch.float64, device=samples.device)
    sums.index_add_(0, row_of_reference, references.to(torch.float64))
    counts = torch.bincount(row_of_reference, minlength=len(identities)).to(torch.float64)
    means = sums / counts[:, None]
    row = torch.searchsorted(identities, sample_ids).clamp(max=len(identities) - 1)
    found = identities[row] == sample_ids
    x = samples[found].to(torch.float64)
    mean = means[row[found]]
    cosine = (x * mean).sum(dim=1) / (x.norm(dim=1) * mean.norm(dim=1)).clamp_min(1e-12)
    out[found] = cosine.to(samples.dtype)
    return out


# ---------------------------------------------------------------- greedy_unique
#
# Precision: float64, in one fully specified evaluation order, so that the twin and the
# compiled CPU op (csrc/cpu/greedy_unique.cpp) judge a cosine at the threshold alike, bit for
# bit. The cosine of rows i and j that greedy_unique compares with the threshold is the
# *ordered cosine*:
#
#     n_i    = max(sqrt(x_i0^2 + x_i1^2 + ... + x_i(D-1)^2), 1e-12)
#     u_ik   = x_ik / n_i
#     cos_ij = u_i0 u_j0 + u_i1 u_j1 + ... + u_i(D-1) u_j(D-1)
#
# in float64 (float32 input widened exactly), each product rounded on its own (no fused
# multiply-add) and each sum taken left to right in index order: every step is one IEEE
# operation, so any machine, compiler or vector width gives the same bits. The C++ op
# decides most pairs with integer copies and rigorous error bounds (the true cosine is then
# far from the threshold, so every float64 evaluation agrees) and computes exactly this
# formula for any pair within 1e-12 + 4 D 2^-53 of it. The twin computes the cosines with a
# float64 matrix product (within D 2^-53 of exact, as is the ordered cosine) and recomputes,
# in the ordered form, every cosine the product puts within greedy_margin(D) of the
# threshold. So both judge every pair by the ordered cosine, on any input. float32 was not
# chosen: rounding every cosine to float32 moves it by up to ~3e-8, and the kept set would depend
# on which float32 summation order a machine's BLAS happens to use. (The CUDA kernel still
# compares cuBLAS float64 GEMM cosines: it can differ only for a cosine within ~D 2^-53 of
# the threshold.)

# Rows decided per step by the blocked twin.
GREEDY_BLOCK = 512
# Ordered sums run on chunks of rows of at most this many values (32 MiB in float64).
_ORDERED_VALUES = 1 << 22


def _chunk_rows(d: int) -> int:
    return max(1, _ORDERED_VALUES // max(d, 1))


def greedy_margin(d: int) -> float:
    """How far from the threshold a float64 matrix-product cosine of D-dimensional unit rows
    must be for its side of the threshold to be the ordered cosine's too: both lie within
    D * 2^-53 (to first order) of the exact value; 1e-9 on top is a wide safety factor."""
    return 1e-9 + 4.0 * d * torch.finfo(torch.float64).eps


def _ordered_row_sums(products: torch.Tensor) -> torch.Tensor:
    """[P, D] -> [P]: each row summed left to right, one float64 addition at a time."""
    columns = products.T.contiguous()
    total = torch.zeros(products.shape[0], dtype=torch.float64, device=products.device)
    for column in columns:
        total += column
    return total


def unit_rows(embeddings: torch.Tensor) -> torch.Tensor:
    """float64 rows u_i = x_i / max(|x_i|, 1e-12), with |x_i| the ordered norm (squares
    rounded one by one, summed in index order, then sqrt): the rows of the ordered cosine."""
    x = embeddings.to(torch.float64)
    norms = torch.empty(x.shape[0], dtype=torch.float64, device=x.device)
    chunk = _chunk_rows(x.shape[1])
    for start in range(0, x.shape[0], chunk):
        rows = x[start : start + chunk]
        norms[start : start + rows.shape[0]] = _ordered_row_sums(rows * rows).sqrt()
    return x / norms.clamp_min(1e-12)[:, None]


def ordered_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[P, D] x [P, D] float64 -> [P]: a_p . b_p with each product rounded on its own and
    the products summed in index order (the ordered cosine, given unit_rows)."""
    out = torch.empty(a.shape[0], dtype=torch.float64, device=a.device)
    chunk = _chunk_rows(a.shape[1])
    for start in range(0, a.shape[0], chunk):
        out[start : start + chunk] = _ordered_row_sums(a[start : start + chunk] * b[start : start + chunk])
    return out


def greedy_cosines(rows: torch.Tensor, columns: torch.Tensor, threshold: float) -> torch.Tensor:
    """[R, C] cosines of unit rows (from `unit_rows`) as greedy_unique compares them with
    `threshold`: a float64 matrix product, with every entry within `greedy_margin` of the
    threshold replaced by the ordered cosine. So `greedy_cosines(...) > threshold` is the
    ordered cosine's verdict for every pair, and the values are the cosines to within
    float64 rounding."""
    cosines = rows @ columns.T
    near_rows, near_columns = ((cosines - threshold).abs() <= greedy_margin(rows.shape[1])).nonzero(as_tuple=True)
    chunk = _chunk_rows(rows.shape[1])
    for start in range(0, near_rows.numel(), chunk):  # pairs gathered a chunk at a time
        r, c = near_rows[start : start + chunk], near_columns[start : start + chunk]
        cosines[r, c] = ordered_dot(rows[r], columns[c])
    return cosines


def greedy_unique_reference(embeddings: torch.Tensor, threshold: float, block: int = GREEDY_BLOCK) -> torch.Tensor:
    """The Stage-1 greedy rule, the definition of `greedy_unique`: rows in order, row j kept
    unless a kept earlier row i has ordered cosine(i, j) > threshold. Decided a block of rows
    at a time: a row is dropped when a kept row of an earlier block exceeds the threshold, or
    a kept earlier row of its own block does. Memory O(block x N), never N x N."""
    unit = unit_rows(embeddings)
    n = unit.shape[0]
    kept = torch.zeros(n, dtype=torch.bool, device=embeddings.device)
    kept_rows = torch.empty_like(unit)  # kept rows, compacted in order
    kept_count = 0
    for start in range(0, n, block):
        rows = unit[start : start + block]
        dropped = torch.zeros(rows.shape[0], dtype=torch.bool, device=unit.device)
        for chunk in range(0, kept_count, 4 * block):
            earlier = kept_rows[chunk : min(kept_count, chunk + 4 * block)]
            dropped |= (greedy_cosines(rows, earlier, threshold) > threshold).any(dim=1)
        within = torch.tril(greedy_cosines(rows, rows, threshold) > threshold, diagonal=-1)
        # Only rows with an over-threshold earlier row of their own block need the
        # sequential rule; they are visited in order, so every earlier decision is final.
        decided = dropped.tolist()
        for r in (within.any(dim=1) & ~dropped).nonzero().flatten().tolist():
            decided[r] = any(not decided[c] for c in within[r].nonzero().flatten().tolist())
        keep_block = ~torch.tensor(decided, dtype=torch.bool, device=unit.device)
        kept[start : start + rows.shape[0]] = keep_block
        new_rows = rows[keep_block]
        kept_rows[kept_count : kept_count + new_rows.shape[0]] = new_rows
        kept_count += new_rows.shape[0]
    return kept


# ---------------------------------------------------------------- rasterize

RASTER_AREA_EPSILON = 1e-8  # pytorch3d's kEpsilon: faces with |area| <= it are skipped
_RASTER_CHUNK = 1 << 21  # (face, pixel) candidates per step of the twin


def rasterize_pixel_centres(size: int, other: int) -> torch.Tensor:
    """float32 [size]: the NDC coordinate of the centres of image index 0..size-1 along a
    side of `size` pixels when the other side has `other` (pytorch3d's PixToNonSquareNdc,
    evaluated at index size-1-i because +X points left and +Y up):

        ndc(j) = -o + (R * j + o) / size,  R = (size * 2) / other if size > other else 2,  o = R / 2

    so the shorter side spans [-1, 1] (the longer one [-R/2, R/2]); square: (size-1-2i)/size.
    Every operation in float32, in this order (the kernels' own)."""
    s1 = torch.tensor(float(size), dtype=torch.float32)
    if size > other:
        rng = (s1 * torch.tensor(2.0, dtype=torch.float32)) / torch.tensor(float(other), dtype=torch.float32)
    else:
        rng = torch.tensor(2.0, dtype=torch.float32)
    offset = rng / torch.tensor(2.0, dtype=torch.float32)
    j = (size - 1 - torch.arange(size, dtype=torch.int64)).to(torch.float32)
    return -offset + (rng * j + offset) / s1


def _pixel_span(lo: torch.Tensor, hi: torch.Tensor, size: int, other: int) -> tuple[torch.Tensor, torch.Tensor]:
    """First and last image index whose pixel centre can lie in [lo, hi] (a one-pixel margin
    makes it conservative: the exact test is per pixel); empty when first > last."""
    rng = 2.0 * size / other if size > other else 2.0
    offset = rng / 2.0
    i_lo = (torch.floor((lo.double() + offset) * size / rng - 0.5) - 1.0).clamp_min(0.0)
    i_hi = (torch.ceil((hi.double() + offset) * size / rng - 0.5) + 1.0).clamp_max(float(size - 1))
    empty = ~(i_lo <= i_hi)
    first = (size - 1 - i_hi.clamp(-1.0, float(size)).long())
    last = (size - 1 - i_lo.clamp(-1.0, float(size)).long())
    return torch.where(empty, 1, first), torch.where(empty, 0, last)


def _rasterize_faces(verts: torch.Tensor, faces: torch.Tensor, height: int, width: int) -> dict:
    """Per (mesh, face) set-up, [N, F] tensors: the canonical edges, the orientation, the
    area and the pixel bounding box, as the kernels compute them."""
    v = verts[:, faces]  # [N, F, 3 vertices, 3]
    x, y, z = v[..., 0], v[..., 1], v[..., 2]
    eps = torch.tensor(RASTER_AREA_EPSILON, dtype=torch.float32)
    area = (x[..., 2] - x[..., 0]) * (y[..., 1] - y[..., 0]) - (y[..., 2] - y[..., 0]) * (x[..., 1] - x[..., 0])
    zmax = torch.maximum(z[..., 0], torch.maximum(z[..., 1], z[..., 2]))
    valid = ~((area <= eps) & (area >= -eps)) & ~(zmax < 0)
    first, second = [1, 2, 0], [2, 0, 1]  # edges v1v2, v2v0, v0v1 (pytorch3d's w0, w1, w2)
    ax, ay, bx, by = x[..., first], y[..., first], x[..., second], y[..., second]  # [N, F, 3]
    swap = (ay > by) | ((ay == by) & (ax > bx))
    ax, bx = torch.where(swap, bx, ax), torch.where(swap, ax, bx)
    ay, by = torch.where(swap, by, ay), torch.where(swap, ay, by)
    sign = torch.where(swap, torch.tensor(-1.0), torch.tensor(1.0))
    accept_zero = (sign > 0) == (area > 0).unsqueeze(-1)
    c0, c1 = _pixel_span(x.amin(-1), x.amax(-1), width, height)
    r0, r1 = _pixel_span(y.amin(-1), y.amax(-1), height, width)
    valid &= (r0 <= r1) & (c0 <= c1)
    return {"ax": ax, "ay": ay, "dx": bx - ax, "dy": by - ay, "sign": sign, "accept_zero": accept_zero,
            "area_eps": area + eps, "z": z, "valid": valid, "r0": r0, "r1": r1, "c0": c0, "c1": c1}


def _rasterize_candidates(setup: dict, mesh: torch.Tensor, face: torch.Tensor, row: torch.Tensor,
                          col: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor):
    """(inside, barycentrics [K, 3], pz) of face `face` of mesh `mesh` at pixel (row, col)."""
    def take(name):
        return setup[name][mesh, face]

    px, py = xs[col].unsqueeze(-1), ys[row].unsqueeze(-1)
    ax, ay, dx, dy = take("ax"), take("ay"), take("dx"), take("dy")
    e = (px - ax) * dy - (py - ay) * dx  # [K, 3], canonical edge functions
    inside = torch.where(take("accept_zero"), e >= 0, e < 0).all(-1)
    b = (e * take("sign")) / take("area_eps").unsqueeze(-1)
    z = take("z")
    pz = (b[:, 0] * z[:, 0] + b[:, 1] * z[:, 1]) + b[:, 2] * z[:, 2]
    return inside, b, pz


def rasterize_reference(verts: torch.Tensor, faces: torch.Tensor, height: int,
                        width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The definition of `rasterize`: pytorch3d's `rasterize_meshes` as DECA calls it
    (faces_per_pixel 1, blur_radius 0, perspective_correct False, clip_barycentric_coords
    False, no culling), for N meshes sharing `faces`, with deterministic ties.

    verts float32 [N, V, 3] in NDC (+X left, +Y up, +Z into the screen), faces int64 [F, 3].
    Returns pix_to_face int64 [N, H, W] (the *packed* index n * F + f, as pytorch3d; -1 on
    the background), bary float32 [N, H, W, 3] (-1 on the background) and zbuf float32
    [N, H, W] (-1 on the background). All arithmetic in float32, one operation at a time:

    - pixel (r, c) has its centre at (xs[c], ys[r]), see `rasterize_pixel_centres`;
    - area = (x2-x0)(y1-y0) - (y2-y0)(x1-x0) (pytorch3d's EdgeFunctionForward(v2, v0, v1));
      |area| <= 1e-8 (zero-area, degenerate faces): the face covers nothing; max z < 0: nothing;
    - edge k = (v1, v2), (v2, v0), (v0, v1) has the endpoints (a, b) ordered by (y, x), with
      s_k = -1 where that swapped them, else +1, and E_k = (px - a.x)(b.y - a.y) - (py - a.y)(b.x - a.x):
      a shared edge gives the two faces the same E up to sign, bit for bit;
    - inside iff every s_k sign(area) E_k > 0 (pytorch3d's strict "all barycentrics > 0"),
      except that E_k == 0 (the centre exactly on edge k) counts as inside iff s_k sign(area) > 0.
      That is the strict test at the centre moved by (+eps, -eps^2) in NDC: a centre on an
      edge goes to the face on its +X side (image left), on a horizontal edge to the face on
      its -Y side (image below), on a vertex to exactly one face of a closed fan. So faces
      that tile a region cover each pixel centre in it exactly once (pytorch3d covers an
      exactly-on-edge centre by neither face; that is the only difference);
    - bary_k = (E_k s_k) / (area + 1e-8) (pytorch3d's BarycentricCoordinatesForward);
    - pz = (b0 z0 + b1 z1) + b2 z2; a pixel with pz < 0 (behind the camera), or not finite,
      is skipped for that face (pytorch3d);
    - the face with the smallest pz wins (nearest; pytorch3d's camera looks down +Z); equal
      pz: the lowest face index. zbuf = its pz, bary = its barycentrics (not clipped,
      not renormalised: they sum to 1 within float32 rounding).
    """
    n, _, _ = verts.shape
    f_count = faces.shape[0]
    device = verts.device
    pix_to_face = torch.full((n, height, width), -1, dtype=torch.int64, device=device)
    bary = torch.full((n, height, width, 3), -1.0, dtype=torch.float32, device=device)
    zbuf = torch.full((n, height, width), -1.0, dtype=torch.float32, device=device)
    if n == 0 or f_count == 0:
        return pix_to_face, bary, zbuf
    verts = verts.to(torch.float32)
    xs = rasterize_pixel_centres(width, height).to(device)
    ys = rasterize_pixel_centres(height, width).to(device)
    setup = _rasterize_faces(verts, faces, height, width)
    mesh_of, face_of = setup["valid"].nonzero(as_tuple=True)  # (mesh, face) pairs, mesh-major, faces ascending
    rows = (setup["r1"] - setup["r0"] + 1)[mesh_of, face_of]
    cols = (setup["c1"] - setup["c0"] + 1)[mesh_of, face_of]
    counts = rows * cols
    ends = counts.cumsum(0)
    starts = ends - counts
    no_key = torch.iinfo(torch.int64).max
    best = torch.full((n * height * width,), no_key, dtype=torch.int64, device=device)
    first = 0
    while first < counts.numel():
        # a run of faces with at most _RASTER_CHUNK candidates (at least one face)
        limit = int(starts[first]) + _RASTER_CHUNK
        last = max(first + 1, int(torch.searchsorted(ends, torch.tensor(limit, device=device), right=True)))
        owner = torch.repeat_interleave(torch.arange(first, last, device=device), counts[first:last])
        local = torch.arange(owner.numel(), device=device) + int(starts[first]) - starts[owner]
        mesh, face = mesh_of[owner], face_of[owner]
        row = setup["r0"][mesh, face] + local // cols[owner]
        col = setup["c0"][mesh, face] + local % cols[owner]
        inside, _, pz = _rasterize_candidates(setup, mesh, face, row, col, xs, ys)
        keep = inside & (pz >= 0) & (pz < float("inf"))
        pz_key = torch.where(pz == 0, torch.zeros_like(pz), pz)  # -0.0 ties with +0.0
        key = (pz_key.view(torch.int32).to(torch.int64) << 32) | face
        pixel = (mesh * height + row) * width + col
        best.scatter_reduce_(0, pixel[keep], key[keep], reduce="amin")
        first = last
    hit = (best != no_key).nonzero(as_tuple=True)[0]
    face = best[hit] & 0xFFFFFFFF
    mesh, rest = hit // (height * width), hit % (height * width)
    row, col = rest // width, rest % width
    _, b, pz = _rasterize_candidates(setup, mesh, face, row, col, xs, ys)
    pix_to_face.view(-1)[hit] = mesh * f_count + face
    bary.view(-1, 3)[hit] = b
    zbuf.view(-1)[hit] = pz
    return pix_to_face, bary, zbuf

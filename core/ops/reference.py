"""The pure-torch twins of the compiled ops, exactly one per op:

    blur_resample  -> blur_resample_reference
    ref_cosine     -> ref_cosine_reference
    greedy_unique  -> greedy_unique_reference

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

"""Pure-torch twins of the compiled ops: the definition each native kernel must match,
its test oracle, and the fallback when no native build is available.

They take already-validated arguments (see synfiqa.ops for the public wrappers).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

# Rows decided per step by the blocked reference of greedy_unique.
GREEDY_BLOCK = 512


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
    denominator is clamped at 1e-12, as in synfiqa.scoring.reference_cosine). The result has
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


def unit_rows(embeddings: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit length in float64: x / max(|x|, 1e-12)."""
    x = embeddings.to(torch.float64)
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def greedy_unique_loop(embeddings: torch.Tensor, threshold: float) -> torch.Tensor:
    """The plain greedy loop of Stage 1: for each kept i in order, drop every later kept j
    with cosine(i, j) > threshold (cosines in float64). O(N^2 D); the test oracle."""
    unit = unit_rows(embeddings)
    kept = torch.ones(unit.shape[0], dtype=torch.bool, device=embeddings.device)
    for i in range(unit.shape[0]):
        if kept[i]:
            later = unit[i + 1 :] @ unit[i]
            kept[i + 1 :] &= later <= threshold
    return kept


def greedy_unique_reference(embeddings: torch.Tensor, threshold: float, block: int = GREEDY_BLOCK) -> torch.Tensor:
    """The same kept set as `greedy_unique_loop`, decided a block of rows at a time:
    a row is dropped when a kept row of an earlier block exceeds the threshold, or a kept
    earlier row of its own block does. Memory O(block x N), never N x N."""
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
            dropped |= ((rows @ earlier.T) > threshold).any(dim=1)
        within = torch.tril((rows @ rows.T) > threshold, diagonal=-1)
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

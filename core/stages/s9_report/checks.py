"""The report's checks, as pure functions of a build's numbers (no images, no models):

* recorded severity: how strongly a degraded sample was degraded, from the intensities the
  manifest records for it;
* Spearman's rank correlation, and the rule that flags an identity whose labels do not fall
  as its samples' recorded severity rises;
* the rule that flags a reference which is itself of low quality.

Every threshold is a named constant here and is documented in docs/report.md.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# an identity is flagged when rho(score, severity) > -max(MIN_FALL, critical value at n):
# the score must fall with severity at least "moderately" (|rho| >= 0.3, the usual lower
# bound of a moderate rank correlation) and by more than chance allows for n samples
# (one-sided test of rho = 0 at ALPHA)
MIN_FALL = 0.3
ALPHA = 0.05
MIN_SAMPLES = 5          # fewer samples (or constant severity/score): rho is not measured
# a reference is flagged when the photo it came from has a shorter side under this many pixels
# (twice the 112-pixel crop: below it the crop is upsampled from fewer than 56 pixels per half
# face, i.e. a small face), or when its face embedding is further from the identity's other
# references than the embedder's calibrated same-identity threshold
MIN_SOURCE_SIDE = 224
POSE_PREFIX = "pose."    # Stage-2 pose, recorded beside the degradations but not a degradation


def severity_axes(axes: list[str]) -> list[str]:
    """The degradation axes of a build's severity axes (summary.json "severity_axes": every
    severity axis of every degradation in the chain, as "<step>.<axis>", plus |yaw|): the pose
    is Stage 2's, not a degradation's, so it is left out."""
    return [axis for axis in axes if not axis.startswith(POSE_PREFIX)]


def average_ranks(values) -> np.ndarray:
    """1-based ranks, ascending; tied values share their mean rank (as sd's ranks, method.md 5.2)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return np.zeros(0)
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    starts = np.r_[True, sorted_values[1:] != sorted_values[:-1]]   # first element of each run of ties
    group = np.cumsum(starts) - 1                                    # run number of each sorted element
    bounds = np.r_[np.flatnonzero(starts), len(values)]              # run i spans sorted positions [b_i, b_i+1)
    mean_rank = (bounds[:-1] + 1 + bounds[1:]) / 2                   # mean of the 1-based ranks b_i+1 .. b_i+1
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = mean_rank[group]
    return ranks


def recorded_severity(params: list[dict[str, float]], axes: list[str]) -> np.ndarray:
    """One severity in (0, 1] per sample: for every degradation axis (larger = worse, as every
    degradation declares its severity_axes), the sample's rank over all samples given divided by
    their count; the severity is the mean over the axes. A sample degraded hardest on every axis
    gets 1. Ranks make axes of different units (a blur sigma, a downscale factor, a JPEG
    quality) comparable, as the sd score does; the mean (not sd's minimum) lets every axis count.
    NaN for a sample that lacks an axis."""
    count = len(params)
    if count == 0 or not axes:
        return np.full(count, np.nan)
    columns = []
    for axis in axes:
        column = np.array([float(p.get(axis, np.nan)) for p in params], dtype=np.float64)
        ranks = np.full(count, np.nan)
        known = np.isfinite(column)
        ranks[known] = average_ranks(column[known]) / known.sum()
        columns.append(ranks)
    return np.mean(columns, axis=0)


def spearman(x, y) -> float:
    """Spearman's rho: Pearson's correlation of the average ranks. NaN when fewer than two
    pairs or when either side is constant."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) != len(y):
        raise ValueError("spearman: x and y differ in length")
    if len(x) < 2:
        return math.nan
    rx, ry = average_ranks(x) - (len(x) + 1) / 2, average_ranks(y) - (len(y) + 1) / 2
    denominator = math.sqrt(float(np.dot(rx, rx)) * float(np.dot(ry, ry)))
    return math.nan if denominator == 0 else float(np.dot(rx, ry) / denominator)


def critical_rho(count: int, alpha: float = ALPHA) -> float:
    """The rho above which a one-sided test rejects rho = 0 at `alpha` for `count` pairs, from
    the t approximation t = rho sqrt((n - 2) / (1 - rho^2)) with n - 2 degrees of freedom."""
    from scipy.stats import t

    quantile = float(t.ppf(1 - alpha, count - 2))
    return quantile / math.sqrt(count - 2 + quantile ** 2)


def fall_threshold(count: int) -> float:
    """How strongly (as -rho) an identity's scores must fall with severity not to be flagged."""
    return max(MIN_FALL, critical_rho(count))


@dataclass
class SeverityAgreement:
    identity: str
    samples: int
    rho: float                  # Spearman(score, recorded severity): negative when labels follow severity
    threshold: float            # flagged when rho > -threshold
    per_axis: dict[str, float]  # Spearman(score, axis value) for each degradation axis

    @property
    def measured(self) -> bool:
        return math.isfinite(self.rho)

    @property
    def flagged(self) -> bool:
        return self.measured and self.rho > -self.threshold


def severity_agreement(identity: str, scores, severity, axis_values: dict[str, list[float]]) -> SeverityAgreement:
    """The check of one identity: its samples' scores against their recorded severity."""
    scores, severity = np.asarray(scores, dtype=np.float64), np.asarray(severity, dtype=np.float64)
    known = np.isfinite(scores) & np.isfinite(severity)
    count = int(known.sum())
    rho = spearman(scores[known], severity[known]) if count >= MIN_SAMPLES else math.nan
    threshold = fall_threshold(count) if count >= MIN_SAMPLES else math.nan
    per_axis = {}
    for axis, values in axis_values.items():
        values = np.asarray(values, dtype=np.float64)
        both = np.isfinite(scores) & np.isfinite(values)
        per_axis[axis] = spearman(scores[both], values[both]) if both.sum() >= MIN_SAMPLES else math.nan
    return SeverityAgreement(identity, count, rho, threshold, per_axis)


def leave_one_out_similarity(embeddings: np.ndarray) -> np.ndarray:
    """For each row: the cosine between its unit embedding and the mean of the identity's other
    unit embeddings (the fr formula of method.md 5.1, with the reference itself left out). NaN
    for an identity with a single reference."""
    embeddings = np.asarray(embeddings, dtype=np.float64)
    count = len(embeddings)
    if count < 2:
        return np.full(count, np.nan)
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    others = (unit.sum(axis=0, keepdims=True) - unit) / (count - 1)
    return np.sum(unit * others, axis=1) / np.linalg.norm(others, axis=1)


def reference_problems(source_size: tuple[int, int] | None, similarity: float,
                       same_identity_threshold: float | None) -> list[str]:
    """Why a reference is itself of low quality (empty when nothing is wrong)."""
    problems = []
    if source_size is not None and min(source_size) < MIN_SOURCE_SIDE:
        problems.append(f"small source photo ({source_size[0]}x{source_size[1]} px, shorter side "
                        f"< {MIN_SOURCE_SIDE})")
    if same_identity_threshold is not None and math.isfinite(similarity) and similarity < same_identity_threshold:
        problems.append(f"far from the other references (cosine {similarity:.3f} < {same_identity_threshold:.3f}, "
                        "the embedder's same-identity threshold)")
    return problems

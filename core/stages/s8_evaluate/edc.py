"""Error-versus-discard curves (EDC) and their areas, docs/method.md#7-evaluation-edc-and-pauc.

Inputs are per pair: a similarity score (higher = more alike; the angular distance
arccos(cos)/pi orders pairs the other way round and gives the same curves), whether the
pair is genuine, and the pair quality (the min of its two image qualities; higher = better).

Protocol A (CR-FIQA / MR-FIQA tables, as CR-FIQA's ERC/erc.py computes them)
    Pairs sorted by quality (stable: equal qualities keep their input order). At discard
    level k (u = k/20, k = 0..19) the floor(u*N) lowest pairs are dropped; on the rest the
    threshold is recomputed: among the distinct remaining scores t, the one whose FMR
    (impostors with score >= t) is closest to the target, the lowest such t when several
    tie. With fewer than about 1/FMR impostor pairs the closest reachable FMR is 0.
    FNMR(u) = genuines with score <= t over the genuines left: a genuine pair exactly at
    the threshold is a non-match (``tie_rule="erc"``, the default, as erc.py: in distances,
    a genuine matches only if d < tau). ``tie_rule="inclusive"`` (synfiqa before issue 16)
    counts it as a match, the rule the FMR of that threshold uses.
    Reported: FNMR(u); pAUC = trapezoid area over [0, limit] / (limit * FNMR(0)), the MR-FIQA
    number (1 = no gain over not discarding); the unnormalised area; and the AUC over the
    whole grid [0, 0.95], the number CR-FIQA's own script prints.

Protocol B (ISO/IEC 29794-1:2024, Schlett et al.)
    One threshold from the impostor scores of the full set. ``threshold_rule="iso"`` (the
    default): with the n impostors sorted ascending and k = floor(n * FMR), tau = imp[n - k]
    (the next distinct impostor score up when imp[n - k] ties with imp[n - k - 1]; just above
    every impostor when there is none or k = 0), and a pair matches iff score >= tau: tau is
    the smallest impostor score s with #{impostor >= s} <= k. ``threshold_rule="kth-strict"``
    (synfiqa before issue 16): tau is the (k+1)-th highest impostor score and a pair matches
    iff score > tau; the same FMR, but genuines between that impostor and the next distinct
    one up match. The curve runs over genuine pairs only: the x axis is the fraction of
    genuine pairs discarded, and pairs of equal quality leave together (points only at
    boundaries between distinct quality values). Area: stepwise (left-constant) up to the
    discard limit, optionally minus the area under the theoretical best line
    max(0, E0 - x): A*(L) = E0^2/2 - max(0, E0 - L)^2/2.

Everything is sorted once and counted with cumulative sums, so a million pairs take well
under a second (see tests/benchmarks/test_bench_evaluate.py).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

FMR_TARGETS = (1e-2, 1e-3, 1e-4)
PROTOCOL_A_LEVELS = 20          # discard fractions k / 20 for k = 0..19: 0, 0.05, ..., 0.95
DEFAULT_DISCARD_LIMIT = 0.3     # the MR-FIQA tables report pAUC at 30 % discard
PROTOCOLS = ("A", "B")
TIE_RULES = ("erc", "inclusive")              # protocol A: a genuine pair exactly at the threshold
THRESHOLD_RULES = ("iso", "kth-strict")       # protocol B: the fixed threshold
QUALITY_SORTS = ("stable", "numpy-default")   # protocol A: the order of pairs of equal quality


class EvaluationWarning(UserWarning):
    """A number could not be computed (it is NaN) or means less than it seems."""


@dataclass(frozen=True)
class CurveResult:
    """One EDC curve (one quality method, one FMR target) and its areas.

    ``value`` is the number a table shows: the normalised pAUC in protocol A; the stepwise
    area (minus the theoretical best when asked) in protocol B. Undefined numbers are NaN."""

    protocol: str
    fmr_target: float
    discard_limit: float
    discard: np.ndarray       # discard fractions, ascending, starting at 0
    fnmr: np.ndarray          # FNMR at each discard fraction
    threshold: np.ndarray     # A: one per discard level; B: the one fixed threshold
    achieved_fmr: np.ndarray  # the FMR each threshold gives (same shape as threshold)
    fnmr0: float              # FNMR without discarding
    area: float               # area under the curve over [0, discard_limit], unnormalised
    auc: float                # area over the whole curve (A: [0, 0.95] trapezoid; B: [0, 1] stepwise)
    pauc: float               # A: area / (discard_limit * fnmr0); B: NaN
    best: float               # B: area under the theoretical best up to the limit; A: NaN
    value: float
    value_name: str


def _warn(message: str) -> None:
    warnings.warn(message, EvaluationWarning, stacklevel=3)


def check_inputs(scores, genuine, pair_quality) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    genuine = np.asarray(genuine, dtype=bool)
    pair_quality = np.asarray(pair_quality, dtype=np.float64)
    if not (scores.ndim == genuine.ndim == pair_quality.ndim == 1) or not (
            len(scores) == len(genuine) == len(pair_quality)):
        raise ValueError(f"scores, genuine and pair_quality must be 1-D of one length, got shapes "
                         f"{scores.shape}, {genuine.shape}, {pair_quality.shape}")
    if np.isnan(scores).any():
        raise ValueError(f"{int(np.isnan(scores).sum())} comparison score(s) are NaN")
    if np.isnan(pair_quality).any():
        raise ValueError(f"{int(np.isnan(pair_quality).sum())} pair quality value(s) are NaN")
    return scores, genuine, pair_quality


def pair_quality_of(quality_a, quality_b) -> np.ndarray:
    """A pair is as good as its worse image."""
    return np.minimum(np.asarray(quality_a, dtype=np.float64), np.asarray(quality_b, dtype=np.float64))


# ---------------------------------------------------------------- areas


def trapezoid_area(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Area under the piecewise-linear curve through (x, y) over [x[0], limit]; the curve is
    cut at the limit by linear interpolation. NaN when any y inside the range is NaN."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if limit > x[-1]:
        raise ValueError(f"the discard limit {limit} lies beyond the last discard level {x[-1]}")
    inside = x < limit
    xs = np.append(x[inside], limit)
    ys = np.append(y[inside], np.interp(limit, x, y))
    return float(np.sum((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1]) / 2.0))


def stepwise_area(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Area under the left-constant step curve: y[i] holds on [x[i], x[i+1]), the last value
    up to the limit."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    left = np.minimum(x, limit)
    right = np.minimum(np.append(x[1:], max(limit, x[-1])), limit)
    widths = np.maximum(right - left, 0.0)
    used = widths > 0
    return float(np.sum(y[used] * widths[used]))


def theoretical_best_area(fnmr0: float, limit: float) -> float:
    """Area up to the limit under max(0, E0 - x): every discarded pair was an error."""
    return fnmr0 ** 2 / 2.0 - max(0.0, fnmr0 - limit) ** 2 / 2.0


# ---------------------------------------------------------------- protocol A


def closest_fmr_index(false_matches: np.ndarray, impostors: int, target: float) -> int:
    """Index of the threshold whose FMR is closest to the target, the first (lowest threshold,
    lowest FNMR) among equals. ``false_matches`` does not increase with the index, so the
    closest is at the edge where it drops below target * impostors: a binary search instead
    of a pass over every threshold."""
    descending = -false_matches                                   # ascending
    prefix = int(np.searchsorted(descending, -target * impostors, side="right"))  # FMR >= target
    candidates = []
    if prefix > 0:  # the last FMR >= target, moved to the first threshold with that FMR
        candidates.append(int(np.searchsorted(descending, descending[prefix - 1], side="left")))
    if prefix < len(false_matches):
        candidates.append(prefix)
    return min(candidates, key=lambda i: (abs(false_matches[i] / impostors - target), i))


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(allowed)}")
    return value


def protocol_a(scores, genuine, pair_quality, fmr_targets=FMR_TARGETS,
               discard_limit: float = DEFAULT_DISCARD_LIMIT, levels: int = PROTOCOL_A_LEVELS,
               tie_rule: str = "erc", quality_sort: str = "stable") -> list[CurveResult]:
    """One curve per FMR target; see the module docstring.

    ``tie_rule``: "erc" (default) counts a genuine pair whose score equals the threshold as
    a non-match, as CR-FIQA's ERC/erc.py; "inclusive" counts it as a match.
    ``quality_sort``: "stable" (default) keeps pairs of equal quality in input order;
    "numpy-default" orders them as erc.py's ``np.argsort(quality)`` does (numpy's default,
    unstable sort: the same order only with the same numpy build and CPU)."""
    _choice("tie rule", tie_rule, TIE_RULES)
    _choice("quality sort", quality_sort, QUALITY_SORTS)
    scores, genuine, pair_quality = check_inputs(scores, genuine, pair_quality)
    n = len(scores)
    grid = np.arange(levels) / levels
    if not 0 < discard_limit <= grid[-1]:
        raise ValueError(f"protocol A: the discard limit must be in (0, {grid[-1]}], got {discard_limit}")
    targets = list(fmr_targets)
    fnmr = np.full((len(targets), levels), np.nan)
    thresholds = np.full((len(targets), levels), np.nan)
    achieved = np.full((len(targets), levels), np.nan)
    n_genuine_all, n_impostor_all = int(genuine.sum()), int((~genuine).sum())
    if n_genuine_all and n_impostor_all:
        # Position of each pair in the quality order: the lowest floor(u*N) positions go first.
        quality_position = np.empty(n, dtype=np.int64)
        quality_order = (np.argsort(pair_quality, kind="stable") if quality_sort == "stable"
                         else np.argsort(pair_quality))
        quality_position[quality_order] = np.arange(n)
        by_score = np.argsort(scores)  # no stability needed: equal scores are one group below
        sorted_scores = scores[by_score]
        sorted_genuine = genuine[by_score]
        sorted_position = quality_position[by_score]
        # Groups of equal scores: a threshold is a distinct score value, and all pairs with
        # that score fall on the same side of it.
        starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
        ends = np.append(starts[1:], n)  # one past each group of equal scores
        genuine_below = np.zeros(n + 1, dtype=np.int64)
        kept_below = np.zeros(n + 1, dtype=np.int64)
        for level in range(levels):
            kept = sorted_position >= (level * n) // levels   # exact floor(k/levels * N)
            np.cumsum(kept & sorted_genuine, out=genuine_below[1:])
            np.cumsum(kept, out=kept_below[1:])
            n_genuine, n_kept = int(genuine_below[-1]), int(kept_below[-1])
            n_impostor = n_kept - n_genuine
            if n_genuine == 0 or n_impostor == 0:
                continue
            # Only scores some kept pair has are thresholds (a discarded pair's score above
            # every kept one would add a "reject all" threshold CR-FIQA never considers).
            kept_at = np.append(kept_below[starts], n_kept)
            present = np.flatnonzero(kept_at[1:] > kept_at[:-1])
            at = starts[present]
            genuines_below_t = genuine_below[at]                      # genuines with score < t
            false_matches = n_impostor - (kept_below[at] - genuines_below_t)  # impostors with score >= t
            # non-matches at t: genuines with score < t, or <= t under erc.py's rule
            non_matches = genuines_below_t if tie_rule == "inclusive" else genuine_below[ends[present]]
            for row, target in enumerate(targets):
                best = closest_fmr_index(false_matches, n_impostor, target)
                fnmr[row, level] = non_matches[best] / n_genuine
                thresholds[row, level] = sorted_scores[at[best]]
                achieved[row, level] = false_matches[best] / n_impostor
    if n_genuine_all == 0:
        _warn("protocol A: no genuine pairs, so no FNMR: every number is NaN")
    elif n_impostor_all == 0:
        _warn("protocol A: no impostor pairs, so no threshold can be set for an FMR: every number is NaN")
    elif np.isnan(fnmr).any():
        _warn("protocol A: at some discard levels no genuine or no impostor pair is left; FNMR is NaN there")
    results = []
    for row, target in enumerate(targets):
        curve = fnmr[row]
        fnmr0 = float(curve[0])
        area = trapezoid_area(grid, curve, discard_limit)
        auc = trapezoid_area(grid, curve, grid[-1])
        if fnmr0 == 0.0:
            _warn(f"protocol A, FMR={target:g}: FNMR is 0 without discarding, so the normalised pAUC "
                  f"(area / (limit * FNMR(0))) is undefined: NaN")
            pauc = math.nan
        else:
            pauc = area / (discard_limit * fnmr0)
        results.append(CurveResult(
            protocol="A", fmr_target=float(target), discard_limit=float(discard_limit),
            discard=grid.copy(), fnmr=curve.copy(), threshold=thresholds[row].copy(),
            achieved_fmr=achieved[row].copy(), fnmr0=fnmr0, area=area, auc=auc, pauc=pauc,
            best=math.nan, value=pauc, value_name="pAUC (normalised)",
        ))
    return results


# ---------------------------------------------------------------- protocol B


def allowed_false_matches(fmr_target: float, count: int) -> int:
    """k = floor(FMR * count) in exact arithmetic on the target as written (1e-3 * 3000 is 3,
    where the float product gives 2.9999999999999996)."""
    return int(math.floor(Fraction(repr(float(fmr_target))) * count))


def fixed_threshold(impostor_scores: np.ndarray, fmr_target: float,
                    threshold_rule: str = "iso") -> tuple[float, float]:
    """(tau, achieved FMR) of protocol B's threshold; see the module docstring.

    "iso": match iff score >= tau, tau the smallest impostor score s with
    #{impostor >= s} <= k (just above every impostor when none qualifies).
    "kth-strict": match iff score > tau, tau the (k+1)-th highest impostor score."""
    _choice("threshold rule", threshold_rule, THRESHOLD_RULES)
    impostor_scores = np.asarray(impostor_scores, dtype=np.float64)
    count = len(impostor_scores)
    if count == 0:
        return math.nan, math.nan
    allowed = allowed_false_matches(fmr_target, count)
    if threshold_rule == "kth-strict":
        if allowed >= count:
            return -math.inf, 1.0
        tau = float(-np.partition(-impostor_scores, allowed)[allowed])
        return tau, float(np.sum(impostor_scores > tau) / count)
    ascending = np.sort(impostor_scores)
    index = count - min(allowed, count)
    if index < count and index > 0 and ascending[index - 1] == ascending[index]:
        index = int(np.searchsorted(ascending, ascending[index], side="right"))  # the next distinct score up
    if index >= count:
        tau = float(np.nextafter(ascending[-1], math.inf))  # above every impostor
    else:
        tau = float(ascending[index])
    return tau, float((count - np.searchsorted(ascending, tau, side="left")) / count)


def protocol_b(scores, genuine, pair_quality, fmr_targets=FMR_TARGETS,
               discard_limit: float = DEFAULT_DISCARD_LIMIT, subtract_best: bool = False,
               threshold_rule: str = "iso") -> list[CurveResult]:
    """One curve per FMR target; see the module docstring. ``threshold_rule``: "iso"
    (default, ISO/IEC 29794-1 as ALGORITHMS.md section 7 states it) or "kth-strict"."""
    _choice("threshold rule", threshold_rule, THRESHOLD_RULES)
    scores, genuine, pair_quality = check_inputs(scores, genuine, pair_quality)
    if not 0 < discard_limit <= 1:
        raise ValueError(f"protocol B: the discard limit must be in (0, 1], got {discard_limit}")
    genuine_scores = scores[genuine]
    genuine_quality = pair_quality[genuine]
    impostor_scores = scores[~genuine]
    count = len(genuine_scores)
    if count == 0:
        _warn("protocol B: no genuine pairs, so no FNMR: every number is NaN")
    if len(impostor_scores) == 0:
        _warn("protocol B: no impostor pairs, so no threshold can be fixed for an FMR: every number is NaN")
    order = np.argsort(genuine_quality, kind="stable")
    sorted_quality = genuine_quality[order]
    sorted_scores = genuine_scores[order]
    # Discard only where the quality changes: equal qualities leave together.
    discard_counts = np.flatnonzero(np.r_[True, sorted_quality[1:] != sorted_quality[:-1]]) if count else np.zeros(0, int)
    discard = discard_counts / count if count else np.zeros(0)
    results = []
    for target in fmr_targets:
        tau, achieved = fixed_threshold(impostor_scores, target, threshold_rule)
        if count == 0 or math.isnan(tau):
            curve_x, curve_y = np.array([0.0, 1.0]), np.array([math.nan, math.nan])
        else:
            errors = ((sorted_scores < tau) if threshold_rule == "iso" else (sorted_scores <= tau)).astype(np.int64)
            errors_from = np.cumsum(errors[::-1])[::-1]       # errors among pairs i.. (the kept ones)
            fnmr = errors_from[discard_counts] / (count - discard_counts)
            curve_x, curve_y = discard, fnmr
            if curve_x[-1] != 1.0:  # every pair discarded: no error left (closes the curve for plots)
                curve_x, curve_y = np.append(curve_x, 1.0), np.append(curve_y, 0.0)
        fnmr0 = float(curve_y[0])
        area = stepwise_area(curve_x, curve_y, discard_limit)
        auc = stepwise_area(curve_x, curve_y, 1.0)
        best = theoretical_best_area(fnmr0, discard_limit) if not math.isnan(fnmr0) else math.nan
        value = area - best if subtract_best else area
        results.append(CurveResult(
            protocol="B", fmr_target=float(target), discard_limit=float(discard_limit),
            discard=curve_x, fnmr=curve_y, threshold=np.array([tau]), achieved_fmr=np.array([achieved]),
            fnmr0=fnmr0, area=area, auc=auc, pauc=math.nan, best=best, value=value,
            value_name="pAUC - theoretical best" if subtract_best else "pAUC (stepwise)",
        ))
    return results


def edc(protocol: str, scores, genuine, pair_quality, fmr_targets=FMR_TARGETS,
        discard_limit: float = DEFAULT_DISCARD_LIMIT, subtract_best: bool = False, tie_rule: str = "erc",
        threshold_rule: str = "iso", quality_sort: str = "stable") -> list[CurveResult]:
    """Either protocol. The switches of the other protocol must stay at their defaults."""
    protocol = protocol.upper()
    if protocol == "A":
        if subtract_best:
            raise ValueError("the theoretical-best subtraction belongs to protocol B")
        if threshold_rule != "iso":
            raise ValueError("the threshold rule belongs to protocol B; protocol A recomputes its threshold per level")
        return protocol_a(scores, genuine, pair_quality, fmr_targets, discard_limit, tie_rule=tie_rule,
                          quality_sort=quality_sort)
    if protocol == "B":
        if tie_rule != "erc" or quality_sort != "stable":
            raise ValueError("the tie rule and the quality sort belong to protocol A")
        return protocol_b(scores, genuine, pair_quality, fmr_targets, discard_limit, subtract_best, threshold_rule)
    raise ValueError(f"unknown protocol {protocol!r}; choose one of {PROTOCOLS}")

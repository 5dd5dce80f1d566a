"""EDC curves and areas (docs/method.md#7-evaluation-edc-and-pauc): small cases worked out by hand, naive
re-implementations on random data, the properties any correct EDC has, degenerate inputs."""
from __future__ import annotations

import warnings
from fractions import Fraction

import numpy as np
import pytest

from synfiqa.stages.s8_evaluate.edc import (EvaluationWarning, fixed_threshold, protocol_a, protocol_b, stepwise_area,
                                    theoretical_best_area, trapezoid_area)

# A hand-sized case. Columns: similarity, genuine, pair quality.
HAND = np.array([
    (0.9, 1, 0.1),
    (0.2, 1, 0.5),
    (0.8, 1, 0.9),
    (0.7, 0, 0.2),
    (0.3, 0, 0.6),
    (0.1, 0, 0.8),
    (0.4, 1, 0.3),
    (0.0, 0, 0.7),
])
SCORES, GENUINE, QUALITY = HAND[:, 0], HAND[:, 1].astype(bool), HAND[:, 2]


def quiet(function, *args, **kwargs):
    """Runs an EDC function that must not warn here."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", EvaluationWarning)
        return function(*args, **kwargs)


# ---------------------------------------------------------------- by hand


def test_protocol_a_by_hand():
    # FMR target 0.25 with 4 impostors. At u=0 the distinct scores give FMR 1, .75, .5, .5, .25,
    # .25, 0, 0; the closest to .25 is the plateau {0.4, 0.7}, and its lowest threshold 0.4
    # rejects one genuine of four below it (the "inclusive" rule). Dropping the worst pair
    # (q=0.1, a genuine) leaves 1/3. Dropping two (also the 0.7 impostor) leaves impostors 0.3,
    # 0.1, 0.0: t=0.2 gives FMR 1/3, closer to .25 than FMR 0, and no genuine lies below 0.2.
    with pytest.warns(EvaluationWarning, match="no genuine or no impostor"):  # 8 pairs: the last levels keep 1
        [curve] = protocol_a(SCORES, GENUINE, QUALITY, fmr_targets=[0.25], tie_rule="inclusive")
    expected = [1 / 4] * 3 + [1 / 3] * 2 + [0.0] * 13 + [np.nan] * 2
    np.testing.assert_allclose(curve.fnmr, expected)
    assert curve.threshold[0] == 0.4 and curve.threshold[5] == 0.2
    assert curve.achieved_fmr[0] == 0.25 and curve.achieved_fmr[5] == pytest.approx(1 / 3)
    quarter, third = Fraction(1, 4), Fraction(1, 3)
    area = Fraction(1, 20) * (quarter + quarter + (quarter + third) / 2 + third + third / 2 + 0)
    assert curve.area == pytest.approx(float(area), abs=1e-15)
    assert curve.pauc == pytest.approx(float(area / (Fraction(3, 10) * quarter)), abs=1e-12)  # 0.86111...
    assert curve.value == curve.pauc and curve.fnmr0 == 0.25
    assert np.isnan(curve.auc)  # the full-grid area runs into the levels without impostors


def test_protocol_a_by_hand_erc_rule():
    # The same thresholds; erc.py also rejects the genuine pair sitting on the threshold.
    # Levels 0-2 (t=0.4, the genuine 0.4 itself): 0.2 and 0.4 of four genuines, 2/4. Levels 3-4
    # (the 0.9 genuine gone): 2/3. Levels 5-7 (t=0.2, a genuine): 0.2 of three, 1/3. Levels 8-9
    # (floor(8*8/20) = 3 pairs gone, 0.4 too): impostors 0.3, 0.1, 0.0, FMR 1/3 closest, t=0.2:
    # the genuine 0.2 of {0.2, 0.8}, 1/2. Levels 10-14: the genuine 0.8 alone, t=0.3: 0. Levels
    # 15-17: the genuine 0.8 and the impostor 0.1; FMR 0 (|0 - .25|) beats FMR 1, t=0.8: the
    # genuine on it is rejected, 1/1.
    with pytest.warns(EvaluationWarning, match="no genuine or no impostor"):
        [curve] = protocol_a(SCORES, GENUINE, QUALITY, fmr_targets=[0.25])
    expected = [1 / 2] * 3 + [2 / 3] * 2 + [1 / 3] * 3 + [1 / 2] * 2 + [0.0] * 5 + [1.0] * 3 + [np.nan] * 2
    np.testing.assert_allclose(curve.fnmr, expected)
    assert list(curve.threshold[[0, 5, 8, 15]]) == [0.4, 0.2, 0.2, 0.8]
    half, two_thirds, third = Fraction(1, 2), Fraction(2, 3), Fraction(1, 3)
    points = [half, half, half, two_thirds, two_thirds, third, third]  # u = 0, 0.05, ..., 0.3
    area = sum(Fraction(1, 20) * (left + right) / 2 for left, right in zip(points, points[1:]))
    assert area == Fraction(37, 240)
    assert curve.area == pytest.approx(float(area), abs=1e-15)
    assert curve.pauc == pytest.approx(float(area / (Fraction(3, 10) * half)), abs=1e-12)


def test_protocol_b_by_hand():
    # Impostors 0.7, 0.3, 0.1, 0.0; FMR 0.25 allows one false match. kth-strict: tau = 0.3 (match
    # iff > 0.3). Genuines by quality: 0.9 ok, 0.4 ok, 0.2 error, 0.8 ok -> FNMR 1/4, 1/3, 1/2, 0/1.
    [curve] = quiet(protocol_b, SCORES, GENUINE, QUALITY, fmr_targets=[0.25], threshold_rule="kth-strict")
    assert curve.threshold[0] == 0.3 and curve.achieved_fmr[0] == 0.25
    np.testing.assert_allclose(curve.discard, [0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(curve.fnmr, [1 / 4, 1 / 3, 1 / 2, 0, 0])
    assert curve.area == pytest.approx(0.25 * 0.25 + (1 / 3) * 0.05)
    assert curve.best == pytest.approx(0.25 ** 2 / 2)          # the limit 0.3 lies beyond E0 = 0.25
    assert curve.value == curve.area
    assert curve.auc == pytest.approx(0.25 * (1 / 4 + 1 / 3 + 1 / 2 + 0))
    [subtracted] = quiet(protocol_b, SCORES, GENUINE, QUALITY, fmr_targets=[0.25], subtract_best=True,
                         threshold_rule="kth-strict")
    assert subtracted.value == pytest.approx(curve.area - curve.best)
    # iso: tau = imp[4 - 1] = 0.7 (match iff >= 0.7), the same FMR 1/4; now the genuine 0.4
    # fails too: by quality 0.9 ok, 0.4 error, 0.2 error, 0.8 ok -> 2/4, 2/3, 1/2, 0/1.
    [iso] = quiet(protocol_b, SCORES, GENUINE, QUALITY, fmr_targets=[0.25])
    assert iso.threshold[0] == 0.7 and iso.achieved_fmr[0] == 0.25
    np.testing.assert_allclose(iso.fnmr, [1 / 2, 2 / 3, 1 / 2, 0, 0])
    assert iso.area == pytest.approx(0.25 * 0.5 + (2 / 3) * 0.05)


def test_fixed_threshold_counts_ties_on_the_safe_side():
    strict = {"threshold_rule": "kth-strict"}
    assert fixed_threshold(np.array([0.9, 0.5, 0.5, 0.1]), 0.25, **strict) == (0.5, 0.25)
    assert fixed_threshold(np.array([0.5, 0.5, 0.5, 0.1]), 0.25, **strict) == (0.5, 0.0)  # three tie at the top
    tau, fmr = fixed_threshold(np.linspace(0, 1, 3000), 1e-3, **strict)  # 1e-3 * 3000 is 3 false matches, not 2
    assert fmr == pytest.approx(3 / 3000)
    assert fixed_threshold(np.array([0.2, 0.1]), 1e-4, **strict) == (0.2, 0.0)  # unreachable: zero false matches
    # iso: match iff >= tau, tau an impostor score (or just above them all)
    assert fixed_threshold(np.array([0.9, 0.5, 0.5, 0.1]), 0.25) == (0.9, 0.25)
    assert fixed_threshold(np.array([0.5, 0.5, 0.5, 0.1]), 0.25) == (np.nextafter(0.5, 1), 0.0)
    assert fixed_threshold(np.array([0.9, 0.5, 0.5, 0.1]), 0.5) == (0.9, 0.25)  # 0.5 ties below: next one up
    assert fixed_threshold(np.array([0.9, 0.5, 0.5, 0.1]), 0.75) == (0.5, 0.75)
    tau, fmr = fixed_threshold(np.linspace(0, 1, 3000), 1e-3)
    assert fmr == pytest.approx(3 / 3000) and tau == np.linspace(0, 1, 3000)[2997]
    assert fixed_threshold(np.array([0.2, 0.1]), 1e-4) == (np.nextafter(0.2, 1), 0.0)


def test_closest_fmr_prefers_the_lowest_threshold_among_equals():
    from synfiqa.stages.s8_evaluate.edc import closest_fmr_index

    false_matches = np.array([4, 3, 2, 2, 1, 0])  # per distinct threshold, ascending thresholds
    assert closest_fmr_index(false_matches, 4, 0.25) == 4        # FMR 1/4 exactly
    assert closest_fmr_index(false_matches, 4, 0.375) == 2       # 1/2 and 1/4 equally close: first of the 2s
    assert closest_fmr_index(false_matches, 4, 0.6) == 2         # 1/2 is closest; its plateau starts at 2
    assert closest_fmr_index(false_matches, 4, 1e-4) == 5        # unreachable: zero false matches
    assert closest_fmr_index(np.array([3, 3, 1]), 3, 0.99) == 0


def test_angular_distance_orders_pairs_like_the_cosine():
    from synfiqa.stages.s8_evaluate.comparison import angular_distance

    scores, genuine, rng = synthetic(9, n=2000)
    cosine = np.tanh(scores)  # inside (-1, 1)
    quality = rng.random(len(scores))
    for protocol in (protocol_a, protocol_b):
        for a, b in zip(quiet(protocol, cosine, genuine, quality),
                        quiet(protocol, -angular_distance(cosine), genuine, quality)):
            np.testing.assert_array_equal(a.fnmr, b.fnmr)


def test_areas_by_hand():
    x, y = np.array([0.0, 0.1, 0.2]), np.array([1.0, 0.5, 0.5])
    assert trapezoid_area(x, y, 0.2) == pytest.approx(0.1 * 0.75 + 0.1 * 0.5)
    assert trapezoid_area(x, y, 0.15) == pytest.approx(0.1 * 0.75 + 0.05 * 0.5)
    assert stepwise_area(x, y, 0.15) == pytest.approx(0.1 * 1.0 + 0.05 * 0.5)
    assert stepwise_area(x, y, 0.5) == pytest.approx(0.1 + 0.05 + 0.3 * 0.5)  # the last value holds to the limit
    assert theoretical_best_area(0.2, 0.3) == pytest.approx(0.02)
    assert theoretical_best_area(0.2, 0.1) == pytest.approx(0.2 * 0.1 - 0.1 ** 2 / 2)


# ---------------------------------------------------------------- naive references


def naive_protocol_a(scores, genuine, quality, target, levels=20, erc=True):
    """A transcription of the definition, one level at a time with np.unique thresholds."""
    order = np.argsort(quality, kind="stable")
    n = len(scores)
    out = []
    for k in range(levels):
        kept = order[(k * n) // levels:]
        s, g = scores[kept], genuine[kept]
        gen, imp = s[g], s[~g]
        if len(gen) == 0 or len(imp) == 0:
            out.append(np.nan)
            continue
        thresholds = np.unique(s)
        fmr = np.array([(imp >= t).sum() for t in thresholds]) / len(imp)
        best = np.argmin(np.abs(fmr - target))
        out.append(((gen <= thresholds[best]) if erc else (gen < thresholds[best])).sum() / len(gen))
    return np.array(out)


def naive_protocol_b(scores, genuine, quality, target, iso=True):
    imp = scores[~genuine]
    allowed = int(np.floor(round(target * len(imp), 9)))
    if iso:  # the smallest impostor score s with #{imp >= s} <= allowed, matches iff >= s
        candidates = [s for s in np.unique(imp) if (imp >= s).sum() <= allowed]
        tau = min(candidates) if candidates else np.nextafter(imp.max(), np.inf)
    else:    # the (allowed+1)-th highest, matches iff > it
        tau = np.sort(imp)[::-1][allowed]
    gq, gs = quality[genuine], scores[genuine]
    xs, ys = [], []
    for level in np.unique(gq):
        kept = gq >= level
        xs.append(1 - kept.mean())
        ys.append(((gs[kept] < tau) if iso else (gs[kept] <= tau)).mean())
    return np.array(xs), np.array(ys)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_protocol_a_matches_the_naive_definition(seed):
    rng = np.random.default_rng(seed)
    n = 600
    genuine = rng.random(n) < 0.4
    scores = np.round(np.where(genuine, rng.normal(0.5, 0.2, n), rng.normal(0.1, 0.2, n)), 2)  # ties in scores
    quality = np.round(rng.random(n), 1)                                                      # ties in quality
    for rule in ("erc", "inclusive"):
        curves = quiet(protocol_a, scores, genuine, quality, fmr_targets=[1e-2, 1e-1], tie_rule=rule)
        for curve, target in zip(curves, [1e-2, 1e-1]):
            np.testing.assert_array_equal(curve.fnmr, naive_protocol_a(scores, genuine, quality, target,
                                                                       erc=rule == "erc"))


@pytest.mark.parametrize("seed", [0, 1])
def test_protocol_b_matches_the_naive_definition(seed):
    rng = np.random.default_rng(seed)
    n = 800
    genuine = rng.random(n) < 0.5
    scores = np.round(np.where(genuine, rng.normal(0.5, 0.2, n), rng.normal(0.1, 0.2, n)), 2)
    quality = np.round(rng.random(n), 2)
    for rule in ("iso", "kth-strict"):
        curves = quiet(protocol_b, scores, genuine, quality, fmr_targets=[1e-2, 5e-2], threshold_rule=rule)
        for curve, target in zip(curves, [1e-2, 5e-2]):
            xs, ys = naive_protocol_b(scores, genuine, quality, target, iso=rule == "iso")
            np.testing.assert_allclose(curve.discard[:-1], xs, atol=1e-12)
            np.testing.assert_allclose(curve.fnmr[:-1], ys, atol=1e-12)


# ---------------------------------------------------------------- properties


def synthetic(seed, n=3000, genuine_share=0.3):
    rng = np.random.default_rng(seed)
    genuine = rng.random(n) < genuine_share
    scores = np.where(genuine, rng.normal(0.55, 0.15, n), rng.normal(0.0, 0.12, n))
    return scores, genuine, rng


@pytest.mark.parametrize("protocol", [protocol_a, protocol_b])
def test_invariant_to_strictly_increasing_quality_transforms(protocol):
    scores, genuine, rng = synthetic(3)
    quality = np.round(rng.random(len(scores)), 2)  # with ties: a transform must keep them tied
    transformed = [np.exp(4 * quality) - 7.0, quality ** 3, 1000 * quality + 1]
    reference = quiet(protocol, scores, genuine, quality)
    for other in transformed:
        for a, b in zip(reference, quiet(protocol, scores, genuine, other)):
            np.testing.assert_array_equal(a.fnmr, b.fnmr)
            assert a.value == b.value or (np.isnan(a.value) and np.isnan(b.value))


def test_random_quality_gives_normalised_pauc_near_one():
    scores, genuine, _ = synthetic(7, n=6000)
    values = {1e-2: [], 1e-3: []}
    for seed in range(40):
        quality = np.random.default_rng(1000 + seed).random(len(scores))
        for curve in quiet(protocol_a, scores, genuine, quality, fmr_targets=list(values)):
            values[curve.fmr_target].append(curve.pauc)
    for target, paucs in values.items():
        assert abs(np.mean(paucs) - 1.0) < 0.03, (target, np.mean(paucs))
        assert np.std(paucs) < 0.15


def test_informative_quality_beats_random_quality():
    scores, genuine, rng = synthetic(11)
    # genuine pairs with low similarity get low quality, as a useful FIQA would predict
    informative = np.where(genuine, scores, 1.0) + rng.normal(0, 0.05, len(scores))
    [a_good] = quiet(protocol_a, scores, genuine, informative, fmr_targets=[1e-2])
    [a_random] = quiet(protocol_a, scores, genuine, rng.random(len(scores)), fmr_targets=[1e-2])
    assert a_good.pauc < 0.6 < 0.9 < a_random.pauc


def test_oracle_quality_gives_the_theoretical_best_in_protocol_b():
    scores, genuine, rng = synthetic(5, n=4000)
    tau, _ = fixed_threshold(scores[~genuine], 1e-3)
    errors = genuine & (scores <= tau)
    # errors get the lowest qualities (all distinct), every other pair a higher one
    quality = np.where(errors, rng.random(len(scores)) * 0.5, 1.0 + rng.random(len(scores)))
    [oracle] = quiet(protocol_b, scores, genuine, quality, fmr_targets=[1e-3], subtract_best=True)
    [random] = quiet(protocol_b, scores, genuine, rng.random(len(scores)), fmr_targets=[1e-3], subtract_best=True)
    e0 = oracle.fnmr0
    assert e0 > 0.05
    # The remaining errors, counted against the full genuine set, follow max(0, E0 - x) exactly:
    # each discarded pair was an error until none is left.
    np.testing.assert_allclose(oracle.fnmr * (1 - oracle.discard), np.maximum(0.0, e0 - oracle.discard), atol=1e-12)
    # So its area exceeds the theoretical best only by the FNMR's renormalisation to the kept
    # pairs, (E0 - x) / (1 - x) instead of E0 - x, and by the steps of width 1/N:
    count = genuine.sum()
    bound = e0 ** 3 / (6 * (1 - e0)) + e0 / count
    assert 0 <= oracle.value <= bound
    assert random.value > 10 * bound


def test_ties_are_discarded_together_in_protocol_b():
    scores = np.array([0.1, 0.9, 0.2, 0.8, 0.15, 0.5, 0.6])
    genuine = np.array([1, 1, 1, 1, 1, 0, 0], dtype=bool)
    quality = np.array([1.0, 1.0, 2.0, 2.0, 3.0, 0.0, 0.0])
    [curve] = quiet(protocol_b, scores, genuine, quality, fmr_targets=[0.5], threshold_rule="kth-strict")
    # FMR 0.5 of two impostors allows one false match: tau = 0.5. Genuine errors: 0.1, 0.2, 0.15.
    assert curve.threshold[0] == 0.5
    # Points only between quality 1|2 and 2|3: never half of a tied group.
    np.testing.assert_allclose(curve.discard, [0.0, 0.4, 0.8, 1.0])
    # all five: 3/5; without quality 1: {0.2, 0.8, 0.15} 2/3; without 2: {0.15} 1/1
    np.testing.assert_allclose(curve.fnmr, [3 / 5, 2 / 3, 1.0, 0.0])


def test_pair_order_and_pair_quality_symmetry():
    from synfiqa.stages.s8_evaluate.edc import pair_quality_of

    a, b = np.array([0.3, 0.9, 0.5]), np.array([0.7, 0.2, 0.5])
    np.testing.assert_array_equal(pair_quality_of(a, b), [0.3, 0.2, 0.5])
    np.testing.assert_array_equal(pair_quality_of(a, b), pair_quality_of(b, a))


# ---------------------------------------------------------------- degenerate inputs


def test_no_impostor_pairs_gives_nan_with_a_warning():
    scores, genuine = np.array([0.5, 0.6, 0.7]), np.ones(3, dtype=bool)
    with pytest.warns(EvaluationWarning, match="no impostor pairs"):
        curves = protocol_a(scores, genuine, np.array([1.0, 2.0, 3.0]))
    assert all(np.isnan(c.fnmr).all() and np.isnan(c.pauc) for c in curves)
    with pytest.warns(EvaluationWarning, match="no impostor pairs"):
        curves = protocol_b(scores, genuine, np.array([1.0, 2.0, 3.0]))
    assert all(np.isnan(c.value) and np.isnan(c.fnmr0) for c in curves)


def test_no_genuine_pairs_gives_nan_with_a_warning():
    with pytest.warns(EvaluationWarning, match="no genuine pairs"):
        curves = protocol_a(np.array([0.1, 0.2]), np.zeros(2, dtype=bool), np.array([1.0, 2.0]))
    assert np.isnan(curves[0].pauc)
    with pytest.warns(EvaluationWarning, match="no genuine pairs"):
        curves = protocol_b(np.array([0.1, 0.2]), np.zeros(2, dtype=bool), np.array([1.0, 2.0]))
    assert np.isnan(curves[0].value)


def test_zero_fnmr_without_discarding_gives_nan_pauc_with_a_warning():
    scores, genuine, rng = synthetic(2, n=400)
    separated = np.where(genuine, 10.0 + scores, scores)  # every genuine above every impostor
    with pytest.warns(EvaluationWarning, match="FNMR is 0 without discarding"):
        curves = protocol_a(separated, genuine, rng.random(len(scores)), fmr_targets=[1e-2])
    assert curves[0].fnmr0 == 0 and np.isnan(curves[0].pauc) and curves[0].area == 0
    [b] = quiet(protocol_b, separated, genuine, rng.random(len(scores)), fmr_targets=[1e-2])
    assert b.fnmr0 == 0 and b.value == 0 and b.best == 0


def test_empty_input_does_not_crash():
    with pytest.warns(EvaluationWarning):
        curves = protocol_a(np.zeros(0), np.zeros(0, dtype=bool), np.zeros(0))
    assert np.isnan(curves[0].pauc)


def test_bad_arrays_are_refused():
    with pytest.raises(ValueError, match="NaN"):
        protocol_a(np.array([0.1, np.nan]), np.array([True, False]), np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="pair quality"):
        protocol_b(np.array([0.1, 0.2]), np.array([True, False]), np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="one length"):
        protocol_a(np.array([0.1, 0.2]), np.array([True]), np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="discard limit"):
        protocol_a(SCORES, GENUINE, QUALITY, discard_limit=0.99)

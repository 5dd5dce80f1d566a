"""The evaluation conventions of issue 16 (ALGORITHMS.md section 7): protocol A as CR-FIQA's
ERC/erc.py decides a genuine pair exactly at the threshold (a non-match), protocol B's ISO
threshold rule, and the older conventions kept as named options.

Checked against (1) hand-made cases whose FNMR curves and pAUC values are worked out by hand
in the comments, with genuine pairs sitting on the threshold, duplicate scores and duplicate
qualities, and (2) transcriptions of the published rules written here: erc.py + roc.py of
CR-FIQA (distances, np.unique thresholds, argmin of |FMR - target|, "g < thr" for a genuine
match, int(u * N) discards), and the ISO threshold as its definition (the smallest impostor
score s with #{impostor >= s} <= floor(n FMR)), never against synfiqa's own code.

Run as a script (``python tests/test_evaluation_conventions.py``) it prints the measured
size of each convention's effect on simulated LFW-sized sets (the numbers in
docs/evaluate.md#evaluation-conventions)."""
from __future__ import annotations

import math
import operator
import warnings
from fractions import Fraction

import numpy as np
import pytest

from synfiqa.stages.s8_evaluate.edc import EvaluationWarning, protocol_a, protocol_b

# ---------------------------------------------------------------- a hand-made tie-heavy case

# (similarity, genuine, pair quality). Duplicate scores: 0.5 four times (three genuines and
# the top impostor), 0.42 twice (impostors), 0.7 twice; duplicate qualities: g5 and g6.
G = [(0.60, 0.05), (0.30, 0.10), (0.50, 0.15), (0.50, 0.50), (0.70, 0.60),
     (0.70, 0.60), (0.90, 0.80), (0.50, 0.90), (0.95, 0.95), (0.45, 0.99)]            # g1..g10
I = [(0.50, 0.20), (0.42, 0.25), (0.35, 0.30), (0.20, 0.40), (0.10, 0.45),
     (0.15, 0.55), (0.05, 0.65), (0.00, 0.75), (0.25, 0.85), (0.42, 0.97)]            # i1..i10
TIE_SCORES = np.array([s for s, _ in G + I])
TIE_GENUINE = np.array([True] * 10 + [False] * 10)
TIE_QUALITY = np.array([q for _, q in G + I])
# Ascending quality: g1 g2 g3 i1 i2 i3 i4 i5 g4 i6 {g5 g6} i7 i8 g7 i9 g8 g9 i10 g10. With
# N = 20 pairs, level k drops exactly k pairs.

F = Fraction


def trapezoid(points, step=Fraction(1, 20)):
    return sum(step * (a + b) / 2 for a, b in zip(points, points[1:]))


def run_quietly(function, *args, **kwargs):
    """The hand case runs out of impostors or genuines at the last levels (a warning)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EvaluationWarning)
        return function(*args, **kwargs)


# Protocol A, FMR 0.1, levels 0..6 (u = 0 .. 0.3):
# L0  impostors .5 .42 .42 .35 .25 .2 .15 .1 .05 0: FMR 1/10 hits the target on the plateau
#     t in (.42, .5]; its lowest remaining score is the genuine g10 = .45, so t = .45.
#     erc: genuines <= .45 are g2 (.3) and g10 (.45): 2/10. inclusive: only g2 (< .45): 1/10.
# L1  g1 gone, t = .45: erc 2/9, inclusive 1/9.       L2  g2 gone: erc 1/8 (g10), inclusive 0.
# L3  g3 gone: erc 1/7, inclusive 0.
# L4  i1 gone: impostors .42 .42 .35 ...: FMR 0 (|0 - .1| = .1) beats 2/9 (.122), so t is the
#     lowest score above .42, g10 again: erc 1/7, inclusive 0.
# L5  i2 gone: 8 impostors, FMR 1/8 (t in (.35, .42], lowest score .42): no genuine <= .42: 0.
# L6  i3 gone: 7 impostors, FMR 1/7 beats 0: t = .42 again: 0.
A_01 = {"erc": [F(1, 5), F(2, 9), F(1, 8), F(1, 7), F(1, 7), F(0), F(0)],
        "inclusive": [F(1, 10), F(1, 9), F(0), F(0), F(0), F(0), F(0)]}
A_01_THRESHOLDS = [0.45, 0.45, 0.45, 0.45, 0.45, 0.42, 0.42]
# Protocol A, FMR 0.01: zero false matches is always closest, so t is the lowest score above
# the best impostor.
# L0  best impostor .5, t = g1 = .6: erc <= .6: g1 g2 g3 g4 g8 g10 = 6/10; inclusive < .6: 5/10.
# L1  g1 gone: t = .7 (g5 = g6): erc <= .7: g2 g3 g4 g5 g6 g8 g10 = 7/9; inclusive: 5/9.
# L2  g2 gone: erc 6/8, inclusive 4/8.      L3  g3 gone: erc 5/7, inclusive 3/7.
# L4-L6  i1 gone, best impostor .42: t = .45 (g10): erc 1/7, inclusive 0.
A_001 = {"erc": [F(6, 10), F(7, 9), F(6, 8), F(5, 7), F(1, 7), F(1, 7), F(1, 7)],
         "inclusive": [F(5, 10), F(5, 9), F(4, 8), F(3, 7), F(0), F(0), F(0)]}


@pytest.mark.parametrize("rule", ["erc", "inclusive"])
def test_protocol_a_hand_curves_and_pauc_with_genuines_on_the_threshold(rule):
    kwargs = {} if rule == "erc" else {"tie_rule": "inclusive"}
    with pytest.warns(EvaluationWarning, match="no genuine or no impostor"):
        curve_01, curve_001 = protocol_a(TIE_SCORES, TIE_GENUINE, TIE_QUALITY, fmr_targets=[0.1, 0.01], **kwargs)
    for curve, expected in ((curve_01, A_01[rule]), (curve_001, A_001[rule])):
        np.testing.assert_allclose(curve.fnmr[:7], [float(v) for v in expected], rtol=0, atol=1e-15)
        area = trapezoid(expected)
        assert curve.area == pytest.approx(float(area), abs=1e-15)
        assert curve.pauc == pytest.approx(float(area / (F(3, 10) * expected[0])), abs=1e-12)
    np.testing.assert_array_equal(curve_01.threshold[:7], A_01_THRESHOLDS)
    np.testing.assert_allclose(curve_01.achieved_fmr[:7], [0.1, 0.1, 0.1, 0.1, 0.0, 1 / 8, 1 / 7])


def test_protocol_a_hand_pauc_values():
    # The numbers themselves, so that a wrong trapezoid helper cannot hide: erc at FMR 0.1,
    # area = (1/20) [(1/5 + 2/9)/2 + (2/9 + 1/8)/2 + (1/8 + 1/7)/2 + (1/7 + 1/7)/2 + (1/7)/2]
    #      = (1/20) (1/10 + 2/9 + 1/8 + 2/7) = (1/20) (252 + 560 + 315 + 720) / 2520 = 1847 / 50400;
    # pAUC = area / (0.3 * FNMR(0)) = (1847 / 50400) / (3 / 50) = 1847 / 3024.
    area = F(1847, 50400)
    assert area == trapezoid(A_01["erc"])
    with pytest.warns(EvaluationWarning):
        [erc] = protocol_a(TIE_SCORES, TIE_GENUINE, TIE_QUALITY, fmr_targets=[0.1])
        [inclusive] = protocol_a(TIE_SCORES, TIE_GENUINE, TIE_QUALITY, fmr_targets=[0.1], tie_rule="inclusive")
    assert erc.pauc == pytest.approx(1847 / 3024, abs=1e-12)                              # 0.6108
    # inclusive: (1/20) ((1/10 + 1/9)/2 + (1/9)/2) = (1/20)(29/180) = 29/3600; / (0.3 * 0.1) = 29/108
    assert inclusive.pauc == pytest.approx(29 / 108, abs=1e-12)                           # 0.2685


# Protocol B. Impostors ascending: 0 .05 .1 .15 .2 .25 .35 .42 .42 .5 (n = 10).
# FMR 0.1: k = 1, imp[9] = .5 -> iso tau = .5, match iff >= .5; kth-strict: the 2nd highest, .42,
#   match iff > .42. Both give FMR 1/10; the genuine g10 = .45 lies between them.
# FMR 0.2: k = 2, imp[8] = .42 ties with imp[7] -> the next distinct score up, .5: FMR 1/10.
#   kth-strict: 3rd highest .42, match iff > .42: FMR 1/10 too.
# Genuines by quality: g1 .6 | g2 .3 | g3 .5 | g4 .5 | g5 g6 .7 (tied quality) | g7 .9 | g8 .5
#   | g9 .95 | g10 .45: points after 0, 1, 2, 3, 4, 6, 7, 8, 9 discarded (x = count / 10).
# iso errors (< .5): g2, g10 -> 2/10, 2/9, 1/8, 1/7, 1/6, 1/4, 1/3, 1/2, 1/1, then 0 at x = 1.
# kth-strict errors (<= .42): g2 -> 1/10, 1/9, then 0.
B_X = [0, 0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9, 1.0]
B_ISO = [F(2, 10), F(2, 9), F(1, 8), F(1, 7), F(1, 6), F(1, 4), F(1, 3), F(1, 2), F(1), F(0)]
B_STRICT = [F(1, 10), F(1, 9)] + [F(0)] * 8


@pytest.mark.parametrize("target", [0.1, 0.2])
def test_protocol_b_hand_curves_and_areas_with_tied_impostors(target):
    [iso] = protocol_b(TIE_SCORES, TIE_GENUINE, TIE_QUALITY, fmr_targets=[target])
    [strict] = protocol_b(TIE_SCORES, TIE_GENUINE, TIE_QUALITY, fmr_targets=[target], threshold_rule="kth-strict")
    assert (iso.threshold[0], iso.achieved_fmr[0]) == (0.5, 0.1)
    assert (strict.threshold[0], strict.achieved_fmr[0]) == (0.42, 0.1)
    for curve, expected in ((iso, B_ISO), (strict, B_STRICT)):
        np.testing.assert_allclose(curve.discard, B_X, atol=1e-15)
        np.testing.assert_allclose(curve.fnmr, [float(v) for v in expected], atol=1e-15)
    # stepwise area up to 0.3: the values on [0, .1), [.1, .2), [.2, .3)
    assert iso.area == pytest.approx(float(F(1, 10) * (F(2, 10) + F(2, 9) + F(1, 8))), abs=1e-15)
    assert strict.area == pytest.approx(float(F(1, 10) * (F(1, 10) + F(1, 9))), abs=1e-15)
    assert iso.best == pytest.approx(0.2 ** 2 / 2)  # E0 = 0.2 < 0.3: the whole triangle
    [iso_best] = protocol_b(TIE_SCORES, TIE_GENUINE, TIE_QUALITY, fmr_targets=[target], subtract_best=True)
    assert iso_best.value == pytest.approx(float(F(1, 10) * (F(2, 10) + F(2, 9) + F(1, 8)) - F(1, 50)), abs=1e-15)


def test_protocol_b_zero_false_matches_rejects_a_genuine_equal_to_the_best_impostor():
    # FMR 0.01 of 10 impostors: k = 0, tau just above the best impostor .5. Errors: every genuine
    # <= .5: g2 g3 g4 g8 g10 = 5/10 at zero discard, under both rules.
    for rule in ("iso", "kth-strict"):
        [curve] = protocol_b(TIE_SCORES, TIE_GENUINE, TIE_QUALITY, fmr_targets=[0.01], threshold_rule=rule)
        assert curve.fnmr0 == 0.5 and curve.achieved_fmr[0] == 0.0


def test_unknown_convention_names_are_refused():
    with pytest.raises(ValueError, match="unknown tie rule 'match'"):
        protocol_a(TIE_SCORES, TIE_GENUINE, TIE_QUALITY, tie_rule="match")
    with pytest.raises(ValueError, match="unknown threshold rule"):
        protocol_b(TIE_SCORES, TIE_GENUINE, TIE_QUALITY, threshold_rule="strict")


# ---------------------------------------------------------------- transcriptions


def roc_transcription(gscores, iscores):
    """CR-FIQA ERC/roc.py calculate_roc(ds_scores=True, rates=False): thresholds (distances),
    false matches, false non-matches per unique score."""
    g = np.asarray(gscores, dtype=np.float64) * -1
    i = np.asarray(iscores, dtype=np.float64) * -1
    labelled = sorted(list(zip(g, [1] * len(g))) + list(zip(i, [0] * len(i))), key=operator.itemgetter(0))
    scores = np.array(labelled)
    cumul = np.cumsum(scores[:, 1])
    thresholds, first = np.unique(scores[:, 0], return_index=True)
    fnm = cumul[first] - scores[first][:, 1]
    fm = len(i) - (first - fnm)
    return thresholds * -1, fm, fnm


def erc_transcription(distances, genuine, quality, targets, sort_kind=None):
    """CR-FIQA ERC/erc.py getFNMRFixedTH + roc.py get_eer_threshold, one FNMR list per target."""
    order = np.argsort(quality) if sort_kind is None else np.argsort(quality, kind=sort_kind)
    rates = np.arange(0, 0.98, 0.05)
    n = len(distances)
    curves = [[] for _ in targets]
    for u in rates:
        kept = order[int(u * n):]
        pos = np.sort(distances[kept][genuine[kept]])
        neg = np.sort(distances[kept][~genuine[kept]])
        if len(pos) == 0 or len(neg) == 0:
            for curve in curves:
                curve.append(math.nan)
            continue
        thresholds, fm, fnm = roc_transcription(pos, neg)
        fmr = fm / len(neg)
        for curve, target in zip(curves, targets):
            thr = thresholds[np.argmin(abs(fmr - target))]
            accepted = [d for d in pos if d < thr]
            curve.append(1 - len(accepted) / len(pos))
    return [np.array(c) for c in curves]


def tie_heavy(seed, n=3000, genuine_share=0.2, score_step=0.01, quality_levels=12):
    """Cosines on a 0.01 grid (many equal scores, so genuines sit on thresholds) and few
    distinct qualities (many equal pair qualities)."""
    rng = np.random.default_rng(seed)
    genuine = rng.random(n) < genuine_share
    cosine = np.where(genuine, rng.normal(0.45, 0.15, n), rng.normal(0.0, 0.1, n))
    cosine = np.clip(np.round(cosine / score_step) * score_step, -1, 1)
    quality = rng.integers(0, quality_levels, n).astype(np.float64)
    return cosine, genuine, quality


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_protocol_a_equals_the_erc_transcription_on_tie_heavy_data(seed):
    cosine, genuine, quality = tie_heavy(seed)
    distance = np.arccos(cosine) / np.pi  # erc.py's comparison score
    targets = [1e-2, 1e-3, 1e-1]
    # numpy's default argsort, as erc.py calls it: the same order of equal qualities
    ours = protocol_a(cosine, genuine, quality, fmr_targets=targets, quality_sort="numpy-default")
    for curve, expected in zip(ours, erc_transcription(distance, genuine, quality, targets)):
        np.testing.assert_allclose(curve.fnmr, expected, rtol=0, atol=1e-15)  # erc.py computes 1 - accepted / n
    # the default stable sort equals erc.py given a stable argsort
    ours = protocol_a(cosine, genuine, quality, fmr_targets=targets)
    for curve, expected in zip(ours, erc_transcription(distance, genuine, quality, targets, sort_kind="stable")):
        np.testing.assert_allclose(curve.fnmr, expected, rtol=0, atol=1e-15)


def test_the_inclusive_rule_differs_from_erc_exactly_by_the_genuines_on_the_threshold():
    cosine, genuine, quality = tie_heavy(5)
    erc = protocol_a(cosine, genuine, quality)
    inclusive = protocol_a(cosine, genuine, quality, tie_rule="inclusive")
    for a, b in zip(erc, inclusive):
        np.testing.assert_array_equal(a.threshold, b.threshold)
        kept_counts = []
        order = np.argsort(quality, kind="stable")
        for level, t in enumerate(a.threshold):
            kept = order[(level * len(cosine)) // 20:]
            g = cosine[kept][genuine[kept]]
            kept_counts.append(np.sum(g == t) / len(g))
        np.testing.assert_allclose(a.fnmr - b.fnmr, kept_counts, atol=1e-12)
        assert (a.fnmr >= b.fnmr).all() and (a.fnmr > b.fnmr).any()


def iso_threshold_transcription(impostors, target):
    """The definition: the smallest impostor score s with #{impostor >= s} <= floor(n FMR); just
    above every impostor when none qualifies. Match iff score >= tau."""
    allowed = math.floor(Fraction(repr(target)) * len(impostors))
    qualifying = [s for s in sorted(set(impostors.tolist())) if np.sum(impostors >= s) <= allowed]
    return qualifying[0] if qualifying else np.nextafter(impostors.max(), np.inf)


@pytest.mark.parametrize("seed", [0, 1])
def test_protocol_b_equals_the_iso_definition_on_tie_heavy_data(seed):
    cosine, genuine, quality = tie_heavy(seed, n=4000, genuine_share=0.5)
    impostors = cosine[~genuine]
    for target in (1e-2, 3e-2, 1e-3, 1e-4):
        tau = iso_threshold_transcription(impostors, target)
        [curve] = protocol_b(cosine, genuine, quality, fmr_targets=[target])
        assert curve.threshold[0] == tau
        assert curve.achieved_fmr[0] == np.mean(impostors >= tau) <= target
        # the curve point after discarding every genuine pair of quality <= level
        gq, gs = quality[genuine], cosine[genuine]
        for point, level in enumerate([-np.inf, *np.unique(gq)[:-1]]):
            kept = gq > level
            assert curve.discard[point] == pytest.approx(1 - kept.mean(), abs=1e-12)
            assert curve.fnmr[point] == pytest.approx(np.mean(gs[kept] < tau), abs=1e-12)


def test_conventions_move_the_numbers_in_the_expected_direction():
    """On simulated LFW-sized sets with ties: erc's FNMR is never below the inclusive rule's
    at any level, and ISO's FNMR(0) never below kth-strict's; both differ somewhere."""
    cosine, genuine, quality = simulated_lfw(7)
    for a, b in zip(protocol_a(cosine, genuine, quality), protocol_a(cosine, genuine, quality, tie_rule="inclusive")):
        assert (a.fnmr >= b.fnmr).all()
    iso = protocol_b(cosine, genuine, quality)
    strict = protocol_b(cosine, genuine, quality, threshold_rule="kth-strict")
    assert all(a.fnmr0 >= b.fnmr0 and a.achieved_fmr[0] == b.achieved_fmr[0] for a, b in zip(iso, strict))
    assert any(a.area != b.area for a, b in zip(iso, strict))


# ---------------------------------------------------------------- measurement (docs numbers)


SCENARIOS = {
    # name: (genuine cosine mean = a + b * latent, genuine spread, impostor spread)
    "weak": (0.35, 0.40, 0.12, 0.09),    # FNMR(0) about 2-8 %, a weak recogniser (or a hard benchmark)
    "strong": (0.45, 0.35, 0.12, 0.08),  # FNMR(0) about 0.2-1 %, LFW with a good recogniser
}


def simulated_lfw(seed, scenario="weak", decimals=3):
    """6000 pairs (3000 genuine), as LFW's pairs.txt. Each pair has a latent quality; genuine
    cosines grow with it. Cosines rounded to ``decimals`` (None: float64, no ties) and a quality
    that is the latent plus noise, rounded to 2 decimals (duplicate qualities)."""
    a, b, genuine_spread, impostor_spread = SCENARIOS[scenario]
    rng = np.random.default_rng(seed)
    n = 6000
    genuine = np.arange(n) % 2 == 0
    latent = rng.random(n)
    cosine = np.where(genuine, rng.normal(a + b * latent, genuine_spread), rng.normal(0.0, impostor_spread, n))
    cosine = np.clip(cosine if decimals is None else np.round(cosine, decimals), -1, 1)
    quality = np.round(latent + rng.normal(0, 0.25, n), 2)
    return cosine, genuine, quality


TARGETS = (1e-2, 1e-3, 1e-4)


def measure(runs=50, settings=(("weak", 3), ("weak", None), ("strong", 3), ("strong", None))):
    """Per setting and convention, min / median / max over ``runs`` simulated sets of the
    difference the convention makes, and the median FNMR(0)."""
    rows = []
    for scenario, decimals in settings:
        table = {key: {t: [] for t in TARGETS} for key in ("a", "sort", "b", "fnmr0")}
        for seed in range(runs):
            cosine, genuine, quality = simulated_lfw(seed, scenario, decimals)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", EvaluationWarning)
                erc = protocol_a(cosine, genuine, quality)
                inclusive = protocol_a(cosine, genuine, quality, tie_rule="inclusive")
                numpy_sort = protocol_a(cosine, genuine, quality, quality_sort="numpy-default")
                iso = protocol_b(cosine, genuine, quality)
                strict = protocol_b(cosine, genuine, quality, threshold_rule="kth-strict")
            for x, y, z, b1, b2 in zip(erc, inclusive, numpy_sort, iso, strict):
                t = x.fmr_target
                table["a"][t].append(x.pauc - y.pauc)
                table["sort"][t].append(z.pauc - x.pauc)
                table["fnmr0"][t].append(x.fnmr0)
                if b1.area > 0:
                    table["b"][t].append(b2.area / b1.area - 1)
        for key, name in (("fnmr0", "FNMR(0), protocol A erc"), ("a", "A: pAUC erc - pAUC inclusive"),
                          ("sort", "A: pAUC numpy-default - pAUC stable"), ("b", "B: area kth-strict / area iso - 1")):
            for target in TARGETS:
                values = np.array(table[key][target] or [math.nan])
                rows.append((scenario, decimals, name, target, np.nanmin(values), np.nanmedian(values), np.nanmax(values)))
    return rows


if __name__ == "__main__":
    print("scenario | score decimals | quantity | FMR | min | median | max")
    for scenario, decimals, name, target, low, mid, high in measure():
        print(f"{scenario} | {decimals or 'float64'} | {name} | {target:g} | {low:+.4f} | {mid:+.4f} | {high:+.4f}")

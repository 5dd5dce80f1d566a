"""The compiled ops against their pure-torch twins (synfiqa.ops.reference, one per op), their
validation, their registration (opcheck) and the fallback when the native build fails.

The first run compiles the C++ library (20-80 s); later runs load it from the cache."""
from __future__ import annotations

import math
import os
import subprocess
import sys
import warnings

import pytest
import torch

import synfiqa.ops as ops
from synfiqa.ops import loader
from synfiqa.mr_label import reference_cosine
from tests.benchmarks.baselines import greedy_unique_loop


@pytest.fixture(scope="module", autouse=True)
def native_library():
    if not loader.ensure_cpu():
        pytest.fail(f"the native CPU library did not build: {loader.state('cpu').error}")


def paper_batch(n: int, height: int, width: int, seed: int = 0):
    """Images with the blur-downscale plugin's own kernels and factors."""
    from synfiqa_plugins.degradations.blur_downscale import BlurDownscale

    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, height, width), dtype=torch.uint8, generator=generator)
    params = BlurDownscale().sample_params(n, generator)
    return images, params["kernel"], params["low_scale"] + 1.0


def assert_within_one_level(native: torch.Tensor, reference: torch.Tensor):
    assert native.shape == reference.shape and native.dtype == torch.uint8
    difference = (native.int() - reference.int()).abs()
    assert int(difference.max()) <= 1  # 1/255: float32 summation order
    assert float((difference > 0).float().mean()) < 1e-3  # and only where a value sits on a .5 boundary


# ---------------------------------------------------------------- blur_resample

@pytest.mark.parametrize("n, height, width", [(6, 112, 112), (3, 37, 53), (1, 112, 112), (2, 224, 160)])
def test_blur_resample_native_matches_reference_on_the_papers_kernels(n, height, width):
    images, kernels, factors = paper_batch(n, height, width, seed=height + n)
    native = ops.blur_resample(images, kernels, factors, impl="native")
    reference = ops.blur_resample(images, kernels, factors, impl="reference")
    assert_within_one_level(native, reference)


@pytest.mark.parametrize("size, out_size", [(1, None), (3, (40, 17)), (7, (29, 41)), (33, None)])
def test_blur_resample_random_kernels_factors_and_output_sizes(size, out_size):
    generator = torch.Generator().manual_seed(size)
    images = torch.randint(0, 256, (4, 2, 41, 35), dtype=torch.uint8, generator=generator)
    kernels = torch.rand(4, size, size, generator=generator) - 0.2  # negative taps too
    factors = torch.tensor([1.0, 1.7, 3.25, 8.9], dtype=torch.float64)
    native = ops.blur_resample(images, kernels, factors, out_size, impl="native")
    reference = ops.blur_resample(images, kernels, factors, out_size, impl="reference")
    assert native.shape == (4, 2) + (out_size or (41, 35))
    assert_within_one_level(native, reference)


def test_blur_resample_identity_kernel_and_factor_one_return_the_input():
    images, _, _ = paper_batch(3, 31, 23)
    delta = torch.zeros(3, 5, 5)
    delta[:, 2, 2] = 1.0
    for impl in ("native", "reference"):
        assert torch.equal(ops.blur_resample(images, delta, 1.0, impl=impl), images)


def test_blur_resample_a_constant_image_stays_constant():
    images = torch.full((2, 3, 50, 50), 137, dtype=torch.uint8)
    _, kernels, factors = paper_batch(2, 50, 50)
    for impl in ("native", "reference"):
        assert torch.equal(ops.blur_resample(images, kernels, factors, impl=impl), images)


def test_blur_resample_non_contiguous_input_and_batch_equals_singles():
    images, kernels, factors = paper_batch(4, 64, 48, seed=3)
    channels_last = images.contiguous(memory_format=torch.channels_last)
    strided = torch.randint(0, 256, (4, 3, 64, 96), dtype=torch.uint8)[..., ::2]
    strided[:] = images
    assert not strided.is_contiguous()
    expected = ops.blur_resample(images, kernels, factors, impl="native")
    assert torch.equal(ops.blur_resample(channels_last, kernels, factors, impl="native"), expected)
    assert torch.equal(ops.blur_resample(strided, kernels.transpose(1, 2).contiguous().transpose(1, 2), factors,
                                         impl="native"), expected)
    singles = torch.cat([ops.blur_resample(images[i : i + 1], kernels[i : i + 1], factors[i : i + 1], impl="native")
                         for i in range(4)])
    assert torch.equal(singles, expected)


def test_blur_resample_downscaled_size_rounds_half_to_even():
    # 10 / 4 = 2.5 rounds to 2 (Python's round); the native plan must agree, or the
    # reference and the native op would resample through different sizes.
    images = torch.randint(0, 256, (1, 1, 10, 14), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    kernel = torch.ones(1, 1, 1)
    native = ops.blur_resample(images, kernel, 4.0, impl="native")
    reference = ops.blur_resample(images, kernel, 4.0, impl="reference")
    assert_within_one_level(native, reference)
    assert ops.reference.downscaled_size(10, 14, 4.0) == (2, 4)


def test_blur_downscale_plugin_fast_mode_runs_the_op_and_matches_reference_mode():
    from synfiqa_plugins.degradations.blur_downscale import BlurDownscale

    images, _, _ = paper_batch(5, 112, 112, seed=9)
    params = BlurDownscale().sample_params(5, torch.Generator().manual_seed(9))
    fast = BlurDownscale(mode="fast").apply(images, params)
    assert torch.equal(fast, ops.blur_resample(images, params["kernel"], params["low_scale"] + 1.0, impl="native"))
    assert_within_one_level(fast, BlurDownscale(mode="reference").apply(images, params))


# ---------------------------------------------------------------- ref_cosine

def embedding_sets(seed=0, n=2000, m=150, d=48, identities=30):
    generator = torch.Generator().manual_seed(seed)
    samples = torch.randn(n, d, generator=generator)
    sample_ids = torch.randint(0, identities + 3, (n,), generator=generator)  # some ids have no reference
    references = torch.randn(m, d, generator=generator)
    reference_ids = torch.randint(0, identities, (m,), generator=generator)
    return samples, sample_ids, references, reference_ids


def test_ref_cosine_equals_the_scoring_formula_per_identity():
    samples, sample_ids, references, reference_ids = embedding_sets()
    native = ops.ref_cosine(samples, sample_ids, references, reference_ids, impl="native")
    reference = ops.ref_cosine(samples, sample_ids, references, reference_ids, impl="reference")
    assert native.dtype == torch.float32 and native.shape == (2000,)
    assert torch.equal(native.isnan(), reference.isnan())
    for identity in sample_ids.unique().tolist():
        rows = sample_ids == identity
        refs = references[reference_ids == identity]
        if len(refs) == 0:
            assert bool(native[rows].isnan().all())  # documented: no reference -> NaN
            continue
        expected = reference_cosine(samples[rows], refs)
        assert torch.allclose(native[rows].double(), expected, atol=2e-6, rtol=0)
        assert torch.allclose(reference[rows].double(), expected, atol=2e-6, rtol=0)


def test_ref_cosine_float64_sparse_ids_non_contiguous_and_one_sample():
    samples, sample_ids, references, reference_ids = embedding_sets(seed=1, n=300, d=31)
    expected = ops.ref_cosine(samples.double(), sample_ids, references.double(), reference_ids, impl="reference")
    transposed = samples.double().T.contiguous().T  # same values, column-major
    assert not transposed.is_contiguous()
    native = ops.ref_cosine(transposed, sample_ids * 10**12 + 7, references.double(), reference_ids * 10**12 + 7,
                            impl="native")
    assert native.dtype == torch.float64
    assert torch.allclose(native, expected, atol=1e-12, equal_nan=True)
    one = ops.ref_cosine(samples[:1], sample_ids[:1], references, reference_ids, impl="native")
    assert torch.allclose(one, expected[:1].float(), atol=1e-6, equal_nan=True)


def test_ref_cosine_zero_vectors_give_zero_and_missing_references_give_nan():
    samples = torch.zeros(3, 4)
    samples[1] = torch.tensor([1.0, 0, 0, 0])
    references = torch.tensor([[2.0, 0, 0, 0], [0.0, 0, 0, 0]])
    out = ops.ref_cosine(samples, torch.tensor([0, 0, 5]), references, torch.tensor([0, 0]), impl="native")
    assert out[0] == 0.0 and out[1] == pytest.approx(1.0) and torch.isnan(out[2])
    empty = ops.ref_cosine(samples, torch.tensor([0, 0, 5]), references[:0], torch.tensor([], dtype=torch.long),
                           impl="native")
    assert bool(empty.isnan().all())


# ---------------------------------------------------------------- greedy_unique

def with_duplicates(n, d, fraction=0.3, noise=0.8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=generator)
    duplicate = torch.rand(n, generator=generator) < fraction
    source = (torch.rand(n, generator=generator) * torch.arange(n)).long()
    x[duplicate] = (x[source] + noise * torch.randn(n, d, generator=generator))[duplicate]
    return x


def native_equals_twin(x, threshold):
    """The native kernel's kept set, checked equal (bit for bit) to its twin's; returned."""
    native = ops.greedy_unique(x, threshold, impl="native")
    assert torch.equal(native, ops.greedy_unique(x, threshold, impl="reference"))
    return native


@pytest.mark.parametrize("n, d, threshold", [(1500, 64, 0.3), (700, 512, 0.3), (999, 3, 0.9), (400, 17, -0.2),
                                             (1, 8, 0.3), (241, 8, 0.5)])
def test_greedy_unique_equals_the_plain_greedy_loop(n, d, threshold):
    x = with_duplicates(n, d, seed=n)
    expected = greedy_unique_loop(x, threshold)
    assert 0 < int(expected.sum()) <= n
    assert torch.equal(native_equals_twin(x, threshold), expected)


def test_greedy_unique_pairs_right_at_the_threshold_and_exact_duplicates():
    # Cosines equal to the threshold are kept (the rule is "> threshold"); exact copies go.
    base = torch.eye(4, dtype=torch.float64)
    half = torch.full((1, 4), 0.5, dtype=torch.float64)  # unit length, cosine exactly 0.5 with each base row
    x = torch.cat([base, half, base[:1], torch.zeros(1, 4, dtype=torch.float64), half])
    expected = greedy_unique_loop(x, 0.5)
    assert expected.tolist() == [True, True, True, True, True, False, True, False]
    assert torch.equal(native_equals_twin(x, 0.5), expected)
    assert torch.equal(native_equals_twin(x.float(), 0.5), expected)


def test_greedy_unique_non_contiguous_float64_and_scaled_rows():
    x = with_duplicates(500, 40, seed=5).double()
    scaled = x * torch.rand(500, 1, dtype=torch.float64).add(0.1) * 100  # cosine ignores length
    expected = greedy_unique_loop(x, 0.3)
    assert torch.equal(native_equals_twin(scaled.T.contiguous().T, 0.3), expected)


def pairs_at_cosines(cosines, d, seed=0):
    """Rows in pairs (a, b), each pair in a random plane, with cosine(a, b) equal to the given
    value up to float64 rounding."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for cosine in cosines:
        basis, _ = torch.linalg.qr(torch.randn(d, 2, generator=generator, dtype=torch.float64))
        a, e = basis[:, 0], basis[:, 1]
        rows += [a, cosine * a + math.sqrt(1.0 - cosine * cosine) * e]
    return torch.stack(rows)


# Offsets from the threshold on both sides of the native screen's three tests: beyond its
# 8-bit bound (~2e-2 at D = 512, larger for tiny D), inside it but beyond the 16-bit bound
# (~1e-3), and inside that (settled by the float64 cosine). Offsets below ~1e-13 are left
# out here: there the float64 rounding of the plain loop's own matrix product decides (the
# twin and the kernel agree there too: the next test).
NEAR_THRESHOLD = [s * o for o in (1e-12, 1e-9, 1e-6, 1e-4, 1e-3, 4e-3, 1e-2, 2e-2, 3e-2, 6e-2, 0.1) for s in (1, -1)]


@pytest.mark.parametrize("d", [512, 37, 3])
@pytest.mark.parametrize("threshold", [0.3, 0.9, -0.2])
def test_greedy_unique_cosines_just_above_and_below_the_threshold(d, threshold):
    cosines = [min(max(threshold + offset, -1.0), 1.0) for offset in NEAR_THRESHOLD]
    x = pairs_at_cosines(cosines, d, seed=d)
    expected = greedy_unique_loop(x, threshold)
    assert torch.equal(native_equals_twin(x, threshold), expected)
    # The pairs themselves: each second row goes exactly when its cosine is over the threshold
    # (checked where the pairs are nearly orthogonal to each other, at D = 512).
    if d == 512 and threshold == 0.3:
        assert expected[1::2].tolist() == [c <= threshold for c in cosines]
    as_float = x.float()
    assert torch.equal(native_equals_twin(as_float, threshold), greedy_unique_loop(as_float, threshold))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("d", [512, 8, 3])
@pytest.mark.parametrize("threshold", [0.3, -0.7])
def test_greedy_unique_native_and_twin_agree_bit_for_bit_within_ulps_of_the_threshold(d, threshold, dtype):
    # Pairs whose float64 cosine is within a few float64 ulp of the threshold (float32 rows:
    # within float32 rounding of it): only the precise evaluation order decides them. Both
    # the C++ kernel and the twin compare the ordered cosine (products rounded one by one, no
    # FMA, summed in index order), so each pair's second row goes exactly when that cosine is
    # over the threshold, in both. (Before the C++ kernel rounded its products, GCC fused them
    # into FMAs: at D = 3 about 1 pair in 20 was judged otherwise than here.)
    from synfiqa.ops.reference import ordered_dot, unit_rows

    generator = torch.Generator().manual_seed(d)
    n = 300
    a = torch.randn(n, d, generator=generator, dtype=torch.float64)
    a = a / a.norm(dim=1, keepdim=True)
    e = torch.randn(n, d, generator=generator, dtype=torch.float64)
    e = e - (e * a).sum(dim=1, keepdim=True) * a
    e = e / e.norm(dim=1, keepdim=True)
    ulp = 2.0 ** (math.floor(math.log2(abs(threshold))) - 52)
    cosine = threshold + (torch.arange(n) % 7 - 3).double() * ulp
    b = cosine[:, None] * a + (1.0 - cosine * cosine).sqrt()[:, None] * e
    # Each pair on its own: stacked, the pairs would also meet each other (D = 3).
    unit = unit_rows(torch.stack([a, b], dim=1).reshape(2 * n, d).to(dtype))
    judged = ordered_dot(unit[0::2], unit[1::2])
    near = (judged - threshold).abs() <= 8 * ulp if dtype == torch.float64 else (judged - threshold).abs() < 1e-6
    assert int(near.sum()) > n // 2 and 0 < int((judged > threshold).sum()) < n
    kept = [native_equals_twin(torch.stack([a[i], b[i]]).to(dtype), threshold) for i in range(n)]
    assert [bool(k[1]) for k in kept] == (judged <= threshold).tolist()
    if d == 512 and dtype == torch.float64:
        # another summation order (torch's vectorised sum) judges some of these pairs otherwise
        assert int(((unit[0::2] * unit[1::2]).sum(dim=1) > threshold).ne(judged > threshold).sum()) > 0
    # All pairs at once (at D = 512 they are ~0.04 apart): the blocked paths agree as well.
    if d == 512:
        native_equals_twin(torch.stack([a, b], dim=1).reshape(2 * n, d).to(dtype), threshold)


@pytest.mark.parametrize("d", [512, 40])
@pytest.mark.parametrize("threshold", [0.3, 0.9, -0.2])
def test_greedy_unique_quantisation_error_aimed_at_the_partner(d, threshold):
    # The later row of each pair is built so that its 8-bit copy (largest component at 63)
    # rounds every other component by ~0.49 in the same direction, and the earlier row leans
    # along that error: the integer estimate is then off by nearly the whole error bound,
    # upwards or downwards. A bound that left out the later row's error, or halved both,
    # decides some of these pairs wrongly.
    generator = torch.Generator().manual_seed(d)
    rows = []
    for sign in (1.0, -1.0):
        for fraction in (0.3, 0.6, 0.9, 0.97, 1.0, 1.05, 1.2):
            steps = torch.randint(-62, 62, (d,), generator=generator).double()
            w = steps + 0.49
            w[0] = 63.0
            later = w / w.norm()
            error = later - torch.round(w) / (63.0 / later.abs().max())  # the 8-bit copy's error
            lean = error - (error @ later) * later
            lean = lean / lean.norm()
            # cosine(earlier, later) = threshold -+ fraction * |error|: the estimate errs by about
            # +-|error| (sqrt(1 - threshold^2) of it) towards the wrong side of the threshold.
            cosine = min(max(threshold - sign * fraction * float(error.norm()), -1.0), 1.0)
            earlier = cosine * later - sign * math.sqrt(1.0 - cosine * cosine) * lean
            rows += [earlier, later]
    x = torch.stack(rows)
    expected = greedy_unique_loop(x, threshold)
    assert torch.equal(native_equals_twin(x, threshold), expected)


def extreme_rows(d, seed=0):
    """Rows that push the 8-bit copies to their limits: one-hot rows, constant rows (every
    component at the largest value, every 16-bit lane of the kernel at its bound), signs
    alternating, four equal large components sharing one kernel lane, one huge component
    over tiny ones, values near float32's range ends; each with its negation, an exact copy
    and a slightly perturbed copy."""
    generator = torch.Generator().manual_seed(seed)
    rows = [torch.zeros(d, dtype=torch.float64) for _ in range(5)]
    rows[0][0] = 1.0
    rows[1][d - 1] = -3.0
    rows[2][:] = 1.0
    rows[3][:] = torch.tensor([(-1.0) ** k for k in range(d)], dtype=torch.float64)
    for k in (0, 1, 4, 5):
        if k < d:
            rows[4][k] = 1.0
    rows[4] += 1e-4 * torch.randn(d, generator=generator, dtype=torch.float64)
    spike = 1e-3 * torch.randn(d, generator=generator, dtype=torch.float64)
    spike[d // 2] = 1e3
    tiny = 1e-30 * torch.randn(d, generator=generator, dtype=torch.float64)
    large = 1e30 * torch.randn(d, generator=generator, dtype=torch.float64)
    base = torch.stack(rows + [spike, tiny, large])
    noise = 1e-3 * torch.randn(base.shape, generator=generator, dtype=torch.float64) * base.abs().amax(1, keepdim=True)
    x = torch.cat([base, -base, base, base + noise, torch.randn(20, d, generator=generator, dtype=torch.float64)])
    return x[torch.randperm(x.shape[0], generator=generator)]


@pytest.mark.parametrize("d", [1, 2, 3, 5, 7, 8, 9, 31, 33, 64, 100, 513])
@pytest.mark.parametrize("threshold", [0.3, 0.999, 0.0, -0.5])
def test_greedy_unique_rows_at_the_limits_of_the_integer_copies(d, threshold):
    x = extreme_rows(d, seed=d)
    expected = greedy_unique_loop(x, threshold)
    assert torch.equal(native_equals_twin(x, threshold), expected)
    as_float = x.float()
    assert torch.equal(native_equals_twin(as_float, threshold), greedy_unique_loop(as_float, threshold))


@pytest.mark.parametrize("threshold", [-0.1, 0.0, 0.3, -1.5, 1.5])
def test_greedy_unique_zero_rows_and_thresholds_outside_the_cosine_range(threshold):
    # A zero row's cosine with anything is 0: it goes after a kept row when the threshold is
    # negative, and, once kept, drops every later row then.
    x = with_duplicates(300, 24, seed=3)
    x[[0, 7, 8, 150, 299]] = 0.0
    expected = greedy_unique_loop(x, threshold)
    assert torch.equal(native_equals_twin(x, threshold), expected)
    assert torch.equal(native_equals_twin(x[7:], threshold), greedy_unique_loop(x[7:], threshold))


def test_greedy_unique_many_rows_few_kept_across_blocks():
    # 20,000 noisy copies of 6 directions: every block is dropped almost whole by a few kept
    # rows of the first block, and rows of later blocks are settled against them.
    generator = torch.Generator().manual_seed(11)
    centres = torch.randn(6, 96, generator=generator)
    x = centres[torch.randint(0, 6, (20_000,), generator=generator)] + 0.9 * torch.randn(20_000, 96,
                                                                                         generator=generator)
    expected = greedy_unique_loop(x, 0.3)
    assert int(expected.sum()) < 200
    assert torch.equal(native_equals_twin(x, 0.3), expected)


def test_greedy_unique_duplicates_within_and_across_blocks():
    # Rows a block (960) or more apart and rows inside one block; chains where a dropped row
    # would have dropped a later one.
    x = with_duplicates(2_500, 48, fraction=0.5, noise=0.6, seed=21)
    x[1_000:1_100] = x[:100]  # exact copies one block later
    x[2_000] = x[1_999]
    expected = greedy_unique_loop(x, 0.3)
    assert torch.equal(native_equals_twin(x, 0.3), expected)


def test_greedy_unique_very_wide_rows():
    # D = 300,000: constant rows would make the 8-bit dot product's bound pass int32's range
    # at the usual scale, so the signed copy is scaled down; the 16-bit copy keeps < 100.
    d = 300_000
    generator = torch.Generator().manual_seed(2)
    constant = torch.ones(1, d, dtype=torch.float64)
    x = torch.cat([constant, torch.randn(3, d, generator=generator, dtype=torch.float64), constant * 2,
                   constant + 0.5 * torch.randn(1, d, generator=generator, dtype=torch.float64), -constant])
    for threshold in (0.3, 0.999, -0.5):
        expected = greedy_unique_loop(x, threshold)
        assert torch.equal(native_equals_twin(x, threshold), expected)


# ---------------------------------------------------------------- registration

def test_opcheck_every_op():
    images, kernels, factors = paper_batch(2, 24, 20)
    torch.library.opcheck(torch.ops.synfiqa.blur_resample.default,
                          (images, kernels[:, 7:14, 7:14].contiguous(), factors.double(), [24, 20]))
    torch.library.opcheck(torch.ops.synfiqa.blur_resample.default, (images, kernels, factors.double(), [11, 30]))
    samples, _, references, _ = embedding_sets(n=50, m=20, d=8, identities=5)
    sample_ids, reference_ids = torch.arange(50) % 5, torch.arange(20) % 5  # no NaN: NaN != NaN in the checks
    torch.library.opcheck(torch.ops.synfiqa.ref_cosine.default, (samples, sample_ids, references, reference_ids))
    torch.library.opcheck(torch.ops.synfiqa.greedy_unique.default, (with_duplicates(60, 8), 0.3))


def test_fake_kernels_give_shapes_without_running():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        out = torch.ops.synfiqa.blur_resample(torch.empty(5, 3, 40, 40, dtype=torch.uint8), torch.empty(5, 21, 21),
                                              torch.empty(5, dtype=torch.float64), [112, 96])
        cos = torch.ops.synfiqa.ref_cosine(torch.empty(7, 16), torch.empty(7, dtype=torch.long), torch.empty(3, 16),
                                           torch.empty(3, dtype=torch.long))
        kept = torch.ops.synfiqa.greedy_unique(torch.empty(9, 16), 0.3)
    assert out.shape == (5, 3, 112, 96) and out.dtype == torch.uint8
    assert cos.shape == (7,) and kept.shape == (9,) and kept.dtype == torch.bool


def test_status_names_every_op_and_its_backend():
    report = ops.status()
    cpu = {row["op"]: row for row in report["ops"] if row["device"] == "cpu"}
    assert set(cpu) == {"blur_resample", "ref_cosine", "greedy_unique", "rasterize"}
    assert all(row["backend"] == "native" and ".so" in row["reason"] for row in cpu.values())


# ---------------------------------------------------------------- fallback and import

def test_a_failed_build_warns_once_and_falls_back_to_the_reference(monkeypatch):
    monkeypatch.setattr(loader, "_states", {"cpu": loader.BuildState(), "cuda": loader.BuildState()})

    def broken(kind, verbose, root=None):
        raise RuntimeError("Error building extension 'synfiqa_ops_cpu': [1/2] c++ -c x.cpp -o x.o\n"
                           "FAILED: x.o\nx.cpp:3:1: error: no compiler here")

    monkeypatch.setattr(loader, "_compile", broken)
    images, kernels, factors = paper_batch(2, 30, 30)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = ops.blur_resample(images, kernels, factors)
        ops.greedy_unique(torch.randn(10, 4), 0.3)
    assert [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)] == [
        "synfiqa ops: the native CPU build failed (RuntimeError: x.cpp:3:1: error: no compiler here); falling back "
        "to the pure-torch reference. `synfiqa ops build` shows the compiler output."]
    assert torch.equal(first, ops.blur_resample(images, kernels, factors, impl="reference"))
    with pytest.raises(ops.NativeOpsUnavailable, match="no compiler here"):
        ops.blur_resample(images, kernels, factors, impl="native")
    rows = [row for row in ops.status()["ops"] if row["device"] == "cpu"]
    assert all(row["backend"] == "reference" and "build failed" in row["reason"] for row in rows)


def test_disabling_native_ops_makes_auto_use_the_reference(monkeypatch):
    monkeypatch.setenv("SYNFIQA_NO_NATIVE_OPS", "1")
    monkeypatch.setattr(ops, "_native_ready", lambda device: pytest.fail("auto consulted the native build"))
    images, kernels, factors = paper_batch(1, 30, 30)
    expected = ops.blur_resample_reference(images, kernels.float(), factors.double())
    assert torch.equal(ops.blur_resample(images, kernels, factors), expected)
    assert all(row["backend"] == "reference" for row in ops.status()["ops"] if row["device"] == "cpu")


def test_importing_synfiqa_and_the_plugin_compiles_nothing(tmp_path):
    env = dict(os.environ, SYNFIQA_OPS_CACHE=str(tmp_path / "cache"))
    code = "import synfiqa, synfiqa.ops, synfiqa_plugins.degradations.blur_downscale; print('ok')"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
    assert not (tmp_path / "cache").exists()


def test_native_is_unavailable_on_a_device_without_kernels():
    with pytest.raises(ops.NativeOpsUnavailable, match="meta"):
        ops.greedy_unique(torch.empty(3, 4, device="meta"), 0.3, impl="native")


# ---------------------------------------------------------------- bad input

GOOD = paper_batch(2, 30, 30)


@pytest.mark.parametrize("call, error, match", [
    (lambda: ops.blur_resample(GOOD[0].float(), GOOD[1], GOOD[2]), TypeError, "images must be uint8"),
    (lambda: ops.blur_resample(GOOD[0][0], GOOD[1], GOOD[2]), ValueError, "images must be 4-D"),
    (lambda: ops.blur_resample(GOOD[0].numpy(), GOOD[1], GOOD[2]), TypeError, "images must be a torch.Tensor"),
    (lambda: ops.blur_resample(GOOD[0][:0], GOOD[1][:0], GOOD[2][:0]), ValueError, "images is an empty batch"),
    (lambda: ops.blur_resample(GOOD[0], torch.ones(2, 4, 4), GOOD[2]), ValueError, "odd size.*K = 4"),
    (lambda: ops.blur_resample(GOOD[0], torch.ones(2, 0, 0), GOOD[2]), ValueError, "odd size.*K = 0"),
    (lambda: ops.blur_resample(GOOD[0], torch.ones(2, 3, 5), GOOD[2]), ValueError, "kernels must be \\[N, K, K\\]"),
    (lambda: ops.blur_resample(GOOD[0], GOOD[1][:1], GOOD[2]), ValueError, "kernels has 1 kernels but images has 2"),
    (lambda: ops.blur_resample(GOOD[0], GOOD[1].long(), GOOD[2]), TypeError, "kernels must be a floating"),
    (lambda: ops.blur_resample(GOOD[0], GOOD[1] * float("nan"), GOOD[2]), ValueError, "kernels contain NaN"),
    (lambda: ops.blur_resample(GOOD[0], GOOD[1], torch.tensor([2.0, 0.5])), ValueError, "factors must be finite and >= 1"),
    (lambda: ops.blur_resample(GOOD[0], GOOD[1], torch.tensor([2.0])), ValueError, "factors must be \\[N\\] = \\[2\\]"),
    (lambda: ops.blur_resample(GOOD[0], GOOD[1], GOOD[2], out_size=(0, 5)), ValueError, "out_size must be positive"),
    (lambda: ops.blur_resample(GOOD[0], GOOD[1], GOOD[2], out_size="big"), ValueError, "out_size must be"),
    (lambda: ops.blur_resample(GOOD[0][..., :8, :8], GOOD[1], GOOD[2]), ValueError, "larger than kernel size // 2"),
    (lambda: ops.blur_resample(GOOD[0], GOOD[1], GOOD[2], impl="fast"), ValueError, "impl must be one of"),
    (lambda: ops.blur_resample(GOOD[0], GOOD[1].to("meta"), GOOD[2]), ValueError, "kernels is on meta"),
    (lambda: ops.ref_cosine(torch.ones(3, 4), torch.zeros(2, dtype=torch.long), torch.ones(2, 4),
                            torch.zeros(2, dtype=torch.long)), ValueError, "sample_ids has 2 entries but samples has 3"),
    (lambda: ops.ref_cosine(torch.ones(3, 4), torch.zeros(3, dtype=torch.long), torch.ones(2, 5),
                            torch.zeros(2, dtype=torch.long)), ValueError, "references have D = 5"),
    (lambda: ops.ref_cosine(torch.ones(3, 4), torch.zeros(3), torch.ones(2, 4),
                            torch.zeros(2, dtype=torch.long)), TypeError, "sample_ids must be an integer"),
    (lambda: ops.ref_cosine(torch.ones(3, 4), torch.zeros(3, dtype=torch.long), torch.ones(2, 4),
                            -torch.ones(2, dtype=torch.long)), ValueError, "reference_ids must be >= 0"),
    (lambda: ops.ref_cosine(torch.ones(3), torch.zeros(3, dtype=torch.long), torch.ones(2, 4),
                            torch.zeros(2, dtype=torch.long)), ValueError, "samples must be 2-D"),
    (lambda: ops.ref_cosine(torch.ones(3, 4, dtype=torch.long), torch.zeros(3, dtype=torch.long), torch.ones(2, 4),
                            torch.zeros(2, dtype=torch.long)), TypeError, "samples must be a floating"),
    (lambda: ops.ref_cosine(torch.ones(3, 4), torch.zeros(3, dtype=torch.long), torch.ones(2, 4, device="meta"),
                            torch.zeros(2, dtype=torch.long)), ValueError, "references is on meta"),
    (lambda: ops.greedy_unique(torch.ones(3, 0), 0.3), ValueError, "embeddings must have at least one column"),
    (lambda: ops.greedy_unique(torch.ones(3, 4), float("nan")), ValueError, "threshold must be a finite number"),
    (lambda: ops.greedy_unique(torch.ones(3, 4), "0.3"), ValueError, "threshold must be a finite number"),
    (lambda: ops.greedy_unique(torch.tensor([[1.0, float("inf")]]), 0.3), ValueError, "embeddings contain NaN"),
    (lambda: ops.greedy_unique(torch.ones(3, 4, dtype=torch.int32), 0.3), TypeError, "embeddings must be a floating"),
])
def test_bad_input_is_rejected_with_a_message_naming_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_empty_embedding_sets_give_empty_results():
    assert ops.greedy_unique(torch.ones(0, 4), 0.3).shape == (0,)
    assert ops.ref_cosine(torch.ones(0, 4), torch.zeros(0, dtype=torch.long), torch.ones(2, 4),
                          torch.zeros(2, dtype=torch.long)).shape == (0,)

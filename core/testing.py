"""The conformance kit: pytest mixins that check a plugin keeps synfiqa's contracts.

A plugin author subclasses a mixin in a test module and names the component::

    from synfiqa.testing import DegradationConformance

    class TestVignette(DegradationConformance):
        factory = Vignette                 # anything that builds the degradation
        factory_params = {"strength": (0.0, 0.8)}

and pytest runs every check on it. synfiqa runs the same mixins over every built-in
(tests/test_conformance.py). To run the checks on several components, override the
``degradation`` (or ``annotator``) fixture with a parametrised one.

Degradation checks: sample_params is pure (same seed, same params; the global random
generators untouched) and shapes its params right (first dimension n, every severity axis
a 1-D float parameter that the manifest records); apply is deterministic, keeps uint8 and
the shape, leaves its input alone, gives a batch of N the same result as N single
applications, accepts non-contiguous input and an empty batch, uses the ArcFace template
when no landmarks are given; a worse severity changes the image more (rank correlation,
over many samples, between every axis and how far the image moved: see image_changes);
bad input (float
images, wrong rank or channel count, params of another length, malformed landmarks,
negative n) raises TypeError or ValueError.

Stage-2 backend checks (``Stage2BackendConformance``, on a synthetic identity that needs no
face detector, ``conformance_identity``): render yields Rendered items of the plan only, each
entry once, uint8 pictures, the plan's own spec; determinism; an entry's image does not depend
on which other entries were asked for.

Annotator checks: the declared scope and score names, one finite score per sample,
determinism, and that scores follow their samples when the samples are reordered.

A degradation passes the bad-input checks by validating its arguments with the public
helpers of synfiqa.degradation (``check_count``, ``check_images``, ``check_params``,
``check_landmarks``), as the built-ins do.

Outside pytest's runner, ``run_checks`` runs a mixin's checks and returns one
``CheckResult`` per check (parametrised checks once per case)::

    results = run_checks(DegradationConformance, factory=Vignette)
    assert all(r.passed for r in results), [r for r in results if not r.passed]
"""
from __future__ import annotations

import inspect
import itertools
import random
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from synfiqa.align import ARCFACE_TEMPLATE_112
from synfiqa.annotation import SampleTable
from synfiqa.degradation import scalar_record

__all__ = ["AnnotatorConformance", "CheckResult", "DegradationConformance", "Stage2BackendConformance",
           "conformance_identity", "conformance_images", "image_changes",
           "run_checks", "spearman"]


def conformance_images(n: int, height: int = 112, width: int = 112, seed: int = 0) -> torch.Tensor:
    """Deterministic uint8 [n, 3, H, W] test images with smooth shading, fine texture and
    sharp edges everywhere, so that every kind of damage shows: blur removes the texture,
    noise and compression add to the flat parts, occluders cover structure."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 6, 6, generator=generator, dtype=torch.float64)
    shading = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64),
                            indexing="ij")
    frequency = 0.35 + 0.5 * torch.rand(n, 1, 1, 1, generator=generator, dtype=torch.float64)
    texture = torch.sin(frequency * xs) * torch.cos(0.8 * frequency * ys)
    blocks = ((xs // 9 + ys // 13) % 2) * 2 - 1
    image = 0.5 * shading + 0.15 * texture + 0.1 * blocks + 0.2
    return (image.clamp(0, 1) * 220 + 16).round().to(torch.uint8)


def spearman(a, b) -> float:
    """Rank correlation with ties sharing ranks; NaN when either side is constant."""
    from scipy.stats import rankdata

    ra, rb = rankdata(np.asarray(a, dtype=np.float64)), rankdata(np.asarray(b, dtype=np.float64))
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def image_changes(original: torch.Tensor, degraded: torch.Tensor) -> dict[str, np.ndarray]:
    """Two measures of how far each degraded image moved from the original [1, 3, H, W]:
    "grey levels", the mean absolute difference; "structure", the same after each image is
    standardised (mean 0, standard deviation 1), blind to a global gain and offset. A
    severity axis passes the kit's check on either: a global darkening changes grey
    levels, a shading ramp changes structure, and the two can be drawn together."""

    def standardised(x):
        x = x.to(torch.float64)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        return (x - mean) / x.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)

    return {
        "grey levels": (degraded.to(torch.float64) - original.to(torch.float64)).abs().mean(dim=(1, 2, 3)).numpy(),
        "structure": (standardised(degraded) - standardised(original)).abs().mean(dim=(1, 2, 3)).numpy(),
    }


def _build(mixin, what: str):
    """The component `factory(**factory_params)` builds. The factory is read from the class,
    so a plain function is not bound as a method."""
    factory = type(mixin).factory
    if factory is None:
        raise TypeError(f"{type(mixin).__name__}: set `factory` to the {what} to test, "
                        f"or override the `{what}` fixture")
    return factory(**type(mixin).factory_params)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _rows(params: dict, index) -> dict:
    return {key: value[index] for key, value in params.items()}


def _template(n: int, height: int, width: int) -> torch.Tensor:
    # float64, as the plugin's own default: a float32 copy of the template rounds the
    # landmarks, and a landmark-placed effect may move by a grey level
    template = torch.tensor(ARCFACE_TEMPLATE_112, dtype=torch.float64)
    template[:, 0] *= width / 112.0
    template[:, 1] *= height / 112.0
    return template.expand(n, 5, 2).clone()


def _same_params(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class DegradationConformance:
    """Mixin: set ``factory`` (and ``factory_params``), or override the ``degradation`` fixture."""

    factory = None
    factory_params: dict = {}
    image_size: tuple[int, int] = (112, 112)
    batch_size = 5
    # how many samples the severity check draws, and the rank correlation it needs
    severity_samples = 64
    min_severity_correlation = 0.25

    @pytest.fixture
    def degradation(self):
        return _build(self, "degradation")

    # ------------------------------------------------------------ helpers

    def images(self, n: int, seed: int = 0, size: tuple[int, int] | None = None) -> torch.Tensor:
        height, width = size or self.image_size
        return conformance_images(n, height, width, seed)

    def params(self, degradation, n: int, seed: int = 0) -> dict:
        return degradation.sample_params(n, _generator(seed))

    # ------------------------------------------------------------ sample_params

    def test_declares_severity_axes(self, degradation):
        axes = degradation.severity_axes
        assert isinstance(axes, (tuple, list)) and len(axes) > 0, "declare at least one severity axis"
        assert all(isinstance(axis, str) and axis for axis in axes)
        assert len(set(axes)) == len(axes), f"severity axes repeat: {axes}"

    def test_params_have_one_row_per_sample(self, degradation):
        n = 4
        params = self.params(degradation, n)
        assert isinstance(params, dict) and params
        for key, value in params.items():
            assert isinstance(value, torch.Tensor), f"params[{key!r}] is a {type(value).__name__}, not a tensor"
            assert value.dim() >= 1 and value.shape[0] == n, f"params[{key!r}] has shape {tuple(value.shape)}, not [{n}, ...]"

    def test_severity_axes_are_recorded_1d_float_params(self, degradation):
        n = 6
        params = self.params(degradation, n)
        recorded = scalar_record(params, n)
        for axis in degradation.severity_axes:
            assert axis in params, f"severity axis {axis!r} is not a param"
            value = params[axis]
            assert value.dim() == 1 and value.is_floating_point(), \
                f"severity axis {axis!r} must be a 1-D float tensor, got {value.dtype} {tuple(value.shape)}"
            assert bool(torch.isfinite(value).all()), f"severity axis {axis!r} has NaN or infinity"
            assert all(axis in row for row in recorded), f"severity axis {axis!r} is not recorded"

    def test_sample_params_is_seeded(self, degradation):
        first = self.params(degradation, 8, seed=11)
        again = self.params(degradation, 8, seed=11)
        other = self.params(degradation, 8, seed=12)
        assert _same_params(first, again), "the same seed gave different params"
        assert not _same_params(first, other), "different seeds gave the same params"

    def test_sample_params_leaves_global_random_state_alone(self, degradation):
        torch_state, numpy_state, python_state = torch.get_rng_state(), np.random.get_state(), random.getstate()
        self.params(degradation, 8)
        assert torch.equal(torch.get_rng_state(), torch_state), "sample_params used torch's global generator"
        assert np.random.get_state()[1].tolist() == numpy_state[1].tolist(), "sample_params used numpy's global generator"
        assert random.getstate() == python_state, "sample_params used Python's global generator"

    def test_sample_params_of_zero_samples(self, degradation):
        params = self.params(degradation, 0)
        for key, value in params.items():
            assert value.shape[0] == 0, f"params[{key!r}] has {value.shape[0]} rows for n = 0"

    def test_sample_params_rejects_negative_n(self, degradation):
        with pytest.raises((ValueError, TypeError)):
            degradation.sample_params(-1, _generator(0))

    # ------------------------------------------------------------ apply

    def test_apply_is_deterministic(self, degradation):
        images = self.images(self.batch_size)
        params = self.params(degradation, self.batch_size, seed=3)
        assert torch.equal(degradation.apply(images, params), degradation.apply(images, params))

    @pytest.mark.parametrize("size", [None, (96, 80)], ids=["square", "portrait"])
    def test_apply_keeps_uint8_and_shape(self, degradation, size):
        images = self.images(self.batch_size, size=size)
        out = degradation.apply(images, self.params(degradation, self.batch_size, seed=4))
        assert isinstance(out, torch.Tensor) and out.dtype == torch.uint8
        assert out.shape == images.shape

    def test_apply_leaves_its_input_alone(self, degradation):
        images = self.images(self.batch_size)
        before = images.clone()
        degradation.apply(images, self.params(degradation, self.batch_size, seed=5))
        assert torch.equal(images, before), "apply wrote into its input"

    def test_batch_equals_single_applications(self, degradation):
        n = self.batch_size
        images = self.images(n, seed=1)
        params = self.params(degradation, n, seed=6)
        batch = degradation.apply(images, params)
        for i in range(n):
            single = degradation.apply(images[i : i + 1], _rows(params, slice(i, i + 1)))
            assert torch.equal(batch[i : i + 1], single), f"sample {i} differs when applied alone"

    def test_template_landmarks_are_the_default(self, degradation):
        n = self.batch_size
        height, width = self.image_size
        images = self.images(n, seed=2)
        params = self.params(degradation, n, seed=7)
        assert torch.equal(degradation.apply(images, params),
                           degradation.apply(images, params, landmarks=_template(n, height, width)))

    def test_non_contiguous_images(self, degradation):
        n = self.batch_size
        images = self.images(n, seed=3)
        params = self.params(degradation, n, seed=8)
        channels_last = images.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
        assert not channels_last.is_contiguous()
        assert torch.equal(degradation.apply(channels_last, params), degradation.apply(images, params))

    def test_empty_batch(self, degradation):
        height, width = self.image_size
        images = torch.zeros(0, 3, height, width, dtype=torch.uint8)
        out = degradation.apply(images, self.params(degradation, 0))
        assert out.dtype == torch.uint8 and out.shape == images.shape

    def test_worse_severity_changes_the_image_more(self, degradation):
        n = self.severity_samples
        image = self.images(1, seed=4)
        params = self.params(degradation, n, seed=9)
        out = degradation.apply(image.expand(n, *image.shape[1:]).contiguous(), params)
        changes = image_changes(image, out)
        for axis in degradation.severity_axes:
            correlations = {name: spearman(params[axis], change) for name, change in changes.items()}
            assert max(correlations.values()) >= self.min_severity_correlation, (
                f"severity axis {axis!r}: rank correlation with the image change over {n} samples is "
                + ", ".join(f"{c:.3f} ({name})" for name, c in correlations.items())
                + f", below {self.min_severity_correlation}: larger must mean worse")

    # ------------------------------------------------------------ bad input

    def test_rejects_float_images(self, degradation):
        images = self.images(2).to(torch.float32)
        with pytest.raises((TypeError, ValueError), match="images"):
            degradation.apply(images, self.params(degradation, 2))

    @pytest.mark.parametrize("shape", [(3, 112, 112), (2, 1, 112, 112), (2, 4, 112, 112)],
                             ids=["rank3", "grey", "rgba"])
    def test_rejects_malformed_images(self, degradation, shape):
        images = torch.zeros(shape, dtype=torch.uint8)
        with pytest.raises((TypeError, ValueError), match="images"):
            degradation.apply(images, self.params(degradation, 2))

    def test_rejects_params_of_another_length(self, degradation):
        images = self.images(3)
        with pytest.raises((TypeError, ValueError)):
            degradation.apply(images, self.params(degradation, 2))

    @pytest.mark.parametrize("shape", [(3, 4, 2), (3, 5), (2, 5, 2)], ids=["four-points", "flat", "other-length"])
    def test_rejects_malformed_landmarks(self, degradation, shape):
        images = self.images(3)
        with pytest.raises((TypeError, ValueError), match="landmarks"):
            degradation.apply(images, self.params(degradation, 3), landmarks=torch.zeros(shape))


class AnnotatorConformance:
    """Mixin: set ``factory`` (and ``factory_params``), or override the ``annotator`` fixture.

    Dataset-scope annotators get ``make_table`` (override it when yours reads other
    columns or scores); identity-scope ones need ``make_context`` to return a context that
    can build their models (synfiqa.context.RunContext), else their checks are skipped.
    """

    factory = None
    factory_params: dict = {}
    samples = 24

    @pytest.fixture
    def annotator(self):
        return _build(self, "annotator")

    def make_table(self, n: int, seed: int = 0) -> SampleTable:
        """A dataset of n degraded samples: |yaw| and two severity axes with ties, and
        fr, sd, vl scores in their natural ranges."""
        rng = np.random.default_rng(seed)
        axes = ["first.level", "second.level"]
        params = [{"pose.abs_yaw": float(rng.uniform(0, 20)), axes[0]: float(rng.integers(0, 4)),
                   axes[1]: float(rng.uniform(1, 3))} for _ in range(n)]
        scores = {"fr": rng.uniform(-0.2, 0.9, n), "sd": rng.uniform(0, 1, n), "vl": rng.uniform(0.1, 0.5, n)}
        return SampleTable(paths=[f"data/id{i % 3}/{i}.jpg" for i in range(n)], params=params,
                           scores=scores, severity_axes=axes)

    def make_context(self):
        return None

    def _annotate(self, annotator, order=None):
        n = self.samples
        if annotator.scope == "dataset":
            table = self.make_table(n)
            if order is not None:
                table = SampleTable(paths=[table.paths[i] for i in order], params=[table.params[i] for i in order],
                                    scores={k: v[order] for k, v in table.scores.items()},
                                    severity_axes=table.severity_axes, unavailable=table.unavailable)
            return annotator.annotate_dataset(table, self.make_context())
        context = self.make_context()
        if context is None:
            pytest.skip("an identity-scope annotator needs make_context() to return a context with its models")
        samples, references = conformance_images(n, seed=1), conformance_images(4, seed=2)
        if order is not None:
            samples = samples[torch.as_tensor(order)]
        return annotator.annotate_identity(samples, references, context)

    def test_declares_scope_and_scores(self, annotator):
        assert annotator.scope in ("identity", "dataset")
        assert isinstance(annotator.provides, (tuple, list)) and annotator.provides
        assert all(isinstance(name, str) and name for name in annotator.provides)

    def test_one_finite_score_per_sample(self, annotator):
        out = self._annotate(annotator)
        assert set(out) == set(annotator.provides), f"returned {sorted(out)}, declared {sorted(annotator.provides)}"
        for name, values in out.items():
            values = np.asarray(torch.as_tensor(values).detach().cpu(), dtype=np.float64)
            assert values.shape == (self.samples,), f"{name}: shape {values.shape}, want ({self.samples},)"
            assert np.isfinite(values).all(), f"{name} has NaN or infinity"

    def test_is_deterministic(self, annotator):
        first, again = self._annotate(annotator), self._annotate(annotator)
        for name in first:
            np.testing.assert_array_equal(np.asarray(torch.as_tensor(first[name])),
                                          np.asarray(torch.as_tensor(again[name])))

    def test_scores_follow_their_samples(self, annotator):
        order = np.random.default_rng(5).permutation(self.samples)
        plain, shuffled = self._annotate(annotator), self._annotate(annotator, order)
        for name in plain:
            np.testing.assert_allclose(np.asarray(torch.as_tensor(shuffled[name]), dtype=np.float64),
                                       np.asarray(torch.as_tensor(plain[name]), dtype=np.float64)[order],
                                       rtol=1e-9, atol=1e-12, err_msg=f"{name} changed when samples were reordered")


# ---------------------------------------------------------------- running the checks without pytest's runner


@dataclass(frozen=True)
class CheckResult:
    check: str            # the test's name, with the parametrised case: "test_rejects_malformed_images[grey]"
    passed: bool
    skipped: bool = False
    message: str = ""     # why it failed or was skipped

    def __str__(self) -> str:
        state = "passed" if self.passed else "skipped" if self.skipped else "FAILED"
        return f"{self.check}: {state}" + (f" ({self.message})" if self.message else "")


def _cases(function) -> list[tuple[str, dict]]:
    """The parametrised cases of a test function: (id suffix, arguments)."""
    axes = []
    for mark in getattr(function, "pytestmark", []):
        if mark.name != "parametrize":
            continue
        names, values = mark.args[0], list(mark.args[1])
        names = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
        ids = mark.kwargs.get("ids") or [None] * len(values)
        options = []
        for index, (value, case_id) in enumerate(zip(values, ids)):
            arguments = dict(zip(names, value)) if len(names) > 1 else {names[0]: value}
            options.append((case_id if case_id is not None else f"{names[0]}{index}", arguments))
        axes.append(options)
    cases = []
    for combination in itertools.product(*axes):
        suffix = "-".join(case_id for case_id, _ in combination)
        cases.append((f"[{suffix}]" if suffix else "", {k: v for _, args in combination for k, v in args.items()}))
    return cases


def run_checks(conformance: type, **attributes) -> list[CheckResult]:
    """Run every check of a conformance mixin (DegradationConformance, AnnotatorConformance,
    Stage2BackendConformance or a subclass of one) without pytest's runner, each on a freshly built component, and
    return one CheckResult per check. ``attributes`` set class attributes first: ``factory``,
    ``factory_params``, ``image_size``, ... A subclass whose component fixture is
    parametrised (it reads ``request.param``) needs pytest itself."""
    mixin = type(f"Checked{conformance.__name__}", (conformance,), attributes) if attributes else conformance
    fixture = ("degradation" if issubclass(mixin, DegradationConformance) else
               "backend" if issubclass(mixin, Stage2BackendConformance) else "annotator")
    definition = inspect.getattr_static(mixin, fixture)
    build = getattr(definition, "_get_wrapped_function", None)
    results = []
    for name in sorted(n for n in dir(mixin) if n.startswith("test_")):
        function = getattr(mixin, name)
        for suffix, arguments in _cases(function):
            check = name + suffix
            instance = mixin()
            try:
                component = build()(instance) if build is not None else _build(instance, fixture)
                function(instance, **{fixture: component}, **arguments)
            except pytest.skip.Exception as skipped:
                results.append(CheckResult(check, False, True, str(skipped.msg)))
            except (Exception, pytest.fail.Exception) as error:
                message = " ".join(str(error).split()) or type(error).__name__
                results.append(CheckResult(check, False, False, f"{type(error).__name__}: {message}"[:500]))
            else:
                results.append(CheckResult(check, True))
    return results


# ---------------------------------------------------------------- Stage-2 backends


def conformance_identity(photos: int = 3, size: int = 256, name: str = "conformance") -> "IdentityInput":
    """A synthetic identity for the Stage-2 kit: `photos` textured images with a face box and
    the ArcFace template's five landmarks placed in the middle (no detector needed), at
    different |yaw| and sharpness, so that split_photos has a choice to make."""
    from synfiqa.models import DetectedFace
    from synfiqa.synthesis import IdentityInput, IdentityPhoto

    items = []
    for i in range(photos):
        image = conformance_images(1, size, size, seed=i)[0].permute(1, 2, 0).numpy().copy()
        scale = size / 224.0
        landmarks = ARCFACE_TEMPLATE_112 * 2 * scale + size / 4
        box = np.array([size / 4, size / 4, size * 3 / 4, size * 3 / 4], dtype=np.float64)
        crop = image[size // 4: size * 3 // 4, size // 4: size * 3 // 4][::2, ::2].copy()
        items.append(IdentityPhoto(key=f"photo_{i}.png", image=image,
                                   face=DetectedFace(box=box, score=1.0, landmarks=landmarks),
                                   crop=crop, abs_yaw=float(5 * i), sharpness=float(100 - i)))
    return IdentityInput(name, tuple(items))


class _ConformanceContext:
    """What a backend may read of a run's context in the kit: the config's run seed and the device."""

    def __init__(self, seed: int = 0):
        self.config = {"run": {"seed": seed}}
        self.device = torch.device("cpu")


class Stage2BackendConformance:
    """Mixin: set ``factory`` (and ``factory_params``), or override the ``backend`` fixture.

    Checks: ``render`` yields ``synfiqa.synthesis.Rendered`` items of the plan only, each
    (role, index) at most once, HxWx3 uint8 pictures; a ``spec`` given is the plan's own
    entry; the same identity and plan give the same images; an entry's image does not depend
    on which other entries were asked for (needed by ``stores_images`` backends, whose reruns
    ask for the missing entries only; checked for every backend, since a plan's images should
    not depend on its length)."""

    factory = None
    factory_params: dict = {}
    references, degraded = 2, 3

    @pytest.fixture
    def backend(self):
        return _build(self, "backend")

    def identity(self):
        return conformance_identity()

    def plan(self, references: int | None = None, degraded: int | None = None):
        from synfiqa.stages.s3_synthesize.plan import SyntheticBank, plan_identity
        from synfiqa.synthesis import Plan

        r = self.references if references is None else references
        d = self.degraded if degraded is None else degraded
        specs = plan_identity("conformance", 0, r, d, SyntheticBank())
        return Plan(tuple(specs[:r]), tuple(specs[r:]))

    def render(self, backend, plan) -> dict:
        return {(item.role, item.index): item for item in backend.render(self.identity(), plan, _ConformanceContext())}

    def test_renders_the_plans_entries_once_each(self, backend):
        from synfiqa.synthesis import Rendered

        plan = self.plan()
        planned = {(s.role, s.index): s for s in plan}
        seen = []
        for item in backend.render(self.identity(), plan, _ConformanceContext()):
            assert isinstance(item, Rendered), f"render yielded {type(item).__name__}, not Rendered"
            assert (item.role, item.index) in planned, f"{item.role} {item.index} is not in the plan"
            seen.append((item.role, item.index))
            assert item.image.dtype == np.uint8 and item.image.ndim == 3 and item.image.shape[2] == 3
            assert item.spec is None or item.spec == planned[(item.role, item.index)]
        assert len(seen) == len(set(seen)), "an entry was made twice"
        assert any(role == "reference" for role, _ in seen), "no reference was made"

    def test_same_identity_and_plan_same_images(self, backend):
        first, second = self.render(backend, self.plan()), self.render(backend, self.plan())
        assert first.keys() == second.keys()
        assert all(np.array_equal(first[k].image, second[k].image) for k in first)

    def test_an_entry_does_not_depend_on_the_others_asked_for(self, backend):
        from synfiqa.synthesis import Plan

        full = self.plan()
        whole = self.render(backend, full)
        subset = Plan(full.references[:1], full.degraded[-1:])
        part = self.render(backend, subset)
        for key, item in part.items():
            assert key in whole and np.array_equal(item.image, whole[key].image), key

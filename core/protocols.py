"""What each kind of component offers: typed protocols, documented base classes with the
optional members' defaults, and the helpers the core calls instead of probing components
with ``hasattr``/``getattr``.

For every kind there is

* a ``typing.Protocol`` naming the members the core always uses (``Detector``,
  ``Embedder``, ...). They are runtime-checkable: ``isinstance(x, Detector)`` says whether
  ``x`` has them (names only: Python does not check signatures);
* a base class (``BaseDetector``, ...) that declares every optional member with the value
  the core assumes when a component leaves it out. Subclassing it is optional: a component
  that does not is read with the same defaults, through the helpers below;
* helpers, one per optional member: ``min_face_size(detector)``, ``is_generative(generator)``,
  ``missing_domains(annotator, table)``, ... The core reads optional members only through
  them, so the default is stated once, here, for built-ins and third-party plugins alike.

``REQUIRED`` and ``OPTIONAL`` list the members per kind (docs/plugins.md shows them);
``missing_members(component, kind)`` names the required ones a component lacks.

>>> class Finder:
...     def detect(self, image):
...         return []
>>> isinstance(Finder(), Detector), min_face_size(Finder())
(True, 20)
>>> class Picky(BaseDetector):
...     min_face_size = 48
...     def detect(self, image):
...         return []
>>> min_face_size(Picky()), Picky.kind
(48, 'detector')
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterable, Protocol, runtime_checkable

from synfiqa.annotation import Annotator as _AnnotatorBase
from synfiqa.degradation import Degradation as BaseDegradation
from synfiqa.errors import PluginError

if TYPE_CHECKING:  # for the annotations only
    import numpy as np
    import torch

    from synfiqa.annotation import SampleTable
    from synfiqa.filtering import Decision, FaceSubject
    from synfiqa.generation import Identity
    from synfiqa.models import DetectedFace
    from synfiqa.synthesis import IdentityInput, Plan, Rendered

__all__ = [
    "Annotator", "BaseAnnotator", "BaseDegradation", "BaseDetector", "BaseEmbedder", "BaseFIQAScorer",
    "BaseFilter", "BaseGenerator", "BasePoseEstimator", "BaseStage2Backend", "BaseVisionLanguage", "Degradation",
    "Detector", "Embedder", "FIQAScorer", "Filter", "GenerativeGenerator", "Generator", "OPTIONAL", "PROTOCOLS",
    "PoseEstimator", "REQUIRED", "Stage2Backend", "VisionLanguage", "declared_scope", "include_yaw",
    "input_folder", "is_generative", "min_face_size", "missing_domains", "missing_members", "model_variant",
    "optional_members", "prepare", "requires", "same_identity_threshold", "skipped_files", "stores_images",
    "training_network",
]


# ---------------------------------------------------------------- generators


@runtime_checkable
class Generator(Protocol):
    """Lists identities: ``identities(limit, seed)`` returns up to ``limit`` identities
    (all when None), deterministically in ``seed``."""

    def identities(self, limit: int | None = None, seed: int = 0) -> list[Identity]: ...


@runtime_checkable
class GenerativeGenerator(Protocol):
    """A generator that samples identities index by index (a diffusion model): a build and
    ``synfiqa generate`` then write each image as it is made and resume a killed run image
    by image. ``generate_indices(indices, seed)`` yields ``(indices, images)`` batches,
    images being HxWx3 uint8 RGB arrays seeded per index; ``identity_name(index)`` names
    the identity of an index; ``metadata(seed, index)`` is the manifest row's extra data;
    ``count`` is how many identities a build makes."""

    count: int

    def identities(self, limit: int | None = None, seed: int = 0) -> list[Identity]: ...

    def generate_indices(self, indices: list[int], seed: int) -> Iterable[tuple[list[int], Any]]: ...

    def identity_name(self, index: int) -> str: ...

    def metadata(self, seed: int, index: int) -> dict: ...


class BaseGenerator:
    """Optional members of a generator, with the defaults the core assumes."""

    #: the folder the generator reads its photos from, when it reads one: a build refuses an
    #: output folder inside it (or around it)
    path: str | Path | None = None
    #: files it found but could not use (not images): the build summary counts them
    skipped_files: tuple[str, ...] | list[str] = ()

    def identities(self, limit: int | None = None, seed: int = 0) -> list[Identity]:
        raise NotImplementedError


def is_generative(generator) -> bool:
    """Whether the generator samples index by index (GenerativeGenerator): it has a callable
    ``generate_indices``. One that has it but lacks the other generative members is a
    PluginError naming them."""
    if not callable(getattr(generator, "generate_indices", None)):
        return False
    lacking = [m for m in ("identity_name", "metadata") if not callable(getattr(generator, m, None))]
    count = getattr(generator, "count", None)
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        lacking.append("count (a number of identities)")
    if lacking:
        raise PluginError(f"generator {type(generator).__name__} has generate_indices but not "
                          f"{', '.join(lacking)}; see synfiqa.protocols.GenerativeGenerator")
    return True


def input_folder(generator) -> Path | None:
    """The folder the generator reads (BaseGenerator.path), or None."""
    path = getattr(generator, "path", BaseGenerator.path)
    return None if path is None or path == "" else Path(path)


def skipped_files(generator) -> list[str]:
    """The files the generator found but could not use (BaseGenerator.skipped_files)."""
    return list(getattr(generator, "skipped_files", BaseGenerator.skipped_files) or ())


# ---------------------------------------------------------------- filters and degradations


@runtime_checkable
class Filter(Protocol):
    """Judges identities: one ``synfiqa.filtering.Decision`` per ``FaceSubject``, in order."""

    def judge(self, subjects: list[FaceSubject], context) -> list[Decision]: ...


class BaseFilter:
    """A filter has no optional members; the base class is there for symmetry."""

    def judge(self, subjects: list[FaceSubject], context) -> list[Decision]:
        raise NotImplementedError


@runtime_checkable
class Stage2Backend(Protocol):
    """Turns an identity and its plan into face images: ``render(identity, plan, context)``
    yields ``synfiqa.synthesis.Rendered`` items, at most one per plan entry (role, index);
    deterministic in the identity, the plan and the component's parameters, so that a
    killed build resumes byte-identical. The contract is synfiqa.synthesis."""

    def render(self, identity: IdentityInput, plan: Plan, context) -> Iterable[Rendered]: ...


class BaseStage2Backend:
    """Optional members of a Stage-2 backend, with the defaults the core assumes."""

    #: its images are expensive to make (a diffusion model): the core stores each one under
    #: OUT/generated/stage2/<identity>/ as it comes and, when a killed build runs again, reuses
    #: them and asks ``render`` only for the plan entries still missing (so ``render`` must
    #: accept any subset of a plan, each image seeded by its own entry)
    stores_images: bool = False

    def render(self, identity: IdentityInput, plan: Plan, context) -> Iterable[Rendered]:
        raise NotImplementedError


def stores_images(backend) -> bool:
    """Whether the core stores and reuses the backend's images (BaseStage2Backend.stores_images)."""
    return bool(getattr(backend, "stores_images", BaseStage2Backend.stores_images))


@runtime_checkable
class Degradation(Protocol):
    """``severity_axes``: the recorded params where larger means worse (at least one);
    ``sample_params(n, generator)``: pure given the torch generator, a dict of tensors with
    first dimension n; ``apply(images, params, landmarks=None)``: deterministic, uint8
    [N, 3, H, W] in and out, a batch equal to its single applications. The base class is
    synfiqa.degradation.Degradation (``BaseDegradation``); the input checks are
    synfiqa.degradation's ``check_*`` functions; the kit is
    synfiqa.testing.DegradationConformance."""

    severity_axes: tuple[str, ...]

    def sample_params(self, n: int, generator: torch.Generator) -> dict[str, torch.Tensor]: ...

    def apply(self, images: torch.Tensor, params: dict[str, torch.Tensor],
              landmarks: torch.Tensor | None = None) -> torch.Tensor: ...


# ---------------------------------------------------------------- annotators


@runtime_checkable
class Annotator(Protocol):
    """``scope``: "identity" (``annotate_identity(samples, references, context)``, per
    identity) or "dataset" (``annotate_dataset(table, context)``, once over every sample);
    ``provides``: the names of the scores it returns, one value per sample each."""

    scope: str
    provides: tuple[str, ...]


class BaseAnnotator(_AnnotatorBase):
    """Optional members of an annotator, with the defaults the core assumes (it extends
    synfiqa.annotation.Annotator, whose ``scope`` defaults to "identity")."""

    #: scores an earlier annotator of the chain must provide (the config is refused otherwise)
    requires: tuple[str, ...] = ()
    #: whether the annotator reads the recorded |yaw| ("pose.abs_yaw") of every sample
    include_yaw: bool = False

    def prepare(self, context) -> None:
        """Load models once, before any sample (``context.model("embedder")``, ...). A
        WeightsNotFoundError here makes an optional annotator unavailable."""

    def missing_domains(self, table: SampleTable) -> list[str]:
        """Score domains the annotator combined without (their scores were not produced):
        each is reported and every sample's scores are marked partial."""
        return []


def declared_scope(annotator) -> str | None:
    """The scope an annotator, or its factory (a class), declares; None when it declares none
    (a factory function: the scope is known once the annotator is built)."""
    scope = getattr(annotator, "scope", None)
    return scope if isinstance(scope, str) else None


def requires(annotator) -> tuple[str, ...]:
    """BaseAnnotator.requires of this annotator."""
    value = getattr(annotator, "requires", BaseAnnotator.requires) or ()
    if isinstance(value, str) or not all(isinstance(v, str) for v in value):
        raise PluginError(f"annotator {type(annotator).__name__}: requires must be a tuple of score names, got {value!r}")
    return tuple(value)


def prepare(annotator, context) -> None:
    """Call the annotator's ``prepare(context)`` when it has one."""
    method = getattr(annotator, "prepare", None)
    if method is not None:
        method(context)


def missing_domains(annotator, table) -> list[str]:
    """The annotator's ``missing_domains(table)``, [] when it has none."""
    method = getattr(annotator, "missing_domains", None)
    return [] if method is None else list(method(table))


def include_yaw(annotator) -> bool:
    """BaseAnnotator.include_yaw of this annotator."""
    return bool(getattr(annotator, "include_yaw", BaseAnnotator.include_yaw))


# ---------------------------------------------------------------- face models


@runtime_checkable
class Detector(Protocol):
    """``detect(image)``: HxWx3 uint8 RGB -> list of synfiqa.models.DetectedFace."""

    def detect(self, image: np.ndarray) -> list[DetectedFace]: ...


class BaseDetector:
    kind: ClassVar[str] = "detector"
    #: the smallest face side, in pixels, the detector finds: a photo smaller than this on
    #: either side is skipped as too small before the detector runs
    min_face_size: int = 20

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        raise NotImplementedError


def min_face_size(detector) -> int:
    """BaseDetector.min_face_size of this detector, in whole pixels (rounded up)."""
    value = getattr(detector, "min_face_size", BaseDetector.min_face_size)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise PluginError(f"detector {type(detector).__name__}: min_face_size must be a number of pixels >= 0, "
                          f"got {value!r}")
    return math.ceil(value)


@runtime_checkable
class Embedder(Protocol):
    """``embed(crops)``: uint8 [N, 3, 112, 112] ArcFace-aligned RGB -> float [N, D]."""

    def embed(self, crops: torch.Tensor) -> torch.Tensor: ...


class BaseEmbedder:
    kind: ClassVar[str] = "embedder"
    #: the cosine above which two faces are the same identity for this model (calibrated
    #: for it); the uniqueness filter's default threshold. None: not calibrated
    same_identity_threshold: float | None = None

    def embed(self, crops: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def same_identity_threshold(embedder) -> float | None:
    """BaseEmbedder.same_identity_threshold of this embedder: a cosine in [-1, 1], or None."""
    value = getattr(embedder, "same_identity_threshold", BaseEmbedder.same_identity_threshold)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not -1.0 <= value <= 1.0:
        raise PluginError(f"embedder {type(embedder).__name__}: same_identity_threshold must be a cosine in "
                          f"[-1, 1] or None, got {value!r}")
    return float(value)


@runtime_checkable
class PoseEstimator(Protocol):
    """``estimate(crops, landmarks)``: uint8 [N, 3, H, W] and float [N, 5, 2] (crop pixels)
    -> float [N, 3] (yaw, pitch, roll) in degrees; positive yaw turns towards the image's
    left (see synfiqa.models)."""

    def estimate(self, crops: torch.Tensor, landmarks: torch.Tensor) -> torch.Tensor: ...


class BasePoseEstimator:
    kind: ClassVar[str] = "pose"

    def estimate(self, crops: torch.Tensor, landmarks: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


@runtime_checkable
class VisionLanguage(Protocol):
    """``image_text_similarity(crops, texts)``: uint8 [N, 3, H, W] and one text per crop
    (or one for all) -> float [N]."""

    def image_text_similarity(self, crops: torch.Tensor, texts: list[str]) -> torch.Tensor: ...


class BaseVisionLanguage:
    kind: ClassVar[str] = "vision-language"

    def image_text_similarity(self, crops: torch.Tensor, texts: list[str]) -> torch.Tensor:
        raise NotImplementedError


@runtime_checkable
class FIQAScorer(Protocol):
    """``score(crops)``: uint8 [N, 3, 112, 112] aligned RGB -> float [N], higher = better."""

    def score(self, crops: torch.Tensor) -> torch.Tensor: ...


class BaseFIQAScorer:
    kind: ClassVar[str] = "fiqa"
    #: what the loaded weights are, when that varies (an object whose ``describe()`` is one
    #: line, e.g. "iresnet50, CR-FIQA head"): ``synfiqa score`` prints and records it
    variant: Any = None
    #: how ``synfiqa train`` builds the network untrained: a classmethod or staticmethod
    #: ``training_network(arch, head, embedding_size, dropout) -> torch.nn.Module`` (called on
    #: the factory, before any checkpoint exists) whose module maps float [N, 3, 112, 112] in
    #: [-1, 1] to (embedding [N, F], quality [N, 1]) and whose saved state dict the factory
    #: loads with ``factory(path=FILE)``. None: the model cannot be trained
    training_network: Callable[..., Any] | None = None

    def score(self, crops: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def model_variant(scorer) -> str:
    """The one line BaseFIQAScorer.variant describes, or ""."""
    variant = getattr(scorer, "variant", BaseFIQAScorer.variant)
    describe = getattr(variant, "describe", None)
    return str(describe()) if callable(describe) else ""


def training_network(factory) -> Callable[..., Any] | None:
    """BaseFIQAScorer.training_network of a fiqa factory (its class): the builder of its
    untrained network, or None when it cannot be trained."""
    member = getattr(factory, "training_network", BaseFIQAScorer.training_network)
    if member is None:
        return None
    if not callable(member):
        raise PluginError(f"fiqa model {getattr(factory, '__name__', type(factory).__name__)}: training_network must "
                          f"be a classmethod or staticmethod (arch, head, embedding_size, dropout) -> torch.nn.Module, "
                          f"got {member!r}")
    return member


# ---------------------------------------------------------------- tables


PROTOCOLS: dict[str, type] = {
    "generator": Generator, "filter": Filter, "stage2-backend": Stage2Backend, "degradation": Degradation,
    "annotator": Annotator,
    "detector": Detector, "embedder": Embedder, "pose": PoseEstimator, "vision-language": VisionLanguage,
    "fiqa": FIQAScorer,
}

BASES: dict[str, type] = {
    "generator": BaseGenerator, "filter": BaseFilter, "stage2-backend": BaseStage2Backend,
    "degradation": BaseDegradation, "annotator": BaseAnnotator,
    "detector": BaseDetector, "embedder": BaseEmbedder, "pose": BasePoseEstimator,
    "vision-language": BaseVisionLanguage, "fiqa": BaseFIQAScorer,
}

#: the members the core always uses, per kind
REQUIRED: dict[str, tuple[str, ...]] = {
    "generator": ("identities",),
    "filter": ("judge",),
    "stage2-backend": ("render",),
    "degradation": ("severity_axes", "sample_params", "apply"),
    "annotator": ("scope", "provides"),   # and annotate_identity or annotate_dataset, by scope
    "detector": ("detect",),
    "embedder": ("embed",),
    "pose": ("estimate",),
    "vision-language": ("image_text_similarity",),
    "fiqa": ("score",),
}

#: the optional members per kind, read through the helpers above; a generator's generative
#: members (GenerativeGenerator) come as a group
OPTIONAL: dict[str, tuple[str, ...]] = {
    "generator": ("path", "skipped_files", "count", "generate_indices", "identity_name", "metadata"),
    "filter": (),
    "stage2-backend": ("stores_images",),
    "degradation": (),
    "annotator": ("requires", "include_yaw", "prepare", "missing_domains"),
    "detector": ("min_face_size",),
    "embedder": ("same_identity_threshold",),
    "pose": (),
    "vision-language": (),
    "fiqa": ("variant", "training_network"),
}


def optional_members(kind: str) -> dict[str, Any]:
    """The optional members of a kind with their defaults (None for a generative generator's
    members, which a generator has all or none of)."""
    base = BASES[kind]
    return {name: getattr(base, name, None) for name in OPTIONAL[kind]}


def missing_members(component, kind: str) -> list[str]:
    """The required members of `kind` that `component` lacks (an annotator: also the
    annotate method its scope needs)."""
    missing = [name for name in REQUIRED[kind] if not hasattr(component, name)]
    if kind == "annotator" and not missing:
        method = {"identity": "annotate_identity", "dataset": "annotate_dataset"}.get(component.scope)
        if method is None:
            missing.append(f"scope ('identity' or 'dataset', not {component.scope!r})")
        elif not callable(getattr(component, method, None)):
            missing.append(method)
    return missing

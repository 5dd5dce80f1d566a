"""The conformance kit (synfiqa.testing) over every built-in degradation and every
built-in dataset-scope annotator, found in the registry: a new built-in is checked
without editing this file."""
from __future__ import annotations

import pytest
import torch

from synfiqa.plugins import SynfiqaPluginManager
from synfiqa.registry import Registry
from synfiqa.testing import AnnotatorConformance, DegradationConformance, Stage2BackendConformance

from degradation_faces import face_batch


def builtin_registry() -> Registry:
    """Only synfiqa's own plugins (those registry.toml lists), whatever else is installed."""
    manager = SynfiqaPluginManager()
    manager.load_missing_builtins()
    return Registry(manager)


REGISTRY = builtin_registry()
DEGRADATIONS = [c.name for c in REGISTRY.components("degradation") if c.distribution == "synfiqa"]
# identity-scope annotators need face models and weights; the kit runs them where a test
# supplies a context (make_context)
DATASET_ANNOTATORS = [c.name for c in REGISTRY.components("annotator") if getattr(c.factory, "scope", None) == "dataset"]


@pytest.fixture(autouse=True)
def reference_ops_on_one_thread(monkeypatch):
    # blur-downscale's fast mode runs on the compiled op when it builds; the op's own tests
    # hold it to its pure-torch twin, so the kit runs on the twin and never waits for a compile
    monkeypatch.setenv("SYNFIQA_NO_NATIVE_OPS", "1")
    # per-image work on small tensors: on a shared machine, intra-op threads only wait on each other
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_every_builtin_degradation_is_covered():
    assert {"blur-downscale", "sensor-noise", "jpeg", "motion-blur", "defocus-blur", "illumination",
            "occlusion"} <= set(DEGRADATIONS)


class OnARealFace:
    """The kit's checks on a real aligned face crop (tests/data/faces/obama_1.jpg) rather
    than the kit's synthetic pattern: the severity check then measures damage to a face."""

    def images(self, n, seed=0, size=None):
        height, width = size or self.image_size
        return face_batch(n, height, width, seed)


class TestBuiltinDegradations(OnARealFace, DegradationConformance):
    @pytest.fixture(params=DEGRADATIONS)
    def degradation(self, request):
        return REGISTRY.create("degradation", request.param)


class TestBuiltinDatasetAnnotators(AnnotatorConformance):
    @pytest.fixture(params=DATASET_ANNOTATORS)
    def annotator(self, request):
        return REGISTRY.create("annotator", request.param)


BACKENDS = [c.name for c in REGISTRY.components("stage2-backend") if c.distribution == "synfiqa"]


class TestBuiltinStage2Backends(Stage2BackendConformance):
    @pytest.fixture(params=BACKENDS)
    def backend(self, request):
        from synfiqa.errors import WeightsNotFoundError

        try:
            return REGISTRY.create("stage2-backend", request.param)
        except WeightsNotFoundError as error:   # caphuman: its tiny-model build tests cover it
            pytest.skip(f"{request.param} needs model files: {str(error)[:120]}")

"""The vignette passes every check of synfiqa's conformance kit: run `pytest` in this folder."""
from synfiqa.testing import DegradationConformance
from synfiqa_vignette import Vignette


class TestVignette(DegradationConformance):
    factory = Vignette
    factory_params = {"strength": (0.0, 0.8)}

"""The conformance kit over the identity-scope built-in annotators (the dataset-scope ones
run in test_conformance.py): fr with the default embedder, vl with a stand-in model."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from synfiqa.config import load_config
from synfiqa.context import RunContext
from synfiqa.images import read_rgb
from synfiqa.registry import Registry
from synfiqa.testing import AnnotatorConformance
from synfiqa_plugins.annotators.recognition import RecognitionAnnotator
from synfiqa_plugins.annotators.vision_language import VisionLanguageAnnotator


class TestRecognitionAnnotator(AnnotatorConformance):
    factory = RecognitionAnnotator

    def make_context(self):
        return RunContext(load_config(None, ["run.batch_size=7"]), Registry())

    def test_a_sample_equal_to_the_only_reference_scores_one(self):
        context = self.make_context()
        photo = torch.tensor(read_rgb(Path(__file__).parent / "data" / "faces" / "obama_1.jpg"))
        crop = torch.nn.functional.interpolate(photo.permute(2, 0, 1)[None].float(), size=(112, 112))
        crop = crop.round().clamp(0, 255).to(torch.uint8)
        fr = RecognitionAnnotator().annotate_identity(crop, crop, context)["fr"]
        assert fr.item() == pytest.approx(1.0, abs=1e-6)


class TestVisionLanguageAnnotator(AnnotatorConformance):
    factory = VisionLanguageAnnotator

    def make_context(self):
        class Contrast:
            def image_text_similarity(self, crops, texts):
                return crops.to(torch.float64).std(dim=(1, 2, 3)) / 255

        model = Contrast()
        return SimpleNamespace(config=load_config(), model=lambda kind: model)

"""The conformance kit itself: it passes a well-behaved degradation and catches each
way a degradation can break the contract."""
from __future__ import annotations

import pytest
import torch

from synfiqa.testing import DegradationConformance
from synfiqa_plugins.degradations._common import PerSampleDegradation, check_count


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Darken(PerSampleDegradation):
    """A minimal well-behaved degradation: subtract `amount` grey levels."""

    severity_axes = ("amount",)
    required_params = ("amount",)

    def sample_params(self, n, generator):
        check_count(n)
        return {"amount": 100 * torch.rand(n, generator=generator, dtype=torch.float64)}

    def apply_one(self, image, params, landmarks):
        return (image.to(torch.float64) - float(params["amount"])).clamp(0, 255).round().to(torch.uint8)


class TestDarkenConforms(DegradationConformance):
    factory = Darken


class BetterWhenLarger(Darken):
    def sample_params(self, n, generator):
        params = super().sample_params(n, generator)
        return {"amount": params["amount"], "amount_inverted": -params["amount"]}

    severity_axes = ("amount_inverted",)


class UsesTheGlobalGenerator(Darken):
    def sample_params(self, n, generator):
        check_count(n)
        return {"amount": 100 * torch.rand(n, dtype=torch.float64)}


class RandomApply(Darken):
    def apply_one(self, image, params, landmarks):
        noise = torch.randint(0, 3, image.shape, dtype=torch.int16)
        return (image.to(torch.int16) + noise).clamp(0, 255).to(torch.uint8)


class DependsOnTheBatch(Darken):
    def apply(self, images, params, landmarks=None):
        out = super().apply(images, params, landmarks)
        return (out.to(torch.float64) * (images.shape[0] / 8)).clamp(0, 255).to(torch.uint8)


class WritesIntoItsInput(Darken):
    def apply(self, images, params, landmarks=None):
        out = super().apply(images, params, landmarks)
        images[:, 0, 0, 0] = 0
        return out


class AcceptsAnything(Darken):
    def apply(self, images, params, landmarks=None):
        return images.clone()


class HidesItsAxis(Darken):
    def sample_params(self, n, generator):
        return {"amount": super().sample_params(n, generator)["amount"][:, None]}  # [n, 1]: not recorded


BROKEN = [
    (BetterWhenLarger, "test_worse_severity_changes_the_image_more", {}),
    (UsesTheGlobalGenerator, "test_sample_params_is_seeded", {}),
    (UsesTheGlobalGenerator, "test_sample_params_leaves_global_random_state_alone", {}),
    (RandomApply, "test_apply_is_deterministic", {}),
    (DependsOnTheBatch, "test_batch_equals_single_applications", {}),
    (WritesIntoItsInput, "test_apply_leaves_its_input_alone", {}),
    (AcceptsAnything, "test_rejects_float_images", {}),
    (AcceptsAnything, "test_rejects_params_of_another_length", {}),
    (AcceptsAnything, "test_rejects_malformed_landmarks", {"shape": (3, 4, 2)}),
    (HidesItsAxis, "test_severity_axes_are_recorded_1d_float_params", {}),
]


@pytest.mark.parametrize("factory,check,arguments", BROKEN, ids=[f"{f.__name__}-{c}" for f, c, _ in BROKEN])
def test_the_kit_catches_a_broken_degradation(factory, check, arguments):
    kit = DegradationConformance()
    with pytest.raises((AssertionError, pytest.fail.Exception)):
        getattr(kit, check)(factory(), **arguments)
    # the same check passes on the well-behaved original
    getattr(kit, check)(Darken(), **arguments)

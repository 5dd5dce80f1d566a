"""6DRepNet360 loader: state dicts with the real key names (torchvision's ResNet-50 names plus
linear_reg, as the original module registers them), random weights, through the real
lookup and loading code; the 6-D -> rotation -> Euler path checked against rotations
built from known angles."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from synfiqa.errors import CheckpointError, WeightsNotFoundError


def get_r(pitch, yaw, roll):
    """R = Rz(roll) Ry(yaw) Rx(pitch), radians (the original's get_R)."""
    cx, sx, cy, sy, cz, sz = (math.cos(pitch), math.sin(pitch), math.cos(yaw), math.sin(yaw),
                              math.cos(roll), math.sin(roll))
    rx = torch.tensor([[1, 0, 0], [0, cx, -sx], [0, sx, cx]], dtype=torch.float64)
    ry = torch.tensor([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]], dtype=torch.float64)
    rz = torch.tensor([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]], dtype=torch.float64)
    return rz @ ry @ rx


@pytest.fixture(scope="module")
def original_state_dict():
    """What SixDRepNet360(Bottleneck, [3, 4, 6, 3]).state_dict() holds: torchvision's
    ResNet-50 keys without fc, plus linear_reg [6, 2048]."""
    import torchvision

    torch.manual_seed(0)
    body = torchvision.models.resnet50(weights=None)
    state = {k: v for k, v in body.state_dict().items() if not k.startswith("fc.")}
    state["linear_reg.weight"] = torch.randn(6, 2048) * 0.01
    state["linear_reg.bias"] = torch.randn(6)
    return state


def crops(n=2, size=112, seed=0):
    return torch.randint(0, 256, (n, 3, size, size), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


@pytest.mark.parametrize("angles", [(10.0, 25.0, -5.0), (-30.0, -60.0, 12.0), (5.0, 89.0, 0.0), (0.0, 0.0, 0.0)])
def test_six_d_to_euler_recovers_known_angles(angles):
    from synfiqa_plugins.models.sixdrepnet import euler_from_rotation, rotation_from_6d

    pitch, yaw, roll = (math.radians(a) for a in angles)
    r = get_r(pitch, yaw, roll)
    # the network's two raw 3-vectors need not be unit or orthogonal: scale and skew them
    six = torch.cat([3.0 * r[:, 0], 0.5 * r[:, 1] + 0.7 * r[:, 0]]).float()[None]
    rotation = rotation_from_6d(six)
    assert torch.allclose(rotation[0].double(), r, atol=1e-5)
    assert torch.allclose(rotation[0] @ rotation[0].T, torch.eye(3), atol=1e-5)
    assert abs(torch.linalg.det(rotation[0]) - 1) < 1e-5
    recovered = torch.rad2deg(euler_from_rotation(rotation.double()))[0]
    assert torch.allclose(recovered, torch.tensor(angles, dtype=torch.float64), atol=1e-2)


def test_the_head_output_reaches_the_angles_yaw_second(original_state_dict, isolated):
    """With a zero linear_reg weight the network's output is its bias: the 6-D form of a known
    rotation, whatever the body computes; the estimate must give back its angles."""
    from synfiqa_plugins.models.sixdrepnet import SixDRepNet360Pose

    state = dict(original_state_dict)
    r = get_r(math.radians(-5.0), math.radians(15.0), math.radians(3.0))
    state["linear_reg.weight"] = torch.zeros(6, 2048)
    state["linear_reg.bias"] = torch.cat([r[:, 0], r[:, 1]]).float()
    folder = isolated / "weights" / "6drepnet360"
    folder.mkdir(parents=True)
    torch.save({"model_state_dict": state, "epoch": 80}, folder / "Pose-LP.pth")
    model = SixDRepNet360Pose(device="cpu")
    out = model.estimate(crops(2), torch.zeros(2, 5, 2))
    assert out.shape == (2, 3)
    assert torch.allclose(out, torch.tensor([[15.0, -5.0, 3.0]] * 2), atol=1e-3)   # yaw, pitch, roll


def test_random_weights_match_torchvision_resnet50_with_the_6d_head(original_state_dict, isolated):
    import torchvision

    from synfiqa.registry import Registry
    from synfiqa_plugins.models.sixdrepnet import IMAGENET_MEAN, IMAGENET_STD, euler_from_rotation, rotation_from_6d

    torch.save(original_state_dict, isolated / "Pose-LP.pth")
    model = Registry().create("pose", "6drepnet360", path=str(isolated / "Pose-LP.pth"), device="cpu")
    x = crops(2)
    out = model.estimate(x, torch.zeros(2, 5, 2))

    reference = torchvision.models.resnet50(weights=None)
    reference.fc = torch.nn.Linear(2048, 6)
    reference.load_state_dict({**{k: v for k, v in original_state_dict.items() if not k.startswith("linear_reg")},
                               "fc.weight": original_state_dict["linear_reg.weight"],
                               "fc.bias": original_state_dict["linear_reg.bias"]})
    pixels = F.interpolate(x.float() / 255, size=(224, 224), mode="bilinear", align_corners=False)
    pixels = (pixels - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
    with torch.no_grad():
        euler = torch.rad2deg(euler_from_rotation(rotation_from_6d(reference.eval()(pixels))))
    assert torch.allclose(out, euler[:, [1, 0, 2]], atol=1e-3)
    assert not torch.allclose(out[0], out[1], atol=1e-3)   # the input matters


def test_wrong_architecture_and_missing_file_are_clear_errors(original_state_dict, isolated):
    import torchvision

    from synfiqa_plugins.models.sixdrepnet import SixDRepNet360Pose

    resnet18 = {k: v for k, v in torchvision.models.resnet18(weights=None).state_dict().items()}
    torch.save(resnet18, isolated / "resnet18.pth")
    with pytest.raises(CheckpointError) as caught:
        SixDRepNet360Pose(path=str(isolated / "resnet18.pth"), device="cpu")
    message = str(caught.value)
    assert "does not fit SixDRepNet360: missing keys: layer1.0.conv3.weight" in message
    assert "unexpected keys: fc.weight, fc.bias" in message
    assert "wrong shapes: layer1.0.conv1.weight (64, 64, 3, 3) (expected (64, 64, 1, 1))" in message

    with pytest.raises(WeightsNotFoundError) as caught:
        SixDRepNet360Pose(device="cpu")
    message = str(caught.value)
    assert "'6drepnet360'" in message and "Pose-LP.pth" in message
    assert str(isolated / "weights" / "6drepnet360" / "Pose-LP.pth") in message
    assert str(isolated / "torch" / "hub" / "checkpoints" / "Pose-LP.pth") in message

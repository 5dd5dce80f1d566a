"""DECA's E_flame (synfiqa_plugins.headmodel.deca_encoder): the real key layout (torchvision's
ResNet-50 names under 'encoder.', the MLP under 'layers.'), checked against torchvision's
ResNet-50 run by hand; a tiny state dict in the same layout inside a deca_model.tar-like file;
DECA's crop."""
from __future__ import annotations

import pytest
import torch
import torchvision

from synfiqa.errors import CheckpointError
from synfiqa_plugins.headmodel.deca_encoder import (PARAMS, DecaEncoder, deca_box, deca_crop, load_deca_encoder)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def randomize_bn(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)


def e_flame_from(resnet, hidden=1024, seed=1):
    """E_flame's state dict around a torchvision ResNet (its fc dropped, as DECA's class has none)."""
    g = torch.Generator().manual_seed(seed)
    features = resnet.fc.in_features
    state = {f"encoder.{k}": v for k, v in resnet.state_dict().items() if not k.startswith("fc.")}
    state["layers.0.weight"] = torch.randn(hidden, features, generator=g) * 0.02
    state["layers.0.bias"] = torch.randn(hidden, generator=g) * 0.02
    state["layers.2.weight"] = torch.randn(236, hidden, generator=g) * 0.02
    state["layers.2.bias"] = torch.randn(236, generator=g) * 0.02
    return state


def test_the_full_resnet50_layout_computes_torchvisions_resnet50_then_the_mlp():
    torch.manual_seed(0)
    resnet = torchvision.models.resnet50(weights=None).eval()
    randomize_bn(resnet)
    state = e_flame_from(resnet)
    encoder = DecaEncoder(state)
    crops = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        resnet.fc = torch.nn.Identity()
        features = resnet(crops)                              # torchvision: avgpool + flatten
        hidden = torch.relu(features @ state["layers.0.weight"].T + state["layers.0.bias"])
        flat = hidden @ state["layers.2.weight"].T + state["layers.2.bias"]
    codes = encoder(crops)
    assert [(k, v.shape[1:]) for k, v in codes.items()] == [
        ("shape", (100,)), ("tex", (50,)), ("exp", (50,)), ("pose", (6,)), ("cam", (3,)), ("light", (9, 3))]
    assert torch.allclose(codes["shape"], flat[:, :100], atol=1e-4)
    assert torch.allclose(codes["pose"], flat[:, 200:206], atol=1e-4)
    assert torch.allclose(codes["light"], flat[:, 209:].reshape(1, 9, 3), atol=1e-4)


def tiny_e_flame(seed=0):
    """A small ResNet in the real key layout: one Bottleneck per layer, narrow widths."""
    from torchvision.models.resnet import Bottleneck, ResNet

    torch.manual_seed(seed)
    resnet = ResNet(Bottleneck, [1, 1, 1, 1], width_per_group=8).eval()   # planes stay 64.. but width 8
    randomize_bn(resnet, seed)
    return e_flame_from(resnet, hidden=16, seed=seed)


def test_a_deca_model_tar_loads_through_the_weights_only_reader(tmp_path):
    state = tiny_e_flame()
    path = tmp_path / "deca_model.tar"
    torch.save({"E_flame": state, "E_detail": {"x": torch.zeros(1)}, "D_detail": {"y": torch.zeros(1)}}, path)
    encoder = load_deca_encoder(path)
    codes = encoder(torch.rand(2, 3, 224, 224))
    assert codes["shape"].shape == (2, 100) and torch.isfinite(codes["tex"]).all()
    # a batch is the samples alone
    one = encoder(torch.rand(1, 3, 224, 224))
    assert one["exp"].shape == (1, 50)


def test_a_wrong_file_is_one_line(tmp_path):
    path = tmp_path / "deca_model.tar"
    torch.save({"model": {"a": torch.zeros(1)}}, path)
    with pytest.raises(CheckpointError, match="no 'E_flame'") as error:
        load_deca_encoder(path)
    assert "\n" not in str(error.value)
    state = tiny_e_flame()
    del state["encoder.layer2.0.bn2.running_var"]
    torch.save({"E_flame": state}, path)
    with pytest.raises(CheckpointError, match=r"missing keys: encoder\.layer2\.0\.bn2\.running_var"):
        load_deca_encoder(path)
    state = tiny_e_flame()
    state["layers.2.weight"] = state["layers.2.weight"][:200]
    torch.save({"E_flame": state}, path)
    with pytest.raises(CheckpointError, match="236"):
        load_deca_encoder(path)


def test_deca_crop_places_the_square_as_bbox2point():
    cx, cy, side = deca_box((100, 120, 200, 240))
    old = (100 + 120) / 2 * 1.1                      # 121
    assert (cx, cy) == (150.0, 180.0 + 0.12 * old) and side == float(int(old * 1.25))
    # an image whose red channel is its x and green its y: the crop's corners read the square's corners
    h, w = 400, 300
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    image = torch.stack([xs / 1000, ys / 1000, torch.zeros_like(xs)])
    crop = deca_crop(image, (100, 120, 200, 240))
    assert crop.shape == (3, 224, 224)
    assert torch.allclose(crop[0, 0, 0] * 1000, torch.tensor(cx - side / 2), atol=1e-2)
    assert torch.allclose(crop[1, 0, 0] * 1000, torch.tensor(cy - side / 2), atol=1e-2)
    assert torch.allclose(crop[0, 0, -1] * 1000, torch.tensor(cx + side / 2), atol=1e-2)
    assert torch.allclose(crop[1, -1, 0] * 1000, torch.tensor(cy + side / 2), atol=1e-2)
    assert sum(n for _, n in PARAMS) == 236

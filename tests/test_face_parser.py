"""CapHuman's BiSeNet face parser (synfiqa_plugins.stage2.caphuman.face_parser): the
checkpoint's key layout, the ResNet-18 against torchvision's, the fusion formula by hand, the
whitening rule, strict loading."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

from synfiqa.errors import CheckpointError
from synfiqa_plugins.stage2.caphuman import face_parser as fp


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_the_key_layout_is_the_published_checkpoints():
    keys = set(fp.BiSeNet().state_dict())
    # names as zllrunning/face-parsing.PyTorch's 79999_iter.pth holds them
    for key in ("cp.resnet.conv1.weight", "cp.resnet.bn1.running_var", "cp.resnet.layer1.0.conv1.weight",
                "cp.resnet.layer2.0.downsample.0.weight", "cp.resnet.layer4.1.bn2.bias",
                "cp.arm16.conv.conv.weight", "cp.arm16.conv.bn.weight", "cp.arm16.conv_atten.weight",
                "cp.arm32.bn_atten.running_mean", "cp.conv_head32.conv.weight", "cp.conv_head16.bn.bias",
                "cp.conv_avg.conv.weight", "ffm.convblk.conv.weight", "ffm.conv1.weight", "ffm.conv2.weight",
                "conv_out.conv.conv.weight", "conv_out.conv_out.weight", "conv_out16.conv_out.weight",
                "conv_out32.conv.bn.num_batches_tracked"):
        assert key in keys, key
    assert not any(key.startswith("cp.resnet.fc") for key in keys)
    shapes = fp.BiSeNet().state_dict()
    assert tuple(shapes["conv_out.conv_out.weight"].shape) == (19, 256, 1, 1)
    assert tuple(shapes["conv_out16.conv.conv.weight"].shape) == (64, 128, 3, 3)
    assert tuple(shapes["ffm.conv1.weight"].shape) == (64, 256, 1, 1)
    assert tuple(shapes["cp.conv_avg.conv.weight"].shape) == (128, 512, 1, 1)


def test_the_backbone_is_torchvisions_resnet18():
    torch.manual_seed(0)
    reference = torchvision.models.resnet18(weights=None).eval()
    for module in reference.modules():   # non-trivial batch-norm statistics
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    ours = fp.ResNet18().eval()
    state = {k: v for k, v in reference.state_dict().items() if not k.startswith("fc.")}
    ours.load_state_dict(state)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        feat8, feat16, feat32 = ours(x)
        y = reference.maxpool(reference.relu(reference.bn1(reference.conv1(x))))
        y8 = reference.layer2(reference.layer1(y))
        y16 = reference.layer3(y8)
        y32 = reference.layer4(y16)
    for a, b in ((feat8, y8), (feat16, y16), (feat32, y32)):
        torch.testing.assert_close(a, b)
    assert feat8.shape[-1] == 8 and feat32.shape[-1] == 2


def test_feature_fusion_by_hand():
    torch.manual_seed(1)
    fusion = fp.FeatureFusion(8, 8).eval()
    spatial, context = torch.randn(1, 4, 3, 3), torch.randn(1, 4, 3, 3)
    with torch.no_grad():
        out = fusion(spatial, context).numpy()
        bn = fusion.convblk.bn
        w = fusion.convblk.conv.weight[:, :, 0, 0].numpy()
        x = np.concatenate([spatial.numpy(), context.numpy()], 1)[0]           # (8, 3, 3)
        conv = np.einsum("oc,chw->ohw", w, x)
        scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).numpy()
        feat = np.maximum(0, (conv - bn.running_mean.numpy()[:, None, None]) * scale[:, None, None]
                          + bn.bias.numpy()[:, None, None])
        pooled = feat.mean((1, 2))
        hidden = np.maximum(0, fusion.conv1.weight[:, :, 0, 0].numpy() @ pooled)
        attention = 1 / (1 + np.exp(-(fusion.conv2.weight[:, :, 0, 0].numpy() @ hidden)))
    np.testing.assert_allclose(out[0], feat * attention[:, None, None] + feat, rtol=1e-5, atol=1e-6)


class FixedParser(torch.nn.Module):
    """Logits that make class `labels[y, x]` win at every pixel; records its input."""

    def __init__(self, labels):
        super().__init__()
        self.labels = torch.as_tensor(labels)
        self.seen = None

    def forward(self, x):
        self.seen = x
        return torch.nn.functional.one_hot(self.labels, fp.CLASSES).permute(2, 0, 1)[None].float()


def test_whitening_follows_the_originals_classes_and_normalisation():
    labels = np.arange(20 * 19).reshape(20, 19) % 19   # every class somewhere
    image = np.random.default_rng(0).integers(0, 255, (20, 19, 3), dtype=np.uint8)
    parser = FixedParser(labels)
    out = fp.whiten(image, parser)
    white = np.isin(labels, [0, 7, 8, 9, 14, 15, 16, 17, 18])   # the original's list, written out
    assert (out[white] == 255).all()
    assert np.array_equal(out[~white], image[~white])
    expected = (torch.from_numpy(image).permute(2, 0, 1).float() / 255 - torch.tensor([0.485, 0.456, 0.406])[:, None, None]) \
        / torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    torch.testing.assert_close(parser.seen[0], expected)


def test_the_full_network_maps_any_size_to_class_logits():
    with torch.no_grad():
        logits = fp.BiSeNet().eval()(torch.randn(1, 3, 72, 56))
    assert logits.shape == (1, 19, 72, 56) and torch.isfinite(logits).all()


def test_loading_is_strict(tmp_path):
    torch.manual_seed(2)
    state = fp.BiSeNet().state_dict()
    good = tmp_path / "FaceParser.pth"
    torch.save({f"module.{k}": v for k, v in state.items()}, good)   # DataParallel prefix tolerated
    loaded = fp.load_face_parser(good)
    torch.testing.assert_close(loaded.state_dict()["ffm.conv1.weight"], state["ffm.conv1.weight"])
    missing = dict(state)
    del missing["ffm.conv1.weight"]
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match="missing ffm.conv1.weight"):
        fp.load_face_parser(tmp_path / "missing.pth")
    torch.save({**state, "extra.weight": torch.zeros(1)}, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match="unexpected extra.weight"):
        fp.load_face_parser(tmp_path / "extra.pth")
    wrong = dict(state)
    wrong["conv_out.conv_out.weight"] = torch.zeros(20, 256, 1, 1)
    torch.save(wrong, tmp_path / "wrong.pth")
    with pytest.raises(CheckpointError, match="conv_out.conv_out.weight"):
        fp.load_face_parser(tmp_path / "wrong.pth")

"""AdaFace IR-18/IR-50 embedders: random weights saved in the official checkpoint format (a
PyTorch Lightning file: the network under state_dict "model.", the margin head under
"head.", hyper-parameters as an argparse.Namespace) go through the real lookup and loading
code. The key names are written here from AdaFace's net.py, independently of the module,
and the forward pass is recomputed functionally from the raw tensors."""
from __future__ import annotations

import argparse

import pytest
import torch
import torch.nn.functional as F

from synfiqa.errors import CheckpointError, WeightsNotFoundError

WIDTHS = (64, 128, 256, 512)
IR18 = (2, 2, 2, 2)


def bn(prefix: str, channels: int, g: torch.Generator, affine: bool = True) -> dict:
    out = {f"{prefix}.running_mean": torch.randn(channels, generator=g) * 0.1,
           f"{prefix}.running_var": torch.rand(channels, generator=g) + 0.5,
           f"{prefix}.num_batches_tracked": torch.tensor(100)}
    if affine:
        out[f"{prefix}.weight"] = 1 + 0.1 * torch.randn(channels, generator=g)
        out[f"{prefix}.bias"] = 0.1 * torch.randn(channels, generator=g)
    return out


def conv(shape, g):
    fan_in = shape[1] * shape[2] * shape[3]
    return torch.randn(*shape, generator=g) * (2.0 / fan_in) ** 0.5


def official_state_dict(blocks=IR18, seed=0) -> dict:
    """The network's keys as AdaFace's Backbone names them (no prefix)."""
    g = torch.Generator().manual_seed(seed)
    sd = {"input_layer.0.weight": conv((64, 3, 3, 3), g), **bn("input_layer.1", 64, g),
          "input_layer.2.weight": torch.full((64,), 0.25)}
    index, in_channels = 0, 64
    for count, width in zip(blocks, WIDTHS):
        for unit in range(count):
            p = f"body.{index}"
            if unit == 0 and in_channels != width:
                sd[f"{p}.shortcut_layer.0.weight"] = conv((width, in_channels, 1, 1), g)
                sd.update(bn(f"{p}.shortcut_layer.1", width, g))
            sd.update(bn(f"{p}.res_layer.0", in_channels if unit == 0 else width, g))
            sd[f"{p}.res_layer.1.weight"] = conv((width, in_channels if unit == 0 else width, 3, 3), g)
            sd.update(bn(f"{p}.res_layer.2", width, g))
            sd[f"{p}.res_layer.3.weight"] = torch.full((width,), 0.25)
            sd[f"{p}.res_layer.4.weight"] = conv((width, width, 3, 3), g)
            sd.update(bn(f"{p}.res_layer.5", width, g))
            index += 1
        in_channels = width
    sd.update(bn("output_layer.0", 512, g))
    sd["output_layer.3.weight"] = torch.randn(512, 512 * 49, generator=g) * (1 / (512 * 49)) ** 0.5
    sd["output_layer.3.bias"] = 0.01 * torch.randn(512, generator=g)
    sd.update(bn("output_layer.4", 512, g, affine=False))
    return sd


def lightning_checkpoint(network: dict) -> dict:
    return {"epoch": 25, "global_step": 1000, "pytorch-lightning_version": "1.8.6",
            "state_dict": {**{f"model.{k}": v for k, v in network.items()},
                           "head.kernel": torch.randn(512, 10), "head.t": torch.zeros(1),
                           "head.batch_mean": torch.ones(1) * 20, "head.batch_std": torch.ones(1) * 100},
            "hyper_parameters": argparse.Namespace(arch="ir_18", m=0.4, h=0.333)}


def functional_forward(sd: dict, x: torch.Tensor, blocks=IR18) -> torch.Tensor:
    """AdaFace's forward from the raw tensors: BN, conv, BN, PReLU, conv(stride), BN per block."""
    def batch_norm(p, t):
        return F.batch_norm(t, sd[f"{p}.running_mean"], sd[f"{p}.running_var"],
                            sd.get(f"{p}.weight"), sd.get(f"{p}.bias"), False, 0.0, 1e-5)

    t = F.prelu(batch_norm("input_layer.1", F.conv2d(x, sd["input_layer.0.weight"], padding=1)), sd["input_layer.2.weight"])
    index = 0
    for count in blocks:
        for unit in range(count):
            p, stride = f"body.{index}", 2 if unit == 0 else 1
            r = F.conv2d(batch_norm(f"{p}.res_layer.0", t), sd[f"{p}.res_layer.1.weight"], padding=1)
            r = F.prelu(batch_norm(f"{p}.res_layer.2", r), sd[f"{p}.res_layer.3.weight"])
            r = batch_norm(f"{p}.res_layer.5", F.conv2d(r, sd[f"{p}.res_layer.4.weight"], stride=stride, padding=1))
            if f"{p}.shortcut_layer.0.weight" in sd:
                s = batch_norm(f"{p}.shortcut_layer.1", F.conv2d(t, sd[f"{p}.shortcut_layer.0.weight"], stride=stride))
            else:
                s = t[:, :, ::stride, ::stride]
            t = r + s
            index += 1
    t = batch_norm("output_layer.0", t).flatten(1)
    t = batch_norm("output_layer.4", F.linear(t, sd["output_layer.3.weight"], sd["output_layer.3.bias"]))
    return t


@pytest.fixture(scope="module")
def ir18():
    return official_state_dict()


@pytest.fixture(scope="module")
def ir18_file(ir18, tmp_path_factory):
    path = tmp_path_factory.mktemp("adaface") / "adaface_ir18_webface4m.ckpt"
    torch.save(lightning_checkpoint(ir18), path)
    return path


def crops(n=3, seed=0):
    return torch.randint(0, 256, (n, 3, 112, 112), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_ir18_embeds_as_adafaces_network_on_bgr_half_scaled_input(ir18, ir18_file, isolated, monkeypatch):
    import shutil

    from synfiqa.registry import Registry

    target = isolated / "weights" / "adaface-ir18"
    target.mkdir(parents=True)
    shutil.copy(ir18_file, target / ir18_file.name)
    embedder = Registry().create("embedder", "adaface-ir18", device="cpu")
    assert embedder.path == target / ir18_file.name
    x = crops()
    unit, norms = embedder.embed_with_norm(x)
    assert unit.shape == (3, 512) and unit.dtype == torch.float32 and norms.shape == (3,)
    assert torch.allclose(unit.norm(dim=1), torch.ones(3), atol=1e-5)

    bgr = (x.flip(1).float() / 255 - 0.5) / 0.5
    expected = functional_forward(ir18, bgr)
    assert torch.allclose(norms, expected.norm(dim=1), rtol=1e-4)
    assert torch.allclose(unit, F.normalize(expected, dim=1), atol=1e-5)
    assert torch.equal(embedder.embed(x), unit)
    # RGB order is a different input: the option is not a no-op
    rgb = functional_forward(ir18, (x.float() / 255 - 0.5) / 0.5)
    assert not torch.allclose(unit, F.normalize(rgb, dim=1), atol=1e-3)
    embedder.bgr_input = False
    assert torch.allclose(embedder.embed(x), F.normalize(rgb, dim=1), atol=1e-5)
    # batches do not change the numbers; empty input and wrong dtypes
    embedder.bgr_input, embedder.batch_size = True, 2
    assert torch.allclose(embedder.embed(x), unit, atol=1e-6)
    assert embedder.embed(torch.zeros(0, 3, 112, 112, dtype=torch.uint8)).shape == (0, 512)
    with pytest.raises(ValueError, match="uint8"):
        embedder.embed(x.float())


def test_a_bare_state_dict_and_module_prefix_load_too(ir18, tmp_path, isolated):
    from synfiqa_plugins.models.adaface import AdaFaceIR18

    torch.save({f"module.{k}": v for k, v in ir18.items()}, tmp_path / "bare.pth")
    embedder = AdaFaceIR18(path=str(tmp_path / "bare.pth"), device="cpu")
    expected = F.normalize(functional_forward(ir18, (crops(1).flip(1).float() / 255 - 0.5) / 0.5), dim=1)
    assert torch.allclose(embedder.embed(crops(1)), expected, atol=1e-5)


def test_ir50_loads_its_own_depth_and_refuses_the_other(ir18_file, tmp_path, isolated):
    from synfiqa_plugins.models.adaface import DEPTHS, AdaFaceIR18, AdaFaceIR50

    ir50 = official_state_dict(DEPTHS[50], seed=1)
    assert sum(k.endswith("res_layer.1.weight") for k in ir50) == 24
    torch.save(lightning_checkpoint(ir50), tmp_path / "adaface_ir50_ms1mv2.ckpt")
    embedder = AdaFaceIR50(path=str(tmp_path / "adaface_ir50_ms1mv2.ckpt"), device="cpu")
    assert embedder.embed(crops(1)).shape == (1, 512)

    with pytest.raises(CheckpointError, match=r"holds IR-18, not the IR-50 this embedder expects"):
        AdaFaceIR50(path=str(ir18_file), device="cpu")
    with pytest.raises(CheckpointError, match=r"holds IR-50, not the IR-18"):
        AdaFaceIR18(path=str(tmp_path / "adaface_ir50_ms1mv2.ckpt"), device="cpu")


def test_missing_unexpected_and_misshapen_keys_are_named(ir18, tmp_path, isolated):
    from synfiqa_plugins.models.adaface import AdaFaceIR18

    broken = dict(ir18)
    del broken["body.3.res_layer.5.running_var"]
    broken["body.3.res_layer.6.weight"] = torch.zeros(3)
    broken["output_layer.3.bias"] = torch.zeros(128)
    torch.save(lightning_checkpoint(broken), tmp_path / "broken.ckpt")
    with pytest.raises(CheckpointError) as caught:
        AdaFaceIR18(path=str(tmp_path / "broken.ckpt"), device="cpu")
    message = str(caught.value)
    assert "missing keys: body.3.res_layer.5.running_var" in message
    assert "unexpected keys: body.3.res_layer.6.weight" in message
    assert "wrong shapes: output_layer.3.bias (128,) (expected (512,))" in message

    torch.save({"state_dict": {"model.conv.weight": torch.zeros(1)}}, tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError, match="not an AdaFace IR network"):
        AdaFaceIR18(path=str(tmp_path / "other.ckpt"), device="cpu")


def test_missing_and_corrupt_files_are_clear_errors(tmp_path, isolated):
    from synfiqa_plugins.models.adaface import AdaFaceIR18

    with pytest.raises(WeightsNotFoundError) as caught:
        AdaFaceIR18(device="cpu")
    message = str(caught.value)
    assert "'adaface-ir18'" in message and "adaface_ir18_webface4m.ckpt" in message
    assert str(isolated / "weights" / "adaface-ir18" / "adaface_ir18_webface4m.ckpt") in message
    assert str(isolated / "home" / ".cache" / "synfiqa" / "weights" / "adaface-ir18") in message
    assert "drive.google.com" in message

    truncated = tmp_path / "adaface_ir18_webface4m.ckpt"
    truncated.write_bytes(b"PK\x03\x04 truncated zip")
    with pytest.raises(CheckpointError, match=r"not a readable PyTorch checkpoint.*'adaface-ir18'.*drive.google"):
        AdaFaceIR18(path=str(truncated), device="cpu")

"""FaceNet (InceptionResnetV1, VGGFace2) loader: a random state dict saved in the released
file's format (facenet-pytorch key names, the classifier's logits included) goes through
the real lookup and loading code; nothing is ever downloaded."""
from __future__ import annotations

import pytest
import torch

from synfiqa.errors import CheckpointError, WeightsNotFoundError

FILE_NAME = "20180402-114759-vggface2.pt"


@pytest.fixture(scope="module")
def reference_model():
    from facenet_pytorch import InceptionResnetV1

    torch.manual_seed(0)
    model = InceptionResnetV1(pretrained=None, classify=True, num_classes=16).eval()
    with torch.no_grad():   # BatchNorm statistics that are not the identity, so they must load
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return model


@pytest.fixture(scope="module")
def released_file(reference_model, tmp_path_factory):
    torch_home = tmp_path_factory.mktemp("torch_home")
    (torch_home / "checkpoints").mkdir()
    torch.save(reference_model.state_dict(), torch_home / "checkpoints" / FILE_NAME)
    return torch_home


@pytest.fixture
def no_download(monkeypatch, tmp_path):
    import facenet_pytorch.models.inception_resnet_v1 as module

    def refuse(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(module, "download_url_to_file", refuse)
    monkeypatch.setenv("SYNFIQA_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def crops(n=3, size=112, seed=1):
    return torch.randint(0, 256, (n, 3, size, size), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_loads_the_torch_cache_file_and_embeds_as_the_model_does(released_file, reference_model, monkeypatch, no_download):
    from synfiqa.registry import Registry

    monkeypatch.setenv("TORCH_HOME", str(released_file))
    embedder = Registry().create("embedder", "facenet-vggface2", device="cpu")
    assert embedder.path == released_file / "checkpoints" / FILE_NAME
    x = crops()
    out = embedder.embed(x)
    assert out.shape == (3, 512) and out.dtype == torch.float32
    assert torch.allclose(out.norm(dim=1), torch.ones(3), atol=1e-5)
    reference_model.classify = False
    with torch.no_grad():
        expected = reference_model((x.float() - 127.5) / 128.0)
    assert torch.allclose(out, expected, atol=1e-5)


def test_paper_input_quirk_feeds_zero_one_images(released_file, reference_model, no_download):
    from synfiqa_plugins.models.facenet import FaceNetEmbedder

    path = released_file / "checkpoints" / FILE_NAME
    quirk = FaceNetEmbedder(path=str(path), device="cpu", paper_input_quirk=True)
    plain = FaceNetEmbedder(path=str(path), device="cpu")
    x = crops(2)
    reference_model.classify = False
    with torch.no_grad():
        expected = reference_model(x.float() / 255.0)
    assert torch.allclose(quirk.embed(x), expected, atol=1e-5)
    assert not torch.allclose(plain.embed(x), expected, atol=1e-3)
    # another crop size is resized to input_size first
    resized = plain.embed(crops(2, size=160, seed=4))
    assert resized.shape == (2, 512)
    at_160 = FaceNetEmbedder(path=str(path), device="cpu", input_size=160)
    assert at_160.preprocess(crops(1)).shape == (1, 3, 160, 160)


def test_a_module_prefix_and_a_wrapping_dict_are_accepted(reference_model, tmp_path, no_download):
    from synfiqa_plugins.models.facenet import FaceNetEmbedder

    wrapped = {"state_dict": {f"module.{k}": v for k, v in reference_model.state_dict().items()}}
    torch.save(wrapped, tmp_path / "mine.pt")
    embedder = FaceNetEmbedder(path=str(tmp_path / "mine.pt"), device="cpu")
    assert embedder.embed(crops(1)).shape == (1, 512)


def test_missing_file_names_every_place_searched(tmp_path, monkeypatch, no_download):
    from synfiqa_plugins.models.facenet import FaceNetEmbedder

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(WeightsNotFoundError) as caught:
        FaceNetEmbedder(device="cpu")
    message = str(caught.value)
    assert "'facenet-vggface2'" in message and FILE_NAME in message
    assert str(tmp_path / "weights" / "facenet-vggface2" / FILE_NAME) in message
    assert str(tmp_path / "torch" / "checkpoints" / FILE_NAME) in message
    assert "releases/download" in message


def test_corrupt_and_wrong_files_are_clear_errors(reference_model, tmp_path, no_download):
    from synfiqa_plugins.models.facenet import FaceNetEmbedder

    corrupt = tmp_path / FILE_NAME
    corrupt.write_bytes(b"\x80\x02not really a pickle")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        FaceNetEmbedder(path=str(corrupt), device="cpu")

    state = reference_model.state_dict()
    renamed = {("last_linear.kernel" if k == "last_linear.weight" else k): v for k, v in state.items()}
    del renamed["block8.conv2d.bias"]
    torch.save(renamed, tmp_path / "renamed.pt")
    with pytest.raises(CheckpointError) as caught:
        FaceNetEmbedder(path=str(tmp_path / "renamed.pt"), device="cpu")
    message = str(caught.value)
    assert "missing keys: block8.conv2d.bias, last_linear.weight" in message
    assert "unexpected keys: last_linear.kernel" in message

    small = dict(state)
    small["last_linear.weight"] = torch.zeros(128, 1792)
    torch.save(small, tmp_path / "small.pt")
    with pytest.raises(CheckpointError, match=r"wrong shapes: last_linear.weight \(128, 1792\) \(expected \(512, 1792\)\)"):
        FaceNetEmbedder(path=str(tmp_path / "small.pt"), device="cpu")

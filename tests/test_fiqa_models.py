"""The CR-FIQA networks: checkpoint layout, variant detection from keys, strict loading,
the two quality heads, input scaling, and the registered components."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from synfiqa.errors import CheckpointError, WeightsNotFoundError
from synfiqa_plugins.models.iresnet import CRFIQANet, build_from_state_dict, detect_variant, read_state_dict

TINY = (1, 1, 1, 1)  # same layout and key names, fewest blocks: fast on a CPU


def meta_state_dict(blocks, head, prefix=""):
    with torch.device("meta"):
        network = CRFIQANet(blocks, head)
    return {prefix + key: value for key, value in network.state_dict().items()}


def save_checkpoint(path, network, prefix="module."):
    """As CR-FIQA training saves it: a DataParallel state dict."""
    torch.save({prefix + key: value for key, value in network.state_dict().items()}, path)
    return path


def random_network(blocks=TINY, head="linear", seed=0):
    torch.manual_seed(seed)
    network = CRFIQANet(blocks, head)
    with torch.no_grad():  # non-trivial BatchNorm statistics, as a trained checkpoint has
        for module in network.modules():
            if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return network.eval()


def test_checkpoint_layout_follows_cr_fiqa():
    keys = meta_state_dict((3, 4, 14, 3), "linear")
    assert keys["conv1.weight"].shape == (64, 3, 3, 3)
    assert keys["layer1.0.downsample.0.weight"].shape == (64, 64, 1, 1)
    assert keys["layer3.13.conv2.weight"].shape == (256, 256, 3, 3)
    assert "layer3.14.conv1.weight" not in keys and "layer2.3.prelu.weight" in keys
    assert keys["fc.weight"].shape == (512, 512 * 7 * 7)
    assert keys["features.running_var"].shape == (512,)
    assert keys["qs.weight"].shape == (1, 512) and keys["qs.bias"].shape == (1,)
    mlp = meta_state_dict((3, 4, 14, 3), "mlp")
    assert {k for k in mlp if k.startswith("qs.") and k.endswith("weight")} == {
        "qs.2.weight", "qs.3.weight", "qs.6.weight", "qs.7.weight", "qs.9.weight"}
    assert mlp["qs.2.weight"].shape == (256, 512) and mlp["qs.9.weight"].shape == (1, 256)


@pytest.mark.parametrize("blocks, name", [((3, 4, 14, 3), "iresnet50"), ((3, 13, 30, 3), "iresnet100")])
@pytest.mark.parametrize("head", ["linear", "mlp", "none"])
def test_variant_comes_from_the_keys(blocks, name, head):
    variant = detect_variant(meta_state_dict(blocks, head))
    assert (variant.blocks, variant.head, variant.depth_name, variant.num_features) == (blocks, head, name, 512)
    assert not variant.squeeze_excitation


def test_module_prefix_is_stripped(tmp_path):
    network = random_network()
    path = save_checkpoint(tmp_path / "whatever-name-iresnet100.pth", network)
    state = read_state_dict(path)
    assert all(not k.startswith("module.") for k in state)
    loaded, variant = build_from_state_dict(state)
    assert variant.blocks == TINY  # the file name says 100: the keys win
    for key, value in network.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


def test_wrapped_state_dict_and_missing_batch_counters_load(tmp_path):
    state = {k: v for k, v in random_network().state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "wrapped.pth")
    _, variant = build_from_state_dict(read_state_dict(tmp_path / "wrapped.pth"))
    assert variant.head == "linear"


def test_strict_loading_names_the_keys():
    state = random_network().state_dict()
    missing = {k: v for k, v in state.items() if k != "layer2.0.bn3.weight"}
    with pytest.raises(CheckpointError, match=r"missing keys: layer2\.0\.bn3\.weight"):
        build_from_state_dict(missing, "ckpt.pth")
    extra = dict(state, **{"header.kernel": torch.zeros(2)})
    with pytest.raises(CheckpointError, match=r"ckpt.pth does not fit .*unexpected keys: header\.kernel"):
        build_from_state_dict(extra, "ckpt.pth")
    wrong = dict(state, **{"qs.weight": torch.zeros(1, 128)})
    with pytest.raises(CheckpointError, match=r"wrong shapes: qs\.weight \(1, 128\) \(expected \(1, 512\)\)"):
        build_from_state_dict(wrong, "ckpt.pth")
    with pytest.raises(CheckpointError, match="no keys for layer1"):
        build_from_state_dict({"fc.weight": torch.zeros(512, 25088)}, "ckpt.pth")


def test_unreadable_checkpoints(tmp_path):
    (tmp_path / "text.pth").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="text.pth: not a readable PyTorch checkpoint"):
        read_state_dict(tmp_path / "text.pth")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="expected a state dict"):
        read_state_dict(tmp_path / "list.pth")


def test_mlp_head_reads_the_feature_map_before_the_final_batchnorm():
    images = torch.rand(2, 3, 112, 112) * 2 - 1
    for head, should_change in (("linear", True), ("mlp", False)):
        network = random_network(head=head)
        with torch.no_grad():
            before = network(images)[1].clone()
            network.bn2.weight.mul_(3.0)  # the body's BN2d, which feeds fc -> embedding -> linear head
            after = network(images)[1]
        assert not torch.allclose(before, after) if should_change else torch.equal(before, after)


def test_scorer_scales_uint8_crops_to_minus_one_one(tmp_path):
    from synfiqa.registry import get_registry

    network = random_network(seed=3)
    path = save_checkpoint(tmp_path / "tiny.pth", network)
    scorer = get_registry().create("fiqa", "cr-fiqa", path=str(path), device="cpu", batch_size=2)
    crops = torch.randint(0, 256, (3, 3, 112, 112), dtype=torch.uint8)
    crops[0] = 255
    crops[1] = 0
    seen = []
    hook = scorer.network.conv1.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    quality = scorer.score(crops)
    hook.remove()
    assert quality.shape == (3,) and quality.dtype == torch.float32
    assert float(seen[0][0].min()) == 1.0 and float(seen[0][1].max()) == -1.0
    with torch.no_grad():
        expected = network(crops.float() / 127.5 - 1.0)[1].reshape(-1)
    torch.testing.assert_close(quality, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"uint8 \[N, 3, 112, 112\]"):
        scorer.score(crops.float())


def test_recognition_only_checkpoint_is_an_embedder_not_a_scorer(tmp_path):
    from synfiqa.registry import get_registry

    network = random_network(head="none")
    path = save_checkpoint(tmp_path / "backbone.pth", network)
    registry = get_registry()
    with pytest.raises(CheckpointError, match="no quality head"):
        registry.create("fiqa", "cr-fiqa", path=str(path))
    embedder = registry.create("embedder", "cr-fiqa", path=str(path), device="cpu")
    crops = torch.randint(0, 256, (2, 3, 112, 112), dtype=torch.uint8)
    embedding = embedder.embed(crops)
    assert embedding.shape == (2, 512) and embedder.dimension == 512
    with torch.no_grad():
        torch.testing.assert_close(embedding, network(crops.float() / 127.5 - 1.0)[0], rtol=1e-5, atol=1e-5)


def test_full_size_synfiqa_pp_checkpoint_scores(tmp_path):
    """The real SynFIQA++ architecture (IResNet-50 + MLP head), randomly initialised and saved
    as its checkpoint is, found through its model asset."""
    from synfiqa.registry import get_registry

    network = random_network(blocks=(3, 4, 14, 3), head="mlp", seed=1)
    folder = tmp_path / "weights" / "fiqa-synfiqa-pp"
    folder.mkdir(parents=True)
    save_checkpoint(folder / "SynFIQA++.pth", network)
    crops = torch.randint(0, 256, (2, 3, 112, 112), dtype=torch.uint8)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SYNFIQA_WEIGHTS", str(tmp_path / "weights"))
        scorer = get_registry().create("fiqa", "fiqa-synfiqa-pp", device="cpu")
    assert scorer.variant.describe() == "iresnet50, MLP qs head (SynFIQA++)"
    quality = scorer.score(crops)
    with torch.no_grad():
        expected = network(crops.float() / 127.5 - 1.0)[1].reshape(-1)
    torch.testing.assert_close(quality, expected, rtol=1e-4, atol=1e-5)


def test_published_checkpoint_missing_says_where_to_get_it(tmp_path, monkeypatch):
    from synfiqa.registry import get_registry

    monkeypatch.setenv("SYNFIQA_WEIGHTS", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(WeightsNotFoundError, match=r"'cr-fiqa-l' not found \(expected file: 181952backbone.pth\)"
                                                   r"(.|\n)*drive.google.com"):
        get_registry().create("fiqa", "cr-fiqa-l")


def test_every_fiqa_component_is_catalogued():
    from synfiqa.catalogue import load_catalogue
    from synfiqa.registry import get_registry

    plugins, assets = load_catalogue()
    registry = get_registry()
    for kind in ("fiqa", "embedder"):
        for component in registry.components(kind):
            if component.plugin.endswith("cr_fiqa"):
                assert (kind, component.name) in plugins
                assert component.summary
    for name in registry.names("fiqa"):
        if name != "cr-fiqa":
            asset = registry.get("fiqa", name).factory.asset
            assert asset in assets and assets[asset].source.startswith(("CR-FIQA", "MR-FIQA"))


def test_published_components_share_the_generic_loader():
    from synfiqa.registry import get_registry
    from synfiqa_plugins.models.cr_fiqa import CRFIQAScorer

    registry = get_registry()
    assert np.all([issubclass(registry.get("fiqa", n).factory, CRFIQAScorer) for n in registry.names("fiqa")
                   if registry.get("fiqa", n).plugin.endswith("cr_fiqa")])

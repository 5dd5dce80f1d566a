"""A tiny IResNet for the training tests (a few channels, one block per stage: a few hundred
steps on a 2-core CPU), offered as a third-party `fiqa` plugin would offer it: a scorer whose
factory has `training_network`, registered through `register_models`. The tests here check
that `synfiqa train` finds a trainable network through the registry and that the scorer of
the same component loads what training wrote."""
from __future__ import annotations

import types

import pytest
import torch
from torch import nn

WIDTHS = (4, 8, 8, 16)
EMBEDDING = 16


class TinyIResNet(nn.Module):
    """CRFIQANet's layout (conv1, bn1, prelu, layer1..4, bn2, dropout, fc, features, qs) at a
    few channels; forward(x in [-1, 1]) -> (embedding, quality [N, 1])."""

    def __init__(self, head: str = "linear", embedding_size: int = EMBEDDING, dropout: float = 0.0,
                 widths=WIDTHS, blocks=(1, 1, 1, 1)):
        super().__init__()
        from synfiqa_plugins.models.iresnet import ImprovedBasicBlock, mlp_quality_head

        self.head = head
        self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.prelu = nn.PReLU(widths[0])
        channels = widths[0]
        for stage, (count, width) in enumerate(zip(blocks, widths), start=1):
            layers = [ImprovedBasicBlock(channels, width, stride=2)]
            layers += [ImprovedBasicBlock(width, width) for _ in range(count - 1)]
            setattr(self, f"layer{stage}", nn.Sequential(*layers))
            channels = width
        self.bn2 = nn.BatchNorm2d(channels)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels * 49, embedding_size)
        self.features = nn.BatchNorm1d(embedding_size)
        if head == "mlp":
            self.qs = mlp_quality_head(channels, hidden=16)
        else:
            self.qs = nn.Linear(embedding_size, 1)

    def forward(self, x):
        x = self.prelu(self.bn1(self.conv1(x)))
        feature_map = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        embedding = self.features(self.fc(self.dropout(torch.flatten(self.bn2(feature_map), 1))))
        return embedding, self.qs(feature_map if self.head == "mlp" else embedding)


TINY_ASSET = "tiny-iresnet"   # its weights: $SYNFIQA_WEIGHTS/tiny-iresnet/model.pt


class TinyScorer:
    """A fiqa component of a third-party backbone: loads a state dict written by training,
    from path=FILE or from its model asset (what `synfiqa score --model tiny-iresnet` finds)."""

    kind = "fiqa"

    def __init__(self, path: str = "", device: str = "cpu"):
        from synfiqa.checkpoints import load_state_dict_strictly, read_payload
        from synfiqa.weights import locate

        path = path or str(locate(TINY_ASSET).files["model.pt"])
        state = read_payload(path)
        head = "mlp" if "qs.2.weight" in state else "linear"
        self.network = TinyIResNet(head, int(state["fc.weight"].shape[0])).eval()
        load_state_dict_strictly(self.network, state, path)

    @classmethod
    def training_network(cls, arch: str, head: str, embedding_size: int, dropout: float) -> nn.Module:
        if arch != "tiny":
            raise ValueError(f"tiny-iresnet has one architecture, 'tiny', not {arch!r}")
        return TinyIResNet(head, embedding_size, dropout)

    @torch.inference_mode()
    def score(self, crops: torch.Tensor) -> torch.Tensor:
        return self.network(crops.float() / 127.5 - 1.0)[1].reshape(-1)


def tiny_network(arch: str = "tiny", head: str = "linear", embedding_size: int = EMBEDDING,
                 dropout: float = 0.0) -> nn.Module:
    return TinyScorer.training_network(arch, head, embedding_size, dropout)


PLUGIN_SOURCE = """
from synfiqa import hookimpl
from test_train_tiny import TinyScorer

@hookimpl
def register_models(register):
    register("tiny-iresnet", TinyScorer, summary="a tiny IResNet for tests")

@hookimpl
def register_model_assets(register):
    register("tiny-iresnet", files="model.pt", license="MIT", source="synfiqa train --network tiny-iresnet",
             summary="a tiny IResNet trained by the tests")
"""


def registry_with_tiny():
    """The built-ins plus the tiny backbone as a third-party plugin."""
    from synfiqa.plugins import SynfiqaPluginManager
    from synfiqa.registry import Registry

    module = types.ModuleType("synfiqa_tiny_backbone")
    exec(PLUGIN_SOURCE, module.__dict__)
    manager = SynfiqaPluginManager()
    manager.register_module(module, "synfiqa-tiny-backbone", "1.0")
    manager.load_missing_builtins()
    manager.check_hooks()
    return Registry(manager)


def test_tiny_network_has_the_checkpoint_layout_of_crfiqanet():
    from synfiqa_plugins.models.iresnet import CRFIQANet

    tiny = set(TinyIResNet().state_dict())
    full = set(CRFIQANet((1, 1, 1, 1), "linear").state_dict())
    assert tiny == full


def test_a_third_party_backbone_is_found_through_the_registry():
    from synfiqa.errors import ConfigError
    from synfiqa.protocols import optional_members
    from synfiqa.stages.s6_train import network_builder
    from synfiqa.stages.s6_train.network import build_network

    assert optional_members("fiqa")["training_network"] is None   # the default: not trainable
    registry = registry_with_tiny()
    builder = network_builder(registry, "tiny-iresnet")
    assert isinstance(builder(arch="tiny", head="mlp", embedding_size=16, dropout=0.0), TinyIResNet)
    with pytest.raises(ConfigError, match="tiny-iresnet has one architecture"):
        build_network(builder, "iresnet50", "linear", 16, 0.0)
    # the built-in cr-fiqa scorer offers it too; a published checkpoint's component does not
    from synfiqa_plugins.models.iresnet import CRFIQANet

    assert isinstance(network_builder(registry, "cr-fiqa")(arch="iresnet18", head="linear", embedding_size=512,
                                                           dropout=0.4), CRFIQANet)
    with pytest.raises(ConfigError) as caught:
        network_builder(registry, "fiqa-synfiqa")
    text = str(caught.value)
    assert "cannot be trained" in text and "tiny-iresnet" in text and "cr-fiqa" in text and "fiqa-synfiqa," not in text


def test_cr_fiqa_training_network_has_the_published_layout_and_initialisation():
    from synfiqa_plugins.models.cr_fiqa import CRFIQAScorer
    from synfiqa_plugins.models.iresnet import CRFIQANet

    torch.manual_seed(0)
    network = CRFIQAScorer.training_network("iresnet50", "linear", 512, 0.4)
    assert set(network.state_dict()) == set(CRFIQANet((3, 4, 14, 3), "linear").state_dict())
    assert network.dropout.p == 0.4
    # CR-FIQA's IResNet.__init__: conv weights ~ N(0, 0.1) (torch's default would be ~ 0.02 here)
    weights = torch.cat([m.weight.detach().reshape(-1) for m in network.modules() if isinstance(m, nn.Conv2d)])
    assert abs(float(weights.mean())) < 1e-3 and float(weights.std()) == pytest.approx(0.1, rel=0.01)
    with pytest.raises(ValueError, match="iresnet18, iresnet34, iresnet50, iresnet100"):
        CRFIQAScorer.training_network("resnet9", "linear", 512, 0.4)


def run_tiny(datasets, out, overrides=(), **options):
    """train() of the tiny network with the test settings (one thread, no workers)."""
    from synfiqa.stages.s6_train import load_settings, train

    settings = load_settings(None, ["network='tiny-iresnet'", "arch='tiny'", "embedding_size=16", "dropout=0.0",
                                    "workers=0", "log_every=1", "device='cpu'", *overrides])
    return train(datasets, out, settings, tiny_network, **options)


def ddp_worker(rank: int, world: int, port: int, datasets, out, overrides):
    """One process of a gloo DDP run (torch.multiprocessing.spawn calls it)."""
    import os

    torch.set_num_threads(1)
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank)})
    run_tiny(datasets, out, overrides)

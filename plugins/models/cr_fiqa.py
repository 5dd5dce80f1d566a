"""CR-FIQA quality networks (IResNet-50/-100 with the CR-FIQA linear head or the SynFIQA++
MLP head) as ``fiqa`` models, and their backbone as an ``embedder``.

* ``cr-fiqa``: any checkpoint in the CR-FIQA format, from ``path=FILE`` (or ``asset=NAME``);
  what `synfiqa score --model FILE` uses. The variant is read from the checkpoint's keys.
* one component per published checkpoint (CR-FIQA(S)/(L) and the MR-FIQA leaderboard),
  each bound to its model asset in registry.toml (found offline; see `synfiqa models list`).

Input: ArcFace-aligned 112x112 RGB uint8 crops, scaled to [-1, 1] as CR-FIQA does
(x / 127.5 - 1). The quality is the raw head output: unbounded, higher = better.
"""
from __future__ import annotations

import torch

from synfiqa import hookimpl
from synfiqa.errors import CheckpointError, ConfigError
from synfiqa.models import resolve_device

# component name -> (model asset in registry.toml, what it is)
PUBLISHED_CHECKPOINTS = {
    "cr-fiqa-s": ("cr-fiqa-s", "CR-FIQA(S): IResNet-50 trained on CASIA-WebFace (Boutros et al., CVPR 2023)"),
    "cr-fiqa-l": ("cr-fiqa-l", "CR-FIQA(L): IResNet-100 trained on MS1MV2 (Boutros et al., CVPR 2023)"),
    "fiqa-casia-webface": ("fiqa-casia-webface", "MR-FIQA leaderboard: CR-FIQA trained on CASIA-WebFace (real)"),
    "fiqa-digiface-1m": ("fiqa-digiface-1m", "MR-FIQA leaderboard: CR-FIQA trained on DigiFace-1M"),
    "fiqa-dcface": ("fiqa-dcface", "MR-FIQA leaderboard: CR-FIQA trained on DCFace"),
    "fiqa-sface2": ("fiqa-sface2", "MR-FIQA leaderboard: CR-FIQA trained on SFace2"),
    "fiqa-hsface-10k": ("fiqa-hsface-10k", "MR-FIQA leaderboard: CR-FIQA trained on HSFace-10K"),
    "fiqa-idiff-face": ("fiqa-idiff-face", "MR-FIQA leaderboard: CR-FIQA trained on IDiff-Face"),
    "fiqa-gandiffface": ("fiqa-gandiffface", "MR-FIQA leaderboard: CR-FIQA trained on GANDiffFace"),
    "fiqa-synfiqa": ("fiqa-synfiqa", "MR-FIQA leaderboard: CR-FIQA trained on SynFIQA"),
    "fiqa-synfiqa-pp": ("fiqa-synfiqa-pp", "MR-FIQA leaderboard: SynFIQA++ (MLP quality head)"),
    "fiqa-synfiqa-casia": ("fiqa-synfiqa-casia", "MR-FIQA leaderboard: CR-FIQA trained on SynFIQA + CASIA-WebFace"),
}


def checkpoint_file(path: str, asset: str, component: str) -> str:
    from synfiqa.weights import locate

    if asset:
        return str(next(iter(locate(asset, explicit=path or None).files.values())))
    if path:
        return path
    raise ConfigError(f"{component} needs a checkpoint: give path=FILE (or asset=NAME of a registry.toml asset)")


class _CRFIQANetwork:
    """Loads the checkpoint once and runs it in batches on the chosen device."""

    component = "cr-fiqa"

    def __init__(self, path: str = "", asset: str = "", device: str = "auto", batch_size: int = 64):
        from synfiqa_plugins.models.iresnet import load_checkpoint

        if batch_size < 1:
            raise ConfigError(f"{self.component}: batch_size must be at least 1, got {batch_size}")
        self.checkpoint = checkpoint_file(path, asset, self.component)
        self.device = resolve_device(device)
        network, self.variant = load_checkpoint(self.checkpoint)
        self.network = network.to(self.device)
        self.batch_size = batch_size

    def describe(self) -> str:
        return f"{self.component} ({self.variant.describe()}) from {self.checkpoint}"

    @staticmethod
    def check_crops(crops: torch.Tensor) -> None:
        if not isinstance(crops, torch.Tensor) or crops.dim() != 4 or tuple(crops.shape[1:]) != (3, 112, 112) \
                or crops.dtype != torch.uint8:
            shape = tuple(crops.shape) if isinstance(crops, torch.Tensor) else type(crops).__name__
            raise ValueError(f"CR-FIQA takes uint8 [N, 3, 112, 112] aligned RGB crops, got {getattr(crops, 'dtype', '')} {shape}")

    @torch.inference_mode()
    def run(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        self.check_crops(crops)
        embeddings, qualities = [], []
        for start in range(0, crops.shape[0], self.batch_size):
            batch = crops[start:start + self.batch_size].to(self.device, torch.float32) / 127.5 - 1.0
            embedding, quality = self.network(batch)
            embeddings.append(embedding.float().cpu())
            if quality is not None:
                qualities.append(quality.float().cpu().reshape(-1))
        if not embeddings:
            return torch.zeros(0, self.variant.num_features), torch.zeros(0)
        return torch.cat(embeddings), (torch.cat(qualities) if qualities else None)


class CRFIQAScorer(_CRFIQANetwork):
    """CR-FIQA quality from any checkpoint in its format (path=FILE); variant read from the keys."""

    kind = "fiqa"

    def __init__(self, path: str = "", asset: str = "", device: str = "auto", batch_size: int = 64):
        super().__init__(path, asset, device, batch_size)
        if self.variant.head == "none":
            raise CheckpointError(f"{self.checkpoint} has no quality head (no qs.* keys): a recognition-only "
                                  f"{self.variant.depth_name}; it can serve as an embedder, not as a quality model")

    def score(self, crops: torch.Tensor) -> torch.Tensor:
        return self.run(crops)[1]

    @classmethod
    def training_network(cls, arch: str, head: str, embedding_size: int, dropout: float) -> torch.nn.Module:
        """The untrained network `synfiqa train` trains (synfiqa.protocols.BaseFIQAScorer
        .training_network): the IResNet of depth `arch` with CR-FIQA's initialisation; its
        state dict is a checkpoint in the published key layout, which this class loads."""
        from synfiqa_plugins.models.iresnet import DEPTHS, CRFIQANet, crfiqa_init

        if arch not in DEPTHS:
            raise ValueError(f"cr-fiqa has no architecture {arch!r}; it has {', '.join(DEPTHS)}")
        return crfiqa_init(CRFIQANet(DEPTHS[arch], head, embedding_size, dropout=dropout))


class CRFIQAEmbedder(_CRFIQANetwork):
    """The CR-FIQA backbone's 512-d embedding (the BN1d output), from any checkpoint in its format."""

    kind = "embedder"

    @property
    def dimension(self) -> int:
        return self.variant.num_features

    def embed(self, crops: torch.Tensor) -> torch.Tensor:
        return self.run(crops)[0]


def published_scorer(name: str, asset: str, summary: str) -> type:
    """A CRFIQAScorer bound to one model asset: the user only places the file."""

    def __init__(self, path: str = "", device: str = "auto", batch_size: int = 64):
        CRFIQAScorer.__init__(self, path=path, asset=asset, device=device, batch_size=batch_size)

    # training_network None: a published checkpoint is not trained again; `--network cr-fiqa` trains its network
    return type(f"PublishedCRFIQA_{name.replace('-', '_')}", (CRFIQAScorer,),
                {"__init__": __init__, "__doc__": summary, "component": name, "asset": asset,
                 "training_network": None})


@hookimpl
def register_models(register):
    register("cr-fiqa", CRFIQAScorer)
    register("cr-fiqa", CRFIQAEmbedder)
    for name, (asset, summary) in PUBLISHED_CHECKPOINTS.items():
        register(name, published_scorer(name, asset, summary))

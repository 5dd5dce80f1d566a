"""Randomly initialised CapHuman networks in the real architectures, for tests and benchmarks:
``"sd15"`` is the full-size SD1.5 UNet + 9-channel ControlFace (what the GPU benchmark runs),
``"tiny"`` a few-channel model of the same structure (what the CPU tests run). Nothing here
is a trained model: the images are noise."""
from __future__ import annotations

import torch

from .network import ControlFace, Networks, SCHEDULER_CONFIG

SIZES = {
    # SD1.5 (cldm.yaml): 320 channels x (1, 2, 4, 4), 2 blocks per level, attention at the first
    # three levels, 8 heads, context 768; latent 64 for 512x512 images
    "sd15": dict(block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, cross_attention_dim=768,
                 attention_head_dim=8, norm_num_groups=32,
                 down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")),
    "tiny": dict(block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32, attention_head_dim=4,
                 norm_num_groups=8, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")),
}
VAE_SIZES = {
    "sd15": dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32),
    "tiny": dict(block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4),
}
HINT_CHANNELS = 9
HINT_BLOCK = (16, 32, 96, 256)


def random_unet(size: str = "tiny", seed: int = 0):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(in_channels=4, out_channels=4, sample_size=64 if size == "sd15" else 8,
                                **SIZES[size]).eval()


def random_controlface(size: str = "tiny", seed: int = 1, image_token_dim: int | None = None) -> ControlFace:
    from diffusers import ControlNetModel

    torch.manual_seed(seed)
    options = {k: v for k, v in SIZES[size].items() if k != "up_block_types"}
    controlnet = ControlNetModel(in_channels=4, conditioning_channels=HINT_CHANNELS,
                                 conditioning_embedding_out_channels=HINT_BLOCK, **options)
    face = ControlFace(controlnet, image_token_dim=image_token_dim or (1024 if size == "sd15" else 24))
    # a trained ControlNet's zero convolutions are no longer zero: make the residuals matter
    with torch.no_grad():
        for module in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block,
                       controlnet.controlnet_cond_embedding.conv_out]:
            module.weight.normal_(0, 0.05)
            module.bias.normal_(0, 0.05)
    return face.eval()


def random_vae(size: str = "tiny", seed: int = 2):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    blocks = len(VAE_SIZES[size]["block_out_channels"])
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4,
                         down_block_types=("DownEncoderBlock2D",) * blocks,
                         up_block_types=("UpDecoderBlock2D",) * blocks, **VAE_SIZES[size]).eval()


def random_networks(size: str = "tiny", vae: bool = True) -> Networks:
    return Networks(random_unet(size), random_controlface(size), random_vae(size) if vae else None,
                    dict(SCHEDULER_CONFIG))

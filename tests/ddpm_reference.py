"""Test oracles for the ddpm generator, written from the guided-diffusion paper and the
layer names of its public UNet (not from synfiqa's converter):

* `ReferenceUNet`: the ADM UNet as torch modules named the way guided-diffusion names
  them, so `state_dict()` carries the original keys and shapes;
* `reference_sample`: guided-diffusion's respaced ancestral sampler, coefficient by
  coefficient, in float64 numpy.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


def _norm(channels):
    return nn.GroupNorm(32, channels)


def sinusoidal_embedding(timesteps: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    frequencies = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    angles = timesteps.float()[:, None] * frequencies[None]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


class ResBlock(nn.Module):
    def __init__(self, channels, emb_channels, out_channels, scale_shift, up=False, down=False, conv_resample=True):
        super().__init__()
        self.in_layers = nn.Sequential(_norm(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels * (2 if scale_shift else 1)))
        self.out_layers = nn.Sequential(_norm(out_channels), nn.SiLU(), nn.Dropout(0.0),
                                        nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)
        self.scale_shift, self.up, self.down = scale_shift, up, down

    def _resample(self, x):
        if self.up:
            return F.interpolate(x, scale_factor=2, mode="nearest")
        if self.down:
            return F.avg_pool2d(x, 2)
        return x

    def forward(self, x, emb):
        h = self.in_layers[1](self.in_layers[0](x))
        h, x = self._resample(h), self._resample(x)
        h = self.in_layers[2](h)
        e = self.emb_layers(emb)[:, :, None, None]
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[3](self.out_layers[1](h))
        else:
            h = self.out_layers(h + e)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    def __init__(self, channels, heads, new_order):
        super().__init__()
        self.norm = _norm(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)
        self.heads, self.new_order = heads, new_order

    def forward(self, x):
        b, c, height, width = x.shape
        flat = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(flat))
        ch = c // self.heads
        if self.new_order:
            q, k, v = (part.reshape(b * self.heads, ch, -1) for part in qkv.chunk(3, dim=1))
        else:
            q, k, v = qkv.reshape(b * self.heads, 3 * ch, -1).split(ch, dim=1)
        weights = torch.softmax(torch.einsum("bct,bcs->bts", q, k) / math.sqrt(ch), dim=-1)
        attended = torch.einsum("bts,bcs->bct", weights, v).reshape(b, c, -1)
        return (flat + self.proj_out(attended)).reshape(b, c, height, width)


class Downsample(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x):
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class Stage(nn.ModuleList):
    """guided-diffusion's TimestepEmbedSequential: residual blocks get the embedding."""

    def forward(self, x, emb):
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class ReferenceUNet(nn.Module):
    def __init__(self, arch):
        super().__init__()
        mc, emb = arch.model_channels, arch.model_channels * 4
        self.model_channels = mc
        self.time_embed = nn.Sequential(nn.Linear(mc, emb), nn.SiLU(), nn.Linear(emb, emb))

        def heads(channels):
            return channels // arch.num_head_channels if arch.num_head_channels > 0 else arch.num_heads

        def res(cin, cout, **kw):
            return ResBlock(cin, emb, cout, arch.use_scale_shift_norm, conv_resample=arch.conv_resample, **kw)

        def attention(channels):
            return AttentionBlock(channels, heads(channels), arch.use_new_attention_order)

        self.input_blocks = nn.ModuleList([Stage([nn.Conv2d(arch.in_channels, mc, 3, padding=1)])])
        skips, ch, size = [mc], mc, arch.image_size
        for level, mult in enumerate(arch.channel_mult):
            for _ in range(arch.num_res_blocks):
                layers = [res(ch, mult * mc)]
                ch = mult * mc
                if size in arch.attention_resolutions:
                    layers.append(attention(ch))
                self.input_blocks.append(Stage(layers))
                skips.append(ch)
            if level != len(arch.channel_mult) - 1:
                down = res(ch, ch, down=True) if arch.resblock_updown else Downsample(ch)
                self.input_blocks.append(Stage([down]))
                skips.append(ch)
                size //= 2
        self.middle_block = Stage([res(ch, ch), attention(ch), res(ch, ch)])
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(arch.channel_mult))):
            for i in range(arch.num_res_blocks + 1):
                layers = [res(ch + skips.pop(), mc * mult)]
                ch = mc * mult
                if size in arch.attention_resolutions:
                    layers.append(attention(ch))
                if level and i == arch.num_res_blocks:
                    layers.append(res(ch, ch, up=True) if arch.resblock_updown else Upsample(ch))
                    size *= 2
                self.output_blocks.append(Stage(layers))
        self.out = nn.Sequential(_norm(ch), nn.SiLU(), nn.Conv2d(ch, arch.out_channels, 3, padding=1))

    def forward(self, x, timesteps):
        emb = self.time_embed(sinusoidal_embedding(timesteps, self.model_channels))
        skips, h = [], x
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)


def randomize(module: nn.Module, seed: int = 0, scale: float = 0.2) -> nn.Module:
    """Random values everywhere (guided-diffusion zero-initialises output convolutions,
    which would hide a wrong mapping); norms near 1 so activations stay in range."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            if isinstance(module.get_submodule(name.rsplit(".", 1)[0]), nn.GroupNorm) and name.endswith("weight"):
                parameter.copy_(1.0 + 0.1 * noise)
            else:
                fan_in = parameter[0].numel() if parameter.dim() > 1 else 1
                parameter.copy_(noise * scale / math.sqrt(fan_in) if parameter.dim() > 1 else 0.1 * noise)
    return module.eval()


# ---------------------------------------------------------------- sampler oracle

def reference_sample(model, shape, timesteps_used, initial, noises, betas_full):
    """guided-diffusion's SpacedDiffusion + p_sample_loop with LEARNED_RANGE variance,
    epsilon prediction and clip_denoised=True. `noises[k]` is the noise of respaced step k."""
    alphas_cumprod_full = np.cumprod(1.0 - betas_full)
    last, betas = 1.0, []
    for t in timesteps_used:
        betas.append(1 - alphas_cumprod_full[t] / last)
        last = alphas_cumprod_full[t]
    betas = np.array(betas)
    acp = np.cumprod(1 - betas)
    acp_prev = np.append(1.0, acp[:-1])
    post_var = betas * (1 - acp_prev) / (1 - acp)
    post_log_var = np.log(np.append(post_var[1], post_var[1:]))
    coef1 = betas * np.sqrt(acp_prev) / (1 - acp)
    coef2 = (1 - acp_prev) * np.sqrt(1 - betas) / (1 - acp)
    x = initial.to(torch.float64)
    channels = shape[1]
    for k in reversed(range(len(betas))):
        t = torch.full((shape[0],), timesteps_used[k], dtype=torch.long)
        with torch.no_grad():
            out = model(x.float(), t).to(torch.float64)
        eps, var_values = out[:, :channels], out[:, channels:]
        frac = (var_values + 1) / 2
        log_var = frac * np.log(betas[k]) + (1 - frac) * post_log_var[k]
        x0 = (np.sqrt(1 / acp[k]) * x - np.sqrt(1 / acp[k] - 1) * eps).clamp(-1, 1)
        mean = coef1[k] * x0 + coef2[k] * x
        x = mean + (torch.exp(0.5 * log_var) * noises[k].to(torch.float64) if k > 0 else 0.0)
    return x


def write_tiny_model(folder, seed: int = 1):
    """A converted tiny DCFace-family model folder (32x32 images), for generator tests."""
    from synfiqa_plugins.generators.ddpm.convert import GuidedDiffusionArch, build_unet, write_model_dir

    arch = GuidedDiffusionArch(image_size=32, model_channels=32, channel_mult=(1, 2), attention_resolutions=(16,),
                               num_head_channels=16)
    return write_model_dir(build_unet(arch, randomize(ReferenceUNet(arch), seed=seed).state_dict()), arch, folder)

"""From a guided-diffusion ("ADM") UNet state_dict to a diffusers model directory.

guided-diffusion names its UNet by position: `input_blocks.<i>.<j>`, `middle_block.<j>`,
`output_blocks.<i>.<j>`, `time_embed.<0|2>`, `out.<0|2>`; inside a residual block
`in_layers.{0,2}` (norm, conv), `emb_layers.1`, `out_layers.{0,3}`, `skip_connection`;
inside an attention block `norm`, `qkv` (a 1-D conv giving q, k and v of every head at
once) and `proj_out`. diffusers' `UNet2DModel` holds the same layers under block names
(`down_blocks.<level>.resnets.<r>` ...), with separate linear q, k, v projections. The
mapping walks both layouts level by level; the shapes it expects come from the diffusers
model built on the meta device, so a checkpoint of another architecture is caught before
anything is written, with the mismatched keys listed.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from synfiqa.errors import ConfigError

# What a ResBlock's sub-layers are called on each side.
_RESNET_PARTS = {
    "in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut",
}
_ATTENTION_PARTS = {"norm": "group_norm"}  # qkv and proj_out are reshaped, see below


@dataclass(frozen=True)
class GuidedDiffusionArch:
    """The guided-diffusion UNet hyper-parameters that decide its state_dict.
    Defaults: DCFace's stage-1 unconditional model (docs/method.md#11-generation)."""

    image_size: int = 256
    in_channels: int = 3
    model_channels: int = 128
    out_channels: int = 6                     # 2 x in_channels: the learned variance
    num_res_blocks: int = 1
    channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4, 4)
    attention_resolutions: tuple[int, ...] = (16,)   # feature-map sizes with attention
    num_head_channels: int = 64               # -1: use num_heads instead
    num_heads: int = 4
    use_scale_shift_norm: bool = True
    resblock_updown: bool = True
    conv_resample: bool = True
    use_new_attention_order: bool = False     # False: heads split before q, k, v (legacy)
    dropout: float = 0.0
    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"             # linear | cosine
    learn_sigma: bool = field(default=True)

    def attention_levels(self) -> list[bool]:
        sizes = [self.image_size // (2 ** level) for level in range(len(self.channel_mult))]
        return [size in self.attention_resolutions for size in sizes]

    def head_dim(self) -> int:
        if self.num_head_channels > 0:
            return self.num_head_channels
        widths = {self.model_channels * m for m, attn in zip(self.channel_mult, self.attention_levels()) if attn}
        widths.add(self.model_channels * self.channel_mult[-1])  # the middle block always attends
        dims = {width // self.num_heads for width in widths}
        if len(dims) != 1:
            raise ConfigError("diffusers' UNet2DModel needs one channel count per attention head; this "
                              f"architecture has a fixed head count ({self.num_heads}) over widths {sorted(widths)}")
        return dims.pop()

    def with_overrides(self, overrides: dict) -> "GuidedDiffusionArch":
        known = set(asdict(self))
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConfigError(f"unknown architecture keys {unknown}; known: {', '.join(sorted(known))}")
        values = {}
        for key, value in overrides.items():
            current = getattr(self, key)
            if isinstance(current, tuple):
                value = tuple(int(v) for v in (value.split(",") if isinstance(value, str) else value))
            elif isinstance(current, bool):
                value = value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
            else:
                value = type(current)(value)
            values[key] = value
        return replace(self, **values)


DCFACE_STAGE1 = GuidedDiffusionArch()
PRESETS = {"dcface-stage1": DCFACE_STAGE1}


def unet2d_config(arch: GuidedDiffusionArch) -> dict:
    """The diffusers UNet2DModel config that computes what the guided-diffusion UNet computes."""
    attention = arch.attention_levels()
    down, up = [], []
    for has_attention in attention:
        if has_attention:
            down.append("AttnDownBlock2D")
        else:
            down.append("ResnetDownsampleBlock2D" if arch.resblock_updown else "DownBlock2D")
    for has_attention in reversed(attention):
        if has_attention:
            up.append("AttnUpBlock2D")
        else:
            up.append("ResnetUpsampleBlock2D" if arch.resblock_updown else "UpBlock2D")
    if not arch.resblock_updown and not arch.conv_resample:
        raise ConfigError("pooling-only resampling (conv_resample=False, resblock_updown=False) has no diffusers block")
    return {
        "sample_size": arch.image_size,
        "in_channels": arch.in_channels,
        "out_channels": arch.out_channels,
        "time_embedding_type": "positional",
        "flip_sin_to_cos": True,          # guided-diffusion puts cos before sin
        "freq_shift": 0,
        "down_block_types": down,
        "up_block_types": up,
        "mid_block_type": "UNetMidBlock2D",
        "block_out_channels": [arch.model_channels * m for m in arch.channel_mult],
        "layers_per_block": arch.num_res_blocks,
        "downsample_type": "resnet" if arch.resblock_updown else "conv",
        "upsample_type": "resnet" if arch.resblock_updown else "conv",
        "downsample_padding": 1,
        "attention_head_dim": arch.head_dim(),
        "norm_num_groups": 32,
        "attn_norm_num_groups": 32,   # without it, the middle attention of a scale-shift UNet has no norm
        "norm_eps": 1e-5,
        "resnet_time_scale_shift": "scale_shift" if arch.use_scale_shift_norm else "default",
        "dropout": arch.dropout,
        "act_fn": "silu",
        "add_attention": True,
    }


@dataclass(frozen=True)
class _Move:
    source: str          # guided-diffusion parameter name
    target: str          # diffusers parameter name (for qkv: the attention module prefix)
    kind: str = "copy"   # copy | conv1d | qkv


def _layer_moves(source: str, target: str, parts: dict[str, str]) -> list[_Move]:
    return [_Move(f"{source}.{a}.{leaf}", f"{target}.{b}.{leaf}") for a, b in parts.items() for leaf in ("weight", "bias")]


def _resnet(source: str, target: str) -> list[_Move]:
    return _layer_moves(source, target, _RESNET_PARTS)


def _attention(source: str, target: str) -> list[_Move]:
    moves = _layer_moves(source, target, _ATTENTION_PARTS)
    moves += [_Move(f"{source}.qkv.{leaf}", target, "qkv") for leaf in ("weight", "bias")]
    moves += [_Move(f"{source}.proj_out.{leaf}", f"{target}.to_out.0.{leaf}", "conv1d") for leaf in ("weight", "bias")]
    return moves


def _resample(source: str, target: str, arch: GuidedDiffusionArch, direction: str) -> list[_Move]:
    if arch.resblock_updown:
        return _resnet(source, target)
    inner = "op" if direction == "down" else "conv"
    return [_Move(f"{source}.{inner}.{leaf}", f"{target}.conv.{leaf}") for leaf in ("weight", "bias")]


def parameter_moves(arch: GuidedDiffusionArch) -> list[_Move]:
    """Every guided-diffusion parameter with the diffusers parameter(s) it becomes.
    Block i of guided-diffusion's input_blocks is counted the way its constructor appends
    them: the input conv, then per level num_res_blocks (resblock [+ attention]) and, below
    the last level, one downsampling block."""
    attention = arch.attention_levels()
    last = len(arch.channel_mult) - 1
    moves = [
        _Move("time_embed.0.weight", "time_embedding.linear_1.weight"),
        _Move("time_embed.0.bias", "time_embedding.linear_1.bias"),
        _Move("time_embed.2.weight", "time_embedding.linear_2.weight"),
        _Move("time_embed.2.bias", "time_embedding.linear_2.bias"),
        _Move("input_blocks.0.0.weight", "conv_in.weight"),
        _Move("input_blocks.0.0.bias", "conv_in.bias"),
    ]
    block = 1
    for level in range(last + 1):
        for r in range(arch.num_res_blocks):
            moves += _resnet(f"input_blocks.{block}.0", f"down_blocks.{level}.resnets.{r}")
            if attention[level]:
                moves += _attention(f"input_blocks.{block}.1", f"down_blocks.{level}.attentions.{r}")
            block += 1
        if level != last:
            moves += _resample(f"input_blocks.{block}.0", f"down_blocks.{level}.downsamplers.0", arch, "down")
            block += 1
    moves += _resnet("middle_block.0", "mid_block.resnets.0")
    moves += _attention("middle_block.1", "mid_block.attentions.0")
    moves += _resnet("middle_block.2", "mid_block.resnets.1")
    block = 0
    for up_index, level in enumerate(reversed(range(last + 1))):
        for r in range(arch.num_res_blocks + 1):
            moves += _resnet(f"output_blocks.{block}.0", f"up_blocks.{up_index}.resnets.{r}")
            position = 1
            if attention[level]:
                moves += _attention(f"output_blocks.{block}.1", f"up_blocks.{up_index}.attentions.{r}")
                position = 2
            if level != 0 and r == arch.num_res_blocks:
                moves += _resample(f"output_blocks.{block}.{position}", f"up_blocks.{up_index}.upsamplers.0", arch, "up")
            block += 1
    moves += [
        _Move("out.0.weight", "conv_norm_out.weight"), _Move("out.0.bias", "conv_norm_out.bias"),
        _Move("out.2.weight", "conv_out.weight"), _Move("out.2.bias", "conv_out.bias"),
    ]
    return moves


def _meta_unet(arch: GuidedDiffusionArch):
    from diffusers import UNet2DModel

    with torch.device("meta"):
        return UNet2DModel(**unet2d_config(arch))


def expected_shapes(arch: GuidedDiffusionArch, target_shapes: dict[str, torch.Size] | None = None) -> dict[str, tuple]:
    """The guided-diffusion state_dict's keys and shapes for this architecture."""
    if target_shapes is None:
        target_shapes = {k: v.shape for k, v in _meta_unet(arch).state_dict().items()}
    shapes: dict[str, tuple] = {}
    for move in parameter_moves(arch):
        if move.kind == "qkv":
            leaf = move.source.rsplit(".", 1)[1]
            width = target_shapes[f"{move.target}.to_q.{leaf}"][0]
            shapes[move.source] = (3 * width, width, 1) if leaf == "weight" else (3 * width,)
        elif move.target not in target_shapes:
            continue  # e.g. a resblock whose channels do not change has no skip convolution
        elif move.kind == "conv1d" and move.source.endswith("weight"):
            shapes[move.source] = (*target_shapes[move.target], 1)
        else:
            shapes[move.source] = tuple(target_shapes[move.target])
    return shapes


def check_state_dict(state_dict: dict[str, torch.Tensor], arch: GuidedDiffusionArch,
                     expected: dict[str, tuple] | None = None) -> None:
    """Raise ConfigError naming every missing, unexpected and wrongly shaped key."""
    expected = expected or expected_shapes(arch)
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong = [f"{k} {tuple(state_dict[k].shape)} (expected {expected[k]})"
             for k in expected if k in state_dict and tuple(state_dict[k].shape) != expected[k]]
    if not (missing or unexpected or wrong):
        return

    def listing(title, keys):
        if not keys:
            return ""
        shown = ", ".join(keys[:8]) + (f", ... ({len(keys) - 8} more)" if len(keys) > 8 else "")
        return f" {title} ({len(keys)}): {shown}."

    raise ConfigError(
        "the checkpoint does not fit the guided-diffusion architecture "
        f"(model_channels={arch.model_channels}, channel_mult={arch.channel_mult}, "
        f"num_res_blocks={arch.num_res_blocks}, attention at {arch.attention_resolutions})."
        + listing("missing keys", missing) + listing("unexpected keys", unexpected)
        + listing("wrong shapes", wrong)
    )


def _split_qkv(tensor: torch.Tensor, width: int, head_dim: int, new_order: bool) -> list[torch.Tensor]:
    heads = width // head_dim
    rest = tensor.shape[1:]
    if new_order:   # [q of all heads | k of all heads | v of all heads]
        grouped = tensor.reshape(3, heads, head_dim, *rest)
        parts = [grouped[i] for i in range(3)]
    else:           # per head: [q | k | v]
        grouped = tensor.reshape(heads, 3, head_dim, *rest)
        parts = [grouped[:, i] for i in range(3)]
    return [part.reshape(width, *rest) for part in parts]


def convert_state_dict(state_dict: dict[str, torch.Tensor], arch: GuidedDiffusionArch) -> dict[str, torch.Tensor]:
    """guided-diffusion parameter names and shapes -> UNet2DModel's, checked first."""
    target_shapes = {k: v.shape for k, v in _meta_unet(arch).state_dict().items()}
    check_state_dict(state_dict, arch, expected_shapes(arch, target_shapes))
    head_dim = arch.head_dim()
    converted: dict[str, torch.Tensor] = {}
    for move in parameter_moves(arch):
        if move.source not in state_dict:
            continue
        tensor = state_dict[move.source]
        if move.kind == "qkv":
            leaf = move.source.rsplit(".", 1)[1]
            if leaf == "weight":
                tensor = tensor[..., 0]
            width = tensor.shape[0] // 3
            for name, part in zip(("to_q", "to_k", "to_v"), _split_qkv(tensor, width, head_dim, arch.use_new_attention_order)):
                converted[f"{move.target}.{name}.{leaf}"] = part.contiguous()
        elif move.kind == "conv1d" and move.source.endswith("weight"):
            converted[move.target] = tensor[..., 0].contiguous()
        else:
            converted[move.target] = tensor.contiguous()
    # fp16 checkpoints are stored as float32; the generator halves the model on CUDA itself
    return {name: tensor.to(torch.float32) for name, tensor in converted.items()}


def read_guided_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """A raw state_dict file (.pt/.pth), possibly wrapped in {"state_dict": ...} or saved
    from DataParallel with a "module." prefix."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint {str(path)!r} does not exist")
    from synfiqa.checkpoints import read_payload

    loaded = read_payload(path)  # tensors only, every failure one line (a CheckpointError)
    for wrapper in ("state_dict", "model", "ema"):
        if isinstance(loaded, dict) and isinstance(loaded.get(wrapper), dict):
            loaded = loaded[wrapper]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise ConfigError(f"{str(path)!r} does not hold a state_dict of tensors")
    if loaded and all(k.startswith("module.") for k in loaded):
        loaded = {k[len("module."):]: v for k, v in loaded.items()}
    return loaded


def build_unet(arch: GuidedDiffusionArch, state_dict: dict[str, torch.Tensor]):
    """A UNet2DModel holding a guided-diffusion state_dict, loaded strictly."""
    converted = convert_state_dict(state_dict, arch)
    unet = _meta_unet(arch)
    unet.load_state_dict(converted, strict=True, assign=True)
    return unet.eval()


def scheduler_config(arch: GuidedDiffusionArch) -> dict:
    """The schedule in diffusers' DDPMScheduler vocabulary (linspace spacing reproduces
    guided-diffusion's section respacing; learned_range its variance)."""
    return {
        "num_train_timesteps": arch.num_train_timesteps,
        "beta_schedule": {"linear": "linear", "cosine": "squaredcos_cap_v2"}[arch.beta_schedule],
        "beta_start": 1e-4, "beta_end": 0.02,
        "variance_type": "learned_range" if arch.learn_sigma else "fixed_small",
        "prediction_type": "epsilon",
        "clip_sample": True, "clip_sample_range": 1.0,
        "timestep_spacing": "linspace",
    }


def write_model_dir(unet, arch: GuidedDiffusionArch, out: str | Path, provenance: dict | None = None) -> Path:
    """A DDPMPipeline-style directory: model_index.json, unet/, scheduler/, plus
    synfiqa.json recording where the weights came from and the architecture."""
    import diffusers
    from diffusers import DDPMScheduler

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(out / "unet", safe_serialization=True)
    DDPMScheduler(**scheduler_config(arch)).save_pretrained(out / "scheduler")
    index = {"_class_name": "DDPMPipeline", "_diffusers_version": diffusers.__version__,
             "scheduler": ["diffusers", "DDPMScheduler"], "unet": ["diffusers", "UNet2DModel"]}
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    record = {"architecture": asdict(arch), "respacing": "100", **(provenance or {})}
    (out / "synfiqa.json").write_text(json.dumps(record, indent=2, default=list) + "\n")
    return out


def convert_checkpoint(checkpoint: str | Path, out: str | Path, arch: GuidedDiffusionArch = DCFACE_STAGE1) -> Path:
    state_dict = read_guided_checkpoint(checkpoint)
    unet = build_unet(arch, state_dict)
    digest = hashlib.sha256(Path(checkpoint).read_bytes()).hexdigest()
    return write_model_dir(unet, arch, out, {"source": str(checkpoint), "source_sha256": digest,
                                             "source_format": "guided-diffusion state_dict"})

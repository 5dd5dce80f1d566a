"""The original (LDM / ControlNet-style) parameter names and shapes of CapHuman's networks,
generated from the structure of its config (MR-FIQA's ``Stage-2/models/cldm.yaml``: SD1.5's
``UNetModel`` with ``SpatialTransformer`` blocks, and ``ControlFace``, the encoder copy with the
hint block, the zero convolutions and the mask head), read off the constructors' structure:

* ``ResBlock(c_in -> c_out)``: ``in_layers.0`` GroupNorm(c_in), ``in_layers.2`` conv 3x3,
  ``emb_layers.1`` Linear(4 m -> c_out), ``out_layers.0`` GroupNorm(c_out), ``out_layers.3`` conv
  3x3, ``skip_connection`` conv 1x1 when c_in != c_out;
* ``SpatialTransformer(c, heads, c / heads, context)`` with ``use_linear=False``: ``norm``,
  ``proj_in`` / ``proj_out`` conv 1x1, one ``BasicTransformerBlock``: ``attn1`` (self) and
  ``attn2`` (cross; ``to_k`` / ``to_v`` read the context) with bias-free ``to_q/k/v`` and
  ``to_out.0``, ``ff.net.0.proj`` (GEGLU: 8c) and ``ff.net.2``, ``norm1..3``;
* ``Downsample``: ``op`` conv 3x3 stride 2; ``Upsample``: ``conv``.

Used by the tests (a random state dict with the real names) and by ``synfiqa convert caphuman
--check`` to list what a real file lacks or has in excess."""
from __future__ import annotations

import copy

#: MR-FIQA's Stage-2/models/cldm.yaml (the parts that shape the weights)
CLDM_CONFIG = {
    "model": {
        "target": "src.cldm.cldm.ContorlModel",
        "params": {
            "linear_start": 0.00085, "linear_end": 0.012, "timesteps": 1000, "image_size": 64, "channels": 4,
            "scale_factor": 0.18215, "context_dim": 768, "img_linear_dim": 1024, "cond_mode": "img+id",
            "control_stage_config": {"target": "src.cldm.cldm.ControlFace", "params": {
                "image_size": 32, "in_channels": 4, "hint_channels": 9, "model_channels": 320,
                "attention_resolutions": [4, 2, 1], "num_res_blocks": 2, "channel_mult": [1, 2, 4, 4],
                "num_heads": 8, "use_spatial_transformer": True, "transformer_depth": 1, "context_dim": 768,
                "use_checkpoint": True, "legacy": False}},
            "unet_config": {"target": "src.cldm.cldm.ControlledUnetModel", "params": {
                "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 320,
                "attention_resolutions": [4, 2, 1], "num_res_blocks": 2, "channel_mult": [1, 2, 4, 4],
                "num_heads": 8, "use_spatial_transformer": True, "transformer_depth": 1, "context_dim": 768,
                "use_checkpoint": True, "legacy": False}},
            "first_stage_config": {"target": "ldm.models.autoencoder.AutoencoderKL", "params": {
                "embed_dim": 4, "ddconfig": {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3,
                                             "out_ch": 3, "ch": 128, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2,
                                             "attn_resolutions": [], "dropout": 0.0}}},
        },
    },
}

HINT_BLOCK = (16, 16, 32, 32, 96, 96, 256)   # the convolutions' outputs before the final zero conv


def tiny_config(model_channels: int = 32, channel_mult=(1, 2), num_res_blocks: int = 1, attention_resolutions=(1,),
                num_heads: int = 8, context_dim: int = 32, img_linear_dim: int = 24, vae_ch: int = 32,
                vae_mult=(1, 1, 1, 1)) -> dict:
    """CLDM_CONFIG with small widths (channels stay multiples of 32: LDM's GroupNorm has 32 groups)."""
    config = copy.deepcopy(CLDM_CONFIG)
    params = config["model"]["params"]
    params["context_dim"], params["img_linear_dim"] = context_dim, img_linear_dim
    for key in ("control_stage_config", "unet_config"):
        p = params[key]["params"]
        p.update(model_channels=model_channels, channel_mult=list(channel_mult), num_res_blocks=num_res_blocks,
                 attention_resolutions=list(attention_resolutions), num_heads=num_heads, context_dim=context_dim)
    params["first_stage_config"]["params"]["ddconfig"].update(ch=vae_ch, ch_mult=list(vae_mult), num_res_blocks=1)
    return config


# ------------------------------------------------------------------ building blocks

def _resblock(prefix, c_in, c_out, emb):
    keys = {f"{prefix}.in_layers.0.weight": (c_in,), f"{prefix}.in_layers.0.bias": (c_in,),
            f"{prefix}.in_layers.2.weight": (c_out, c_in, 3, 3), f"{prefix}.in_layers.2.bias": (c_out,),
            f"{prefix}.emb_layers.1.weight": (c_out, emb), f"{prefix}.emb_layers.1.bias": (c_out,),
            f"{prefix}.out_layers.0.weight": (c_out,), f"{prefix}.out_layers.0.bias": (c_out,),
            f"{prefix}.out_layers.3.weight": (c_out, c_out, 3, 3), f"{prefix}.out_layers.3.bias": (c_out,)}
    if c_in != c_out:
        keys.update({f"{prefix}.skip_connection.weight": (c_out, c_in, 1, 1), f"{prefix}.skip_connection.bias": (c_out,)})
    return keys


def _transformer(prefix, c, context):
    keys = {f"{prefix}.norm.weight": (c,), f"{prefix}.norm.bias": (c,),
            f"{prefix}.proj_in.weight": (c, c, 1, 1), f"{prefix}.proj_in.bias": (c,),
            f"{prefix}.proj_out.weight": (c, c, 1, 1), f"{prefix}.proj_out.bias": (c,)}
    block = f"{prefix}.transformer_blocks.0"
    for attn, source in (("attn1", c), ("attn2", context)):
        keys.update({f"{block}.{attn}.to_q.weight": (c, c), f"{block}.{attn}.to_k.weight": (c, source),
                     f"{block}.{attn}.to_v.weight": (c, source), f"{block}.{attn}.to_out.0.weight": (c, c),
                     f"{block}.{attn}.to_out.0.bias": (c,)})
    keys.update({f"{block}.ff.net.0.proj.weight": (8 * c, c), f"{block}.ff.net.0.proj.bias": (8 * c,),
                 f"{block}.ff.net.2.weight": (c, 4 * c), f"{block}.ff.net.2.bias": (c,)})
    for norm in ("norm1", "norm2", "norm3"):
        keys.update({f"{block}.{norm}.weight": (c,), f"{block}.{norm}.bias": (c,)})
    return keys


def _conv(prefix, c_out, c_in, k=3):
    return {f"{prefix}.weight": (c_out, c_in, k, k), f"{prefix}.bias": (c_out,)}


def _encoder(prefix, p, context, zero_convs: bool):
    """input_blocks (+ zero_convs), middle_block (+ middle_block_out), time_embed; and the
    channel list the decoder's skips see."""
    m, emb = p["model_channels"], 4 * p["model_channels"]
    keys = {f"{prefix}time_embed.0.weight": (emb, m), f"{prefix}time_embed.0.bias": (emb,),
            f"{prefix}time_embed.2.weight": (emb, emb), f"{prefix}time_embed.2.bias": (emb,)}
    keys.update(_conv(f"{prefix}input_blocks.0.0", m, p["in_channels"]))
    skips = [m]
    block, ch, ds = 1, m, 1
    for level, mult in enumerate(p["channel_mult"]):
        for _ in range(p["num_res_blocks"]):
            keys.update(_resblock(f"{prefix}input_blocks.{block}.0", ch, mult * m, emb))
            ch = mult * m
            if ds in p["attention_resolutions"]:
                keys.update(_transformer(f"{prefix}input_blocks.{block}.1", ch, context))
            skips.append(ch)
            block += 1
        if level != len(p["channel_mult"]) - 1:
            keys.update(_conv(f"{prefix}input_blocks.{block}.0.op", ch, ch))
            skips.append(ch)
            block += 1
            ds *= 2
    keys.update(_resblock(f"{prefix}middle_block.0", ch, ch, emb))
    keys.update(_transformer(f"{prefix}middle_block.1", ch, context))
    keys.update(_resblock(f"{prefix}middle_block.2", ch, ch, emb))
    if zero_convs:
        for i, c in enumerate(skips):
            keys.update(_conv(f"{prefix}zero_convs.{i}.0", c, c, 1))
        keys.update(_conv(f"{prefix}middle_block_out.0", ch, ch, 1))
    return keys, skips, ch, ds


def control_keys(config: dict = CLDM_CONFIG, prefix: str = "control_model.") -> dict[str, tuple]:
    """ControlFace's parameters (name -> shape), under `prefix`, plus the top-level
    ``id_linear`` / ``img_linear`` of the ContorlModel."""
    params = config["model"]["params"]
    p = params["control_stage_config"]["params"]
    keys, _, _, _ = _encoder(prefix, p, p["context_dim"], zero_convs=True)
    c_in = p["hint_channels"]
    for i, c_out in enumerate(HINT_BLOCK):
        keys.update(_conv(f"{prefix}input_hint_block.{2 * i}", c_out, c_in))
        c_in = c_out
    keys.update(_conv(f"{prefix}input_hint_block.{2 * len(HINT_BLOCK)}", p["model_channels"], c_in))
    # the original hard-codes 320 input channels: model_channels for SD1.5
    keys.update(_conv(f"{prefix}mask_predict.0", 1, p["model_channels"]))
    context = params["context_dim"]
    keys.update({"id_linear.weight": (context, 512), "id_linear.bias": (context,),
                 "img_linear.weight": (context, params["img_linear_dim"]), "img_linear.bias": (context,)})
    return keys


def unet_keys(config: dict = CLDM_CONFIG, prefix: str = "model.diffusion_model.") -> dict[str, tuple]:
    """The SD UNet's parameters (name -> shape) under `prefix`."""
    p = config["model"]["params"]["unet_config"]["params"]
    m, emb = p["model_channels"], 4 * p["model_channels"]
    keys, skips, ch, ds = _encoder(prefix, p, p["context_dim"], zero_convs=False)
    block = 0
    for level, mult in list(enumerate(p["channel_mult"]))[::-1]:
        for i in range(p["num_res_blocks"] + 1):
            keys.update(_resblock(f"{prefix}output_blocks.{block}.0", ch + skips.pop(), m * mult, m * 4))
            ch = m * mult
            layer = 1
            if ds in p["attention_resolutions"]:
                keys.update(_transformer(f"{prefix}output_blocks.{block}.1", ch, p["context_dim"]))
                layer = 2
            if level and i == p["num_res_blocks"]:
                keys.update(_conv(f"{prefix}output_blocks.{block}.{layer}.conv", ch, ch))
                ds //= 2
            block += 1
    keys.update({f"{prefix}out.0.weight": (m,), f"{prefix}out.0.bias": (m,)})
    keys.update(_conv(f"{prefix}out.2", p["out_channels"], m))
    return keys


def random_state_dict(keys: dict[str, tuple], seed: int = 0, scale: float = 0.05):
    """Random tensors with these names and shapes (norm weights near 1)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in keys.items():
        value = torch.randn(shape, generator=generator) * scale
        if len(shape) == 1 and ("norm" in name or "in_layers.0" in name or "out_layers.0" in name or ".out.0" in name):
            value = value + (1.0 if name.endswith("weight") else 0.0)
        state[name] = value
    return state


def _vae_resnet(prefix, c_in, c_out):
    keys = {f"{prefix}.norm1.weight": (c_in,), f"{prefix}.norm1.bias": (c_in,),
            f"{prefix}.norm2.weight": (c_out,), f"{prefix}.norm2.bias": (c_out,)}
    keys.update(_conv(f"{prefix}.conv1", c_out, c_in))
    keys.update(_conv(f"{prefix}.conv2", c_out, c_out))
    if c_in != c_out:
        keys.update(_conv(f"{prefix}.nin_shortcut", c_out, c_in, 1))
    return keys


def _vae_attention(prefix, c):
    keys = {f"{prefix}.norm.weight": (c,), f"{prefix}.norm.bias": (c,)}
    for name in ("q", "k", "v", "proj_out"):
        keys.update(_conv(f"{prefix}.{name}", c, c, 1))
    return keys


def vae_keys(config: dict = CLDM_CONFIG, prefix: str = "first_stage_model.") -> dict[str, tuple]:
    """LDM's AutoencoderKL (Encoder, Decoder, quant convs) parameters under `prefix`."""
    p = config["model"]["params"]["first_stage_config"]["params"]
    d = p["ddconfig"]
    ch, mult, blocks, z, embed = d["ch"], d["ch_mult"], d["num_res_blocks"], d["z_channels"], p["embed_dim"]
    keys = _conv(f"{prefix}encoder.conv_in", ch, d["in_channels"])
    in_mult = (1, *mult)
    for i, m in enumerate(mult):
        block_in = ch * in_mult[i]
        for j in range(blocks):
            keys.update(_vae_resnet(f"{prefix}encoder.down.{i}.block.{j}", block_in, ch * m))
            block_in = ch * m
        if i != len(mult) - 1:
            keys.update(_conv(f"{prefix}encoder.down.{i}.downsample.conv", block_in, block_in))
    top = ch * mult[-1]
    for part in ("encoder", "decoder"):
        keys.update(_vae_resnet(f"{prefix}{part}.mid.block_1", top, top))
        keys.update(_vae_attention(f"{prefix}{part}.mid.attn_1", top))
        keys.update(_vae_resnet(f"{prefix}{part}.mid.block_2", top, top))
    keys.update({f"{prefix}encoder.norm_out.weight": (top,), f"{prefix}encoder.norm_out.bias": (top,)})
    keys.update(_conv(f"{prefix}encoder.conv_out", 2 * z if d["double_z"] else z, top))
    keys.update(_conv(f"{prefix}decoder.conv_in", top, z))
    block_in = top
    for i in reversed(range(len(mult))):
        for j in range(blocks + 1):
            keys.update(_vae_resnet(f"{prefix}decoder.up.{i}.block.{j}", block_in, ch * mult[i]))
            block_in = ch * mult[i]
        if i != 0:
            keys.update(_conv(f"{prefix}decoder.up.{i}.upsample.conv", block_in, block_in))
    keys.update({f"{prefix}decoder.norm_out.weight": (block_in,), f"{prefix}decoder.norm_out.bias": (block_in,)})
    keys.update(_conv(f"{prefix}decoder.conv_out", d["out_ch"], block_in))
    keys.update(_conv(f"{prefix}quant_conv", 2 * embed, 2 * z, 1))
    keys.update(_conv(f"{prefix}post_quant_conv", z, embed, 1))
    return keys


def _levels(state: dict, prefix: str):
    """(model_channels, channel_mult, num_res_blocks, attention_resolutions, context_dim) of an
    LDM UNet encoder read off its input_blocks' shapes."""
    m = int(state[f"{prefix}input_blocks.0.0.weight"].shape[0])
    mult, counts, attention, context = [], [0], set(), None
    block, ds = 1, 1
    while f"{prefix}input_blocks.{block}.0.op.weight" in state or f"{prefix}input_blocks.{block}.0.in_layers.2.weight" in state:
        if f"{prefix}input_blocks.{block}.0.op.weight" in state:
            counts.append(0)
            ds *= 2
        else:
            out = int(state[f"{prefix}input_blocks.{block}.0.in_layers.2.weight"].shape[0])
            if counts[-1] == 0:
                mult.append(out // m)
            counts[-1] += 1
            key = f"{prefix}input_blocks.{block}.1.transformer_blocks.0.attn2.to_k.weight"
            if key in state:
                attention.add(ds)
                context = int(state[key].shape[1])
        block += 1
    if not mult or len(set(counts)) != 1:
        raise ValueError(f"cannot read the UNet levels under {prefix!r}")
    return m, mult, counts[0], sorted(attention, reverse=True), context


def config_from_state_dict(state: dict, num_heads: int = 8, base: dict = CLDM_CONFIG) -> dict:
    """CLDM_CONFIG with every width, depth and level read off the checkpoint's shapes (so an
    SD1.x fine-tune or a smaller test model converts); only the heads are not in the weights."""
    from synfiqa.errors import CheckpointError

    config = copy.deepcopy(base)
    params = config["model"]["params"]
    try:
        for key, prefix in (("unet_config", "model.diffusion_model."), ("control_stage_config", "control_model.")):
            if f"{prefix}input_blocks.0.0.weight" not in state:
                continue
            m, mult, blocks, attention, context = _levels(state, prefix)
            p = params[key]["params"]
            p.update(model_channels=m, channel_mult=mult, num_res_blocks=blocks, attention_resolutions=attention,
                     context_dim=context, num_heads=num_heads,
                     in_channels=int(state[f"{prefix}input_blocks.0.0.weight"].shape[1]))
            if prefix == "control_model.":
                p["hint_channels"] = int(state[f"{prefix}input_hint_block.0.weight"].shape[1])
            else:
                p["out_channels"] = int(state[f"{prefix}out.2.weight"].shape[0])
        if "img_linear.weight" in state:
            params["context_dim"], params["img_linear_dim"] = (int(s) for s in state["img_linear.weight"].shape)
        vae = "first_stage_model."
        if f"{vae}encoder.conv_in.weight" in state:
            d = params["first_stage_config"]["params"]["ddconfig"]
            ch = int(state[f"{vae}encoder.conv_in.weight"].shape[0])
            levels = 1 + max(int(k.split(".")[3]) for k in state if k.startswith(f"{vae}encoder.down."))
            blocks = 1 + max(int(k.split(".")[5]) for k in state if k.startswith(f"{vae}encoder.down.0.block."))
            d.update(ch=ch, num_res_blocks=blocks,
                     ch_mult=[int(state[f"{vae}encoder.down.{i}.block.0.conv1.weight"].shape[0]) // ch for i in range(levels)],
                     in_channels=int(state[f"{vae}encoder.conv_in.weight"].shape[1]),
                     out_ch=int(state[f"{vae}decoder.conv_out.weight"].shape[0]),
                     z_channels=int(state[f"{vae}decoder.conv_in.weight"].shape[1]))
            params["first_stage_config"]["params"]["embed_dim"] = int(state[f"{vae}post_quant_conv.weight"].shape[1])
    except (KeyError, ValueError, IndexError) as error:
        raise CheckpointError(f"cannot read the architecture off the checkpoint: {error}") from None
    return config

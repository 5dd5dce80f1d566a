"""The original CapHuman / MR-FIQA Stage-2 files -> the folder the ``caphuman`` backend loads.

Inputs (MR-FIQA's ``Pretrained-Models/Stage2-Models/``):

* ``Control-Module.pth``: ControlFace in LDM names (``control_model.*``: the ControlNet, its hint
  block, zero convolutions and ``mask_predict``) and the identity projections ``id_linear.*``,
  ``img_linear.*``; perhaps the CLIP vision tower (``control_cond_stage_model.transformer.*``)
  or a whole model;
* ``SDiff-Stage2.safetensors``: the SD1.5 checkpoint (``model.diffusion_model.*`` UNet,
  ``first_stage_model.*`` VAE, ``cond_stage_model.transformer.*`` CLIP text);
* ``clip-vit-large-patch14/``: the CLIP folder (tokenizer, and the text / vision towers that the
  checkpoints do not hold).

The original loads the control file, then the SD file over it (``strict=False`` both times,
so a later key wins and an unknown one is silently ignored); the conversion merges them the
same way but is strict: every key is converted or belongs to a known set of training-only
buffers, and anything else stops it with the leftover names. diffusers' own LDM converters
(``convert_controlnet_checkpoint``, ``convert_ldm_unet_checkpoint``,
``convert_ldm_vae_checkpoint``) do the ControlNet, UNet and VAE; an explicit map does the
rest (mask head, projections, the CLIP towers: transformers 5 names them without the
``text_model.`` / ``vision_model.`` level). Which source key fed which converted tensor is
traced by tensor storage, so a key a converter skipped is caught; every converted module is
then loaded strictly (a missing or mis-shaped parameter is named).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from synfiqa.errors import CheckpointError

from .ldm_layout import CLDM_CONFIG

CONTROL_PREFIX = "control_model."
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIXES = ("cond_stage_model.transformer.text_model.", "cond_stage_model.transformer.")
VISION_PREFIXES = ("control_cond_stage_model.transformer.vision_model.", "control_cond_stage_model.transformer.")
EXTRA = {"control_model.mask_predict.0.weight": "mask_head.0.weight",
         "control_model.mask_predict.0.bias": "mask_head.0.bias",
         "id_linear.weight": "id_linear.weight", "id_linear.bias": "id_linear.bias",
         "img_linear.weight": "img_linear.weight", "img_linear.bias": "img_linear.bias"}
#: LatentDiffusion's registered schedule buffers (recomputed by the scheduler; betas is checked)
SCHEDULE_BUFFERS = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                    "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
                    "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
                    "posterior_mean_coef1", "posterior_mean_coef2", "logvar")
IGNORED = re.compile(r"(%s)|.*\.position_ids|model_ema\.(decay|num_updates)" % "|".join(SCHEDULE_BUFFERS))


@dataclass
class Converted:
    """The converted state dicts by component, and where each converted tensor came from."""

    controlnet: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    unet: dict = field(default_factory=dict)
    vae: dict = field(default_factory=dict)
    text: dict = field(default_factory=dict)
    vision: dict = field(default_factory=dict)
    origin: dict = field(default_factory=dict)       # (component, key) -> (original key, its shape)
    ignored: list = field(default_factory=list)


def _storage(tensor: torch.Tensor):
    return tensor.untyped_storage().data_ptr() if tensor.numel() else ("empty", id(tensor))


def _trace(component: str, out: dict, source: dict, converted: Converted) -> set[str]:
    """The source keys whose storage some output tensor views; records the origin of each output."""
    by_storage = {}
    for key, value in source.items():
        by_storage.setdefault(_storage(value), []).append(key)
    used = set()
    for key, value in out.items():
        if value is None:
            raise CheckpointError(f"the {component} converter found no tensor for {key}")
        owners = by_storage.get(_storage(value), [])
        if owners:
            converted.origin[(component, key)] = (owners[0], tuple(source[owners[0]].shape))
            used.update(owners)
    return used


def _strip(state: dict, prefixes) -> dict:
    out = {}
    for key, value in state.items():
        for prefix in prefixes:
            if key.startswith(prefix):
                out[key[len(prefix):]] = value
                break
    return out


def check_schedule(betas: torch.Tensor, config: dict = CLDM_CONFIG) -> None:
    params = config["model"]["params"]
    expected = torch.linspace(math.sqrt(params["linear_start"]), math.sqrt(params["linear_end"]),
                              params["timesteps"], dtype=torch.float64) ** 2
    if betas.shape != expected.shape or not torch.allclose(betas.double(), expected, rtol=1e-4, atol=1e-7):
        raise CheckpointError("the checkpoint's betas are not CapHuman's schedule (scaled linear 0.00085..0.012, "
                              "1000 steps): a different model")


def convert_state_dicts(control: dict, sd: dict | None = None, config: dict = CLDM_CONFIG) -> Converted:
    """The merged original state dicts (the SD file over the control file, as the original
    loads them) -> :class:`Converted`. Every key is converted or a known training-only buffer;
    the leftovers are a CheckpointError naming them."""
    from diffusers.loaders.single_file_utils import (convert_controlnet_checkpoint, convert_ldm_unet_checkpoint,
                                                     convert_ldm_vae_checkpoint)

    merged = {**control, **(sd or {})}
    converted = Converted()
    used: set[str] = set()
    if "betas" in merged:
        check_schedule(merged["betas"], config)

    controlnet_source = {k: v for k, v in merged.items() if k.startswith(CONTROL_PREFIX) and k not in EXTRA}
    if controlnet_source:
        cn_config = controlnet_config(config, merged)
        converted.controlnet = convert_controlnet_checkpoint(controlnet_source, cn_config)
        used |= _trace("controlnet", converted.controlnet, controlnet_source, converted)
    for original, new in EXTRA.items():
        if original in merged:
            converted.extra[new] = merged[original]
            converted.origin[("extra", new)] = (original, tuple(merged[original].shape))
            used.add(original)
    unet_source = {k: v for k, v in merged.items() if k.startswith(UNET_PREFIX)}
    if unet_source:
        converted.unet = convert_ldm_unet_checkpoint(unet_source, unet_config(config, merged))
        used |= _trace("unet", converted.unet, unet_source, converted)
    vae_source = {k: v for k, v in merged.items() if k.startswith(VAE_PREFIX)}
    if vae_source:
        converted.vae = convert_ldm_vae_checkpoint(vae_source, vae_config(config, merged))
        used |= _trace("vae", converted.vae, vae_source, converted)
    for component, prefixes in (("text", TEXT_PREFIXES), ("vision", VISION_PREFIXES)):
        part = {k: v for k, v in merged.items() if k.startswith(prefixes[1])}
        renamed = _strip(part, prefixes)
        kept = {k: v for k, v in renamed.items() if not k.endswith("position_ids")}
        setattr(converted, component, kept)
        used |= _trace(component, kept, part, converted)
    converted.ignored = sorted(k for k in merged if k not in used and IGNORED.fullmatch(k))
    leftovers = sorted(k for k in merged if k not in used and k not in converted.ignored)
    if leftovers:
        from synfiqa.checkpoints import listing

        raise CheckpointError(f"{len(leftovers)} key(s) of the original checkpoints were not converted: "
                              f"{listing(leftovers)}")
    return converted


def controlnet_config(config: dict, checkpoint: dict | None = None) -> dict:
    """The diffusers ControlNetModel config of ControlFace: the UNet config of its own params
    (diffusers' create_controlnet_diffusers_config_from_ldm does the same, but 0.42.1 calls the
    UNet helper without its checkpoint argument), the 9-channel 16/32/96/256 hint block."""
    import copy

    from diffusers.loaders.single_file_utils import create_unet_diffusers_config_from_ldm

    own = copy.deepcopy(config)
    params = dict(own["model"]["params"]["control_stage_config"]["params"])
    params.setdefault("out_channels", params["in_channels"])
    own["model"]["params"]["unet_config"] = {"params": params}
    unet = create_unet_diffusers_config_from_ldm(own, {})
    keys = ("in_channels", "down_block_types", "block_out_channels", "layers_per_block", "cross_attention_dim",
            "attention_head_dim", "use_linear_projection", "class_embed_type", "addition_embed_type",
            "addition_time_embed_dim", "projection_class_embeddings_input_dim", "transformer_layers_per_block")
    out = {key: unet[key] for key in keys if key in unet}
    out.update(conditioning_channels=params["hint_channels"], conditioning_embedding_out_channels=(16, 32, 96, 256))
    return out


def unet_config(config: dict, checkpoint: dict | None = None) -> dict:
    from diffusers.loaders.single_file_utils import create_unet_diffusers_config_from_ldm

    return create_unet_diffusers_config_from_ldm(config, {})


def vae_config(config: dict, checkpoint: dict | None = None) -> dict:
    from diffusers.loaders.single_file_utils import create_vae_diffusers_config_from_ldm

    return create_vae_diffusers_config_from_ldm(config, {}, scaling_factor=config["model"]["params"]["scale_factor"])


# ------------------------------------------------------------------ modules

def build_modules(converted: Converted, config: dict, clip_dir: Path | None = None, source: str = "checkpoint"):
    """(unet, ControlFace, vae, text encoder, tokenizer, image encoder) with the converted
    weights, each loaded strictly; the CLIP towers the checkpoints lack come from `clip_dir`."""
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, CLIPVisionConfig, CLIPVisionModel

    from synfiqa.checkpoints import load_state_dict_strictly

    from .network import ControlFace

    params = config["model"]["params"]
    missing = [name for name, part in (("ControlNet (control_model.*)", converted.controlnet),
                                       ("UNet (model.diffusion_model.*)", converted.unet),
                                       ("VAE (first_stage_model.*)", converted.vae)) if not part]
    missing += [k for k in EXTRA if EXTRA[k] not in converted.extra]
    if missing:
        raise CheckpointError(f"{source}: the original files lack {', '.join(missing)}")
    controlnet = ControlNetModel(**controlnet_config(config, {}))
    load_state_dict_strictly(controlnet, converted.controlnet, source, description="the ControlNet (ControlFace)")
    face = ControlFace(controlnet, id_dim=converted.extra["id_linear.weight"].shape[1],
                       image_token_dim=params["img_linear_dim"])
    load_state_dict_strictly(face, {**{f"controlnet.{k}": v for k, v in controlnet.state_dict().items()},
                                    **converted.extra}, source, description="ControlFace's mask head and projections")
    unet = UNet2DConditionModel(**unet_config(config, {}))
    load_state_dict_strictly(unet, converted.unet, source, description="the SD UNet")
    vae = AutoencoderKL(**vae_config(config, {}))
    load_state_dict_strictly(vae, converted.vae, source, description="the VAE")

    def tower(kind, model_cls, config_cls, weights):
        if clip_dir is not None:
            try:
                model = model_cls.from_pretrained(str(clip_dir), local_files_only=True)
            except (OSError, ValueError) as error:
                raise CheckpointError(f"{clip_dir}: cannot load the CLIP {kind} tower: "
                                      f"{str(error).splitlines()[0] if str(error) else type(error).__name__}") from None
        elif weights:
            raise CheckpointError(f"{source}: the CLIP {kind} weights need their config: give the CLIP folder")
        else:
            raise CheckpointError(f"no CLIP {kind} tower: neither the checkpoints nor a CLIP folder hold one")
        if weights:
            load_state_dict_strictly(model, weights, source, description=f"the CLIP {kind} tower")
        return model.eval()

    text = tower("text", CLIPTextModel, CLIPTextConfig, converted.text)
    vision = tower("vision", CLIPVisionModel, CLIPVisionConfig, converted.vision)
    if clip_dir is None:
        raise CheckpointError("the CLIP tokenizer comes from the CLIP folder: give it")
    try:
        tokenizer = CLIPTokenizer.from_pretrained(str(clip_dir), local_files_only=True)
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{clip_dir}: cannot load the CLIP tokenizer ({type(error).__name__})") from None
    if vision.config.hidden_size != params["img_linear_dim"]:
        raise CheckpointError(f"the CLIP vision tower is {vision.config.hidden_size} wide, img_linear reads "
                              f"{params['img_linear_dim']}")
    return unet.eval(), face.eval(), vae.eval(), text, tokenizer, vision


def image_processor(clip_dir: Path | None) -> dict:
    """CLIPProcessor's image settings from the folder's preprocessor_config.json (CLIP's defaults otherwise)."""
    import json

    from .network import CLIP_IMAGE_PROCESSOR

    settings = dict(CLIP_IMAGE_PROCESSOR)
    path = Path(clip_dir) / "preprocessor_config.json" if clip_dir else None
    if path is not None and path.is_file():
        data = json.loads(path.read_text())
        crop = data.get("crop_size", settings["size"])
        settings["size"] = int(crop.get("height", settings["size"]) if isinstance(crop, dict) else crop)
        settings["mean"] = list(data.get("image_mean", settings["mean"]))
        settings["std"] = list(data.get("image_std", settings["std"]))
    return settings


def read_original(path: Path, asset: str | None = None) -> dict:
    """A .pth / .ckpt (torch's weights-only reader) or .safetensors file as a flat state dict."""
    from synfiqa.checkpoints import find_state_dict, read_payload

    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        if not path.is_file():
            raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
        try:
            return load_file(str(path))
        except Exception as error:   # safetensors' own error types
            raise CheckpointError(f"{path}: not a readable safetensors file ({type(error).__name__}: "
                                  f"{str(error).splitlines()[0][:120] if str(error) else ''})") from None
    return find_state_dict(read_payload(path, asset), path, wrappers=("state_dict", "model"))


def convert_files(control: Path, sd: Path, clip_dir: Path, out: Path, num_heads: int = 8) -> Path:
    """The three original inputs -> the converted folder (network.save_networks); the
    architecture is read off the checkpoints' shapes (``ldm_layout.config_from_state_dict``)."""
    from .ldm_layout import config_from_state_dict
    from .network import SCHEDULER_CONFIG, save_networks

    control_state = read_original(control, "caphuman-control-module")
    sd_state = read_original(sd, "caphuman-sd")
    config = config_from_state_dict({**control_state, **sd_state}, num_heads)
    converted = convert_state_dicts(control_state, sd_state, config)
    unet, face, vae, text, tokenizer, vision = build_modules(converted, config, clip_dir, f"{control} + {sd}")
    return save_networks(out, unet, face, vae, text, tokenizer, vision, dict(SCHEDULER_CONFIG),
                         config["model"]["params"]["scale_factor"], image_processor(clip_dir),
                         source={"control": Path(control).name, "sd": Path(sd).name, "clip": Path(clip_dir).name,
                                 "ignored_keys": len(converted.ignored)})


def back_to_original(converted: Converted, modules: dict) -> dict:
    """The inverse of the conversion for the tensors it traced: {original key: tensor} from the
    converted modules' state dicts (``modules``: component -> state dict), reshaped to the
    original's shape when a converter viewed it differently (VAE attention 1x1 convs)."""
    out = {}
    for (component, key), (original, shape) in converted.origin.items():
        tensor = modules[component][key]
        out[original] = tensor.reshape(shape) if tuple(tensor.shape) != shape else tensor
    return out

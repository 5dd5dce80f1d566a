"""CapHuman's network ("ControlFace", MR-FIQA's Stage 2) in diffusers modules, and its sampler.

The pieces (ALGORITHMS.md section 2, STAGE2.md sections 1.4 and 2.3):

* ``unet``: the SD1.5 ``UNet2DConditionModel``; it cross-attends to the CLIP text of the prompt.
* :class:`ControlFace`: a ``ControlNetModel(conditioning_channels=9)`` whose hint block is
  9 -> 16 -> 16 -> 32 (stride 2) -> 32 -> 96 (stride 2) -> 96 -> 256 (stride 2) -> 320 (the
  standard one), and which cross-attends, not to the text, but to 258 identity tokens:
  ``img_linear`` (1024 -> 768) of the 257 CLIP ViT-L/14 vision tokens of the face-parsed
  identity photo, then ``id_linear`` (512 -> 768) of its FaceNet embedding (images first).
  Its ``mask_head`` (``Conv2d(320 -> 1, 3x3) + sigmoid``) reads the hint embedding (the hint
  block's output, before it is added to ``conv_in``): every control residual is multiplied by
  ``resize(mask, residual size) > 0.5`` (bilinear with antialias, as torchvision's
  ``F.resize`` on tensors in the original's ``ControlledUnetModel``).
* the sampler of ``ddim_hacked``: DDIM, ``eta = 0``, 20 steps (timesteps 951, 901, ..., 1),
  classifier-free guidance ``e = e_uncond + s (e_cond - e_uncond)`` with ``s = 7``; the
  unconditional half differs from the conditional one only in the text (the negative prompt),
  so the ControlNet, which never sees the text, gives the same residuals to both halves: it is
  evaluated once per step (``reuse_control=True``, the default) and the mask once per sample.

Latents stay float32 between steps (the networks may run in float16); each sample's starting
noise comes from its own generator, so a sample does not depend on the batch it runs in.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

#: the schedule of CapHuman's cldm.yaml (LDM "linear" = diffusers "scaled_linear"), DDIM as ddim_hacked
SCHEDULER_CONFIG = {
    "_class_name": "DDIMScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "prediction_type": "epsilon",
}
SCALING_FACTOR = 0.18215        # SD1.5's latent scale (cldm.yaml scale_factor)
STEPS, GUIDANCE, ETA = 20, 7.0, 0.0
MASK_THRESHOLD = 0.5
ID_DIM, IMAGE_TOKEN_DIM = 512, 1024


class ControlFace(nn.Module):
    """The control branch: the ControlNet, its mask head and the two identity projections."""

    def __init__(self, controlnet, id_dim: int = ID_DIM, image_token_dim: int = IMAGE_TOKEN_DIM):
        super().__init__()
        self.controlnet = controlnet
        channels = int(controlnet.config.block_out_channels[0])
        context = int(controlnet.config.cross_attention_dim)
        self.mask_head = nn.Sequential(nn.Conv2d(channels, 1, 3, padding=1), nn.Sigmoid())
        self.id_linear = nn.Linear(id_dim, context)
        self.img_linear = nn.Linear(image_token_dim, context)

    # the parts that are not the diffusers ControlNet, saved next to it
    EXTRA_PREFIXES = ("mask_head.", "id_linear.", "img_linear.")

    def extra_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if k.startswith(self.EXTRA_PREFIXES)}

    def extra_config(self) -> dict:
        return {"id_dim": self.id_linear.in_features, "image_token_dim": self.img_linear.in_features}

    @property
    def dtype(self):
        return self.id_linear.weight.dtype

    def context(self, image_tokens: torch.Tensor, id_embedding: torch.Tensor) -> torch.Tensor:
        """The ControlNet's cross-attention context: (N, 257 + 1, 768) = cat(img_linear(CLIP
        tokens (N, 257, 1024)), id_linear(FaceNet (N, 512) or (N, 1, 512))), images first."""
        if id_embedding.dim() == 2:
            id_embedding = id_embedding[:, None]
        dtype = self.dtype
        return torch.cat([self.img_linear(image_tokens.to(dtype)), self.id_linear(id_embedding.to(dtype))], dim=1)

    def mask(self, hint: torch.Tensor) -> torch.Tensor:
        """The soft mask (N, 1, h, w) at the latent size, from the hint embedding."""
        embedding = self.controlnet.controlnet_cond_embedding(hint.to(self.dtype))
        return self.mask_head(embedding)


def resize_mask(mask: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """The hard 0/1 gate of a residual of spatial `size`: the soft mask resized as torchvision's
    ``F.resize`` resizes a tensor (bilinear, antialias, align_corners False), then > 0.5."""
    mask = mask.float()
    if tuple(mask.shape[-2:]) != tuple(size):
        mask = F.interpolate(mask, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
    return (mask > MASK_THRESHOLD).float()


def gate(residuals: Sequence[torch.Tensor], mask: torch.Tensor) -> list[torch.Tensor]:
    """Each residual times the hard mask at its size (ControlledUnetModel.forward)."""
    gates: dict[tuple, torch.Tensor] = {}
    out = []
    for residual in residuals:
        size = tuple(residual.shape[-2:])
        if size not in gates:
            gates[size] = resize_mask(mask, size).to(residual.dtype)
        out.append(residual * gates[size])
    return out


@dataclass
class Networks:
    """Everything the sampler runs (already on one device and dtype)."""

    unet: nn.Module
    controlface: ControlFace
    vae: nn.Module
    scheduler_config: dict
    scaling_factor: float = SCALING_FACTOR

    @property
    def dtype(self):
        return next(self.unet.parameters()).dtype

    @property
    def device(self):
        return next(self.unet.parameters()).device

    def scheduler(self):
        from diffusers import DDIMScheduler

        return DDIMScheduler.from_config(self.scheduler_config)


def control_residuals(controlface: ControlFace, latents, timestep, context, hint, mask, scale: float = 1.0):
    """The gated control residuals (down list, mid) of one evaluation of the ControlNet."""
    down, mid = controlface.controlnet(latents, timestep, encoder_hidden_states=context, controlnet_cond=hint,
                                       conditioning_scale=scale, return_dict=False)
    gated = gate([*down, mid], mask)
    return gated[:-1], gated[-1]


@torch.no_grad()
def denoise(networks: Networks, noise: torch.Tensor, hint: torch.Tensor, context: torch.Tensor,
            text: torch.Tensor, negative: torch.Tensor, steps: int = STEPS, guidance: float = GUIDANCE,
            reuse_control: bool = True, control_scale: float = 1.0, callback=None) -> torch.Tensor:
    """DDIM (eta 0) with classifier-free guidance from `noise` (N, 4, h, w) to the final latents
    (float32). `hint` (N, 9, 8h, 8w), `context` (N, 258, C) the ControlNet's identity tokens,
    `text` / `negative` (N, 77, C) the UNet's conditional and unconditional text. With
    `reuse_control` the ControlNet runs once per step on the N samples and its residuals serve
    both halves; without, it runs on both halves (2N), as the original does."""
    dtype, device = networks.dtype, networks.device
    scheduler = networks.scheduler()
    scheduler.set_timesteps(steps, device=device)
    latents = noise.to(device=device, dtype=torch.float32)
    hint = hint.to(device=device, dtype=dtype)
    context = context.to(device=device, dtype=dtype)
    text = text.to(device=device, dtype=dtype)
    negative = negative.to(device=device, dtype=dtype)
    mask = networks.controlface.mask(hint)                     # once per sample
    guided = guidance != 1.0
    words = torch.cat([text, negative]) if guided else text
    for i, t in enumerate(scheduler.timesteps):
        x = latents.to(dtype)
        if reuse_control or not guided:
            down, mid = control_residuals(networks.controlface, x, t, context, hint, mask, control_scale)
            if guided:
                down, mid = [torch.cat([r, r]) for r in down], torch.cat([mid, mid])
        else:
            down, mid = control_residuals(networks.controlface, torch.cat([x, x]), t, torch.cat([context, context]),
                                          torch.cat([hint, hint]), torch.cat([mask, mask]), control_scale)
        x_in = torch.cat([x, x]) if guided else x
        eps = networks.unet(x_in, t, encoder_hidden_states=words, down_block_additional_residuals=down,
                            mid_block_additional_residual=mid, return_dict=False)[0].float()
        if guided:
            cond, uncond = eps.chunk(2)
            eps = uncond + guidance * (cond - uncond)
        latents = scheduler.step(eps, t, latents, eta=ETA).prev_sample
        if callback is not None:
            callback(i, t, latents)
    return latents


@torch.no_grad()
def decode(networks: Networks, latents: torch.Tensor) -> torch.Tensor:
    """(N, H, W, 3) uint8: the VAE's image, ``x * 127.5 + 127.5`` clipped and truncated to
    uint8 as the original's ``.clip(0, 255).astype(np.uint8)``."""
    image = networks.vae.decode((latents / networks.scaling_factor).to(networks.dtype)).sample.float()
    return (image * 127.5 + 127.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu()


def initial_noise(generators: Sequence[torch.Generator], shape: Sequence[int]) -> torch.Tensor:
    """(N, *shape) float32 standard normal on the CPU, one generator per sample (its own seed)."""
    return torch.stack([torch.randn(tuple(shape), generator=g, dtype=torch.float32) for g in generators])


# ------------------------------------------------------------------ text

class TextEncoder:
    """CLIP text ``last_hidden_state`` of a prompt padded to 77 tokens (FrozenCLIPTextEmbedder);
    each distinct prompt is encoded once per call."""

    def __init__(self, tokenizer, model, max_length: int = 77):
        self.tokenizer, self.model, self.max_length = tokenizer, model, max_length

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str]) -> torch.Tensor:
        prompts = list(prompts)
        distinct = list(dict.fromkeys(prompts))
        tokens = self.tokenizer(distinct, truncation=True, max_length=self.max_length, padding="max_length",
                                return_tensors="pt")
        device = next(self.model.parameters()).device
        hidden = self.model(input_ids=tokens["input_ids"].to(device)).last_hidden_state
        return hidden[[distinct.index(p) for p in prompts]]


# ------------------------------------------------------------------ the folder

MODEL_FILE = "caphuman.json"
EXTRA_FILE = "controlface.safetensors"
FORMAT = "synfiqa-caphuman"


def save_networks(folder: Path, unet, controlface: ControlFace, vae, text_encoder, tokenizer, image_encoder,
                  scheduler_config: dict | None = None, scaling_factor: float = SCALING_FACTOR,
                  image_processor: dict | None = None, source: dict | None = None) -> Path:
    """Writes the converted model folder: unet/, controlnet/, vae/ (diffusers), text_encoder/,
    tokenizer/, image_encoder/ (transformers), controlface.safetensors (mask head, id_linear,
    img_linear), scheduler/scheduler_config.json and caphuman.json (last: a folder without it
    is an unfinished conversion)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    controlface.controlnet.save_pretrained(folder / "controlnet", safe_serialization=True)
    vae.save_pretrained(folder / "vae", safe_serialization=True)
    text_encoder.save_pretrained(folder / "text_encoder")
    tokenizer.save_pretrained(folder / "tokenizer")
    image_encoder.save_pretrained(folder / "image_encoder")
    save_file({k: v.contiguous() for k, v in controlface.extra_state_dict().items()}, str(folder / EXTRA_FILE))
    (folder / "scheduler").mkdir(exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler_config or SCHEDULER_CONFIG, indent=2))
    meta = {"format": FORMAT, "version": 1, "scaling_factor": scaling_factor,
            "controlface": controlface.extra_config(),
            "image_processor": image_processor or CLIP_IMAGE_PROCESSOR, "source": source or {}}
    (folder / MODEL_FILE).write_text(json.dumps(meta, indent=2))
    return folder


#: CLIPProcessor's image side for openai/clip-vit-large-patch14
CLIP_IMAGE_PROCESSOR = {"size": 224, "mean": [0.48145466, 0.4578275, 0.40821073],
                        "std": [0.26862954, 0.26130258, 0.27577711]}


def read_meta(folder: Path) -> dict:
    from synfiqa.errors import CheckpointError

    path = Path(folder) / MODEL_FILE
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path}: not a converted CapHuman folder ({type(error).__name__}); "
                              f"make one with `synfiqa convert caphuman`") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: format {meta.get('format')!r}, not {FORMAT!r}")
    return meta


def load_networks(folder: Path, device="cpu", dtype=torch.float32):
    """(Networks, TextEncoder, image encoder (CLIPVisionModel), meta) of a converted folder."""
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from safetensors.torch import load_file
    from transformers import CLIPTextModel, CLIPTokenizer, CLIPVisionModel

    from synfiqa.checkpoints import load_state_dict_strictly
    from synfiqa.errors import CheckpointError

    folder = Path(folder)
    meta = read_meta(folder)

    def load(kind, cls, sub, **options):
        try:
            return cls.from_pretrained(str(folder / sub), local_files_only=True, **options)
        except (OSError, ValueError, RuntimeError, KeyError) as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise CheckpointError(f"{folder / sub}: cannot load the {kind}: {first}") from None

    quiet = {"low_cpu_mem_usage": False}
    unet = load("UNet", UNet2DConditionModel, "unet", **quiet)
    controlnet = load("ControlNet", ControlNetModel, "controlnet", **quiet)
    vae = load("VAE", AutoencoderKL, "vae", **quiet)
    text_model = load("text encoder", CLIPTextModel, "text_encoder")
    image_encoder = load("image encoder", CLIPVisionModel, "image_encoder")
    tokenizer = load("tokenizer", CLIPTokenizer, "tokenizer")
    controlface = ControlFace(controlnet, **meta.get("controlface", {}))
    try:
        extra = load_file(str(folder / EXTRA_FILE))
    except (OSError, Exception) as error:   # safetensors raises its own error type
        raise CheckpointError(f"{folder / EXTRA_FILE}: cannot be read ({type(error).__name__})") from None
    missing = [k for k in controlface.extra_state_dict() if k not in extra]
    unexpected = [k for k in extra if k not in controlface.extra_state_dict()]
    if missing or unexpected:
        raise CheckpointError(f"{folder / EXTRA_FILE}: missing {missing or 'nothing'}, unexpected {unexpected or 'nothing'}")
    load_state_dict_strictly(controlface, {**{f"controlnet.{k}": v for k, v in controlnet.state_dict().items()},
                                           **extra}, str(folder / EXTRA_FILE))
    scheduler_config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    for module in (unet, controlface, vae, text_model, image_encoder):
        module.to(device=device, dtype=dtype).eval()
    networks = Networks(unet, controlface, vae, scheduler_config, float(meta.get("scaling_factor", SCALING_FACTOR)))
    return networks, TextEncoder(tokenizer, text_model), image_encoder, meta

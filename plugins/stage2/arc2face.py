"""The ``arc2face`` Stage-2 backend: Arc2Face (an SD1.5 UNet fine-tuned on ArcFace identities)
with its FLAME-normal ControlNet (docs/stage2_diffusion.md, STAGE2.md 2.1, 2.2, 2.4).

* identity: the ArcFace embedding (the ``arcface-onnx`` model plugin) of the identity's first
  photo, aligned to 112 from the core's detected landmarks; L2-normalised, zero-padded to the
  text encoder's width and written over the "id" token of ``"photo of a id person"`` by a
  forward hook on ``text_encoder.get_input_embeddings()`` (the published wrapper does not import
  under transformers 5); the causal CLIP text encoder then gives the prompt states;
* per plan entry: ``Hints.arc2face_normal`` of the posed FLAME head (plugins/headmodel) for the
  ControlNet, and the starting noise from the generator of (run seed, identity, index,
  "stage2/<role>");
* the loop: DDIM (eta 0) with classifier-free guidance against the empty prompt, guidance 3.0
  and 25 steps (Arc2Face's demo values; the demo's scheduler is DPM-Solver, ours DDIM, the
  sampler of the caphuman backend). The plan's text prompts are not used: Arc2Face is
  conditioned on the identity only; scene, occlusion and lighting come from the degradation chain.

Batches have a fixed shape (a short batch is padded with copies of its first entry), so an image
is bitwise the same whatever batch it was made in (``stores_images``). The FLAME shape is the
mean head (zero shape codes): no DECA fit here.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from synfiqa import hookimpl
from synfiqa.errors import ConfigError
from synfiqa.seeding import torch_generator
from synfiqa.synthesis import Rendered

MODEL_ASSET = "arc2face"
ID_PROMPT = "photo of a id person"
ID_WORD = "id"
STEPS, GUIDANCE = 25, 3.0
LATENT_FACTOR = 8
SCALING_FACTOR = 0.18215


def id_vector(embedding: torch.Tensor, width: int) -> torch.Tensor:
    """(N, 512) ArcFace embeddings -> (N, width): L2-normalised, zero-padded."""
    embedding = torch.nn.functional.normalize(embedding.float(), dim=-1)
    return torch.nn.functional.pad(embedding, (0, width - embedding.shape[-1]))


class IdTokenHook:
    """A forward hook on the text encoder's token embedding: the output rows at the id-token
    positions become the given vectors (one per batch row). Set ``vectors`` before each call."""

    def __init__(self, text_encoder, id_token: int):
        self.id_token, self.vectors, self._input = id_token, None, None
        module = text_encoder.get_input_embeddings()
        self._handles = [module.register_forward_pre_hook(self._remember), module.register_forward_hook(self._replace)]

    def _remember(self, module, args):
        self._input = args[0]

    def _replace(self, module, args, output):
        if self.vectors is None:
            return output
        where = self._input == self.id_token                    # (N, L)
        output = output.clone()
        rows = self.vectors.to(output.dtype).to(output.device)[:, None, :].expand_as(output)
        return torch.where(where[..., None], rows, output)

    def remove(self):
        for handle in self._handles:
            handle.remove()


@torch.no_grad()
def encode_identity(tokenizer, text_encoder, hook: IdTokenHook, embeddings: torch.Tensor,
                    prompt: str = ID_PROMPT) -> torch.Tensor:
    """(N, 512) ArcFace embeddings -> (N, 77, width) prompt states with the id token replaced."""
    ids = tokenizer([prompt] * len(embeddings), truncation=True, padding="max_length",
                    max_length=text_encoder.config.max_position_embeddings, return_tensors="pt")["input_ids"]
    width = text_encoder.get_input_embeddings().weight.shape[1]
    device = next(text_encoder.parameters()).device
    hook.vectors = id_vector(embeddings, width).to(device)
    try:
        return text_encoder(input_ids=ids.to(device)).last_hidden_state
    finally:
        hook.vectors = None


@torch.no_grad()
def denoise(unet, controlnet, scheduler, noise: torch.Tensor, hint: torch.Tensor, text: torch.Tensor,
            negative: torch.Tensor, steps: int = STEPS, guidance: float = GUIDANCE) -> torch.Tensor:
    """DDIM (eta 0) + CFG from `noise` (N, 4, h, w) to the final latents (float32). The
    ControlNet on `hint` (N, 3, 8h, 8w, in [0, 1]) runs on both halves, each with its own text
    (the identity prompt, the empty prompt), as diffusers' StableDiffusionControlNetPipeline does."""
    dtype, device = unet.dtype, unet.device
    scheduler.set_timesteps(steps, device=device)
    latents = noise.to(device=device, dtype=torch.float32)
    guided = guidance != 1.0
    words = (torch.cat([text, negative]) if guided else text).to(device, dtype)
    hint_in = (torch.cat([hint, hint]) if guided else hint).to(device, dtype)
    for t in scheduler.timesteps:
        x = latents.to(dtype)
        x_in = torch.cat([x, x]) if guided else x
        down, mid = controlnet(x_in, t, encoder_hidden_states=words, controlnet_cond=hint_in, return_dict=False)
        eps = unet(x_in, t, encoder_hidden_states=words, down_block_additional_residuals=down,
                   mid_block_additional_residual=mid, return_dict=False)[0].float()
        if guided:
            cond, uncond = eps.chunk(2)
            eps = uncond + guidance * (cond - uncond)
        latents = scheduler.step(eps, t, latents, eta=0.0).prev_sample
    return latents


def load_folder(folder: Path, device, dtype):
    """The Arc2Face folder: arc2face/ (UNet), controlnet/, encoder/ (CLIP text), vae/, tokenizer/,
    scheduler/ (SD1.5's DDIM configuration)."""
    from diffusers import AutoencoderKL, ControlNetModel, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    unet = UNet2DConditionModel.from_pretrained(folder / "arc2face").to(device, dtype).eval()
    controlnet = ControlNetModel.from_pretrained(folder / "controlnet").to(device, dtype).eval()
    vae = AutoencoderKL.from_pretrained(folder / "vae").to(device, dtype).eval()
    encoder = CLIPTextModel.from_pretrained(folder / "encoder").to(device).eval()
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    scheduler = DDIMScheduler.from_pretrained(folder / "scheduler")
    return unet, controlnet, vae, encoder, tokenizer, scheduler


class Arc2FaceBackend:
    """Arc2Face (SD1.5 fine-tuned on ArcFace identities) + its FLAME-normal ControlNet on the plan's poses"""

    stores_images = True

    def __init__(self, model: str = "", arcface: str = "", flame: str = "", landmarks: str = "",
                 size: int = 512, steps: int = STEPS, guidance: float = GUIDANCE, batch_size: int = 8,
                 fp16: bool = True, device: str = "auto"):
        from synfiqa.models import resolve_device
        from synfiqa_plugins.headmodel import Flame, load_generic_model, load_landmark_embedding
        from synfiqa_plugins.stage2.caphuman.assets import locate_all

        if not isinstance(size, int) or size < 64 or size % 64:
            raise ConfigError(f"arc2face: size must be a multiple of 64 (>= 64), got {size!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"arc2face: batch_size must be a positive integer, got {batch_size!r}")
        files = locate_all({"model": (MODEL_ASSET, model), "arcface": ("arcface-onnx", arcface),
                            "flame": ("flame-generic-model", flame),
                            "landmarks": ("flame-landmark-embedding", landmarks)})
        self.device = torch.device(resolve_device(device))
        self.dtype = torch.float16 if (fp16 and self.device.type == "cuda") else torch.float32
        folder = files["model"].parent.parent
        self.unet, self.controlnet, self.vae, self.encoder, self.tokenizer, self.scheduler = \
            load_folder(folder, self.device, self.dtype)
        self.hook = IdTokenHook(self.encoder, self.tokenizer.convert_tokens_to_ids(ID_WORD + "</w>"))
        from synfiqa_plugins.models.arcface_onnx import ArcFaceONNXEmbedder

        self.arcface = ArcFaceONNXEmbedder(str(files["arcface"]), device="cpu")
        model_dict = load_generic_model(files["flame"])
        self.flame = Flame(model_dict, load_landmark_embedding(files["landmarks"]))
        self.size, self.steps, self.guidance, self.batch_size = size, int(steps), float(guidance), batch_size
        with torch.no_grad():
            ids = self.tokenizer([""], padding="max_length", max_length=self.encoder.config.max_position_embeddings,
                                 return_tensors="pt")["input_ids"]
            self.negative = self.encoder(input_ids=ids.to(self.device)).last_hidden_state[0]

    @torch.no_grad()
    def identity_state(self, photo) -> torch.Tensor:
        """(77, width): the id prompt's states for the photo's ArcFace embedding."""
        from synfiqa.align import align_face

        crop, _ = align_face(photo.image, np.asarray(photo.face.landmarks))
        embedding = self.arcface.embed(torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1)[None])
        return encode_identity(self.tokenizer, self.encoder, self.hook, embedding)[0]

    def render(self, identity, plan, context):
        from synfiqa_plugins.headmodel import render_hints_batch
        from synfiqa_plugins.stage2.caphuman.network import initial_noise

        specs = list(plan)
        if not specs:
            return
        photo = identity.photos[0]
        text = self.identity_state(photo)
        seed = context.config["run"]["seed"]
        latent = self.size // LATENT_FACTOR
        shape = torch.zeros(100)
        for start in range(0, len(specs), self.batch_size):
            part = specs[start:start + self.batch_size]
            padded = part + [part[0]] * (self.batch_size - len(part))
            hints = render_hints_batch(self.flame, None, shape, padded, size=self.size)   # normals only
            hint = torch.stack([h.arc2face_normal for h in hints])
            noise = initial_noise([torch_generator(seed, identity.name, s.index, f"stage2/{s.role}") for s in padded],
                                  (4, latent, latent))
            n = len(padded)
            latents = denoise(self.unet, self.controlnet, self.scheduler, noise, hint, text.expand(n, -1, -1),
                              self.negative.expand(n, -1, -1), self.steps, self.guidance)
            with torch.no_grad():
                image = self.vae.decode((latents / SCALING_FACTOR).to(self.dtype)).sample.float()
            images = (image * 127.5 + 127.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
            for spec, image in zip(part, images):
                yield Rendered(spec.role, spec.index, np.ascontiguousarray(image), source=photo.key, spec=spec)


@hookimpl
def register_stage2_backends(register):
    register("arc2face", Arc2FaceBackend)

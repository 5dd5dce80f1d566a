"""The ``caphuman`` Stage-2 backend: an identity and its plan -> 512x512 CapHuman images.

Per identity (once): its first photo (the generator's) gives

* the **ID token**: facenet-pytorch's ``MTCNN(image_size=160)`` crop with its standardisation
  (``(x - 127.5) / 128``), through FaceNet (VGGFace2): 512 numbers; where MTCNN finds no face,
  the whole photo resized to 160 in [0, 1], unstandardised, as the original falls back (a note);
* the **image tokens**: the photo with background, ears, neck, cloth, hair and hat whitened by
  CapHuman's BiSeNet face parser (``parser = "bisenet"``, FaceParser.pth; ``"none"`` keeps the
  photo as is; face_parser.py) resized to the CLIP processor's side (bicubic), CLIP-normalised,
  through CLIP ViT-L/14 vision: ``last_hidden_state`` (257 x 1024);
* the **FLAME identity**: DECA's ``E_flame`` on DECA's crop of the photo resized to 512 (the
  core's detected face box, scaled): shape (100) and tex (50) codes.

Per plan entry: the hints of the posed head (synfiqa_plugins.headmodel.render_hints_batch:
``cat(normal, albedo, shaded)`` at the image size), the prompt and the negative prompt, and the
starting noise from the generator of (run seed, identity, index, "stage2/<role>"). Batches have a
fixed shape (a short batch is padded with copies of its first entry), so an image is bitwise the
same whatever batch it was made in: the core can store the images and, after a crash, ask for
any subset of the plan (``stores_images``).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from synfiqa.errors import ConfigError
from synfiqa.seeding import torch_generator
from synfiqa.synthesis import Rendered

from .assets import MODEL_ASSET, locate_all
from .face_parser import ASSET as PARSER_ASSET, load_face_parser, whiten
from .network import GUIDANCE, STEPS, decode, denoise, initial_noise, load_networks

LATENT_FACTOR = 8


class CapHumanBackend:
    """MR-FIQA's generator: CapHuman (SD1.5 + ControlFace) on FLAME hints of the plan, with the identity's FaceNet, CLIP-image and DECA codes"""

    stores_images = True

    def __init__(self, model: str = "", facenet: str = "", deca: str = "", flame: str = "", landmarks: str = "",
                 texture: str = "", parser: str = "bisenet", parser_path: str = "", size: int = 512, steps: int = STEPS,
                 guidance: float = GUIDANCE, batch_size: int = 10, fp16: bool = True, reuse_control: bool = True,
                 device: str = "auto"):
        from synfiqa.models import resolve_device
        from synfiqa_plugins.headmodel import Flame, load_generic_model, load_landmark_embedding, load_texture_space
        from synfiqa_plugins.headmodel.hints import uv_layout
        from synfiqa_plugins.headmodel.shading import FlameTexture

        if parser not in ("bisenet", "none"):
            raise ConfigError(f"caphuman: parser must be 'bisenet' (the original's face parsing) or 'none', "
                              f"got {parser!r}")
        if not isinstance(size, int) or size < 64 or size % 64:
            raise ConfigError(f"caphuman: size must be a multiple of 64 (>= 64), got {size!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"caphuman: batch_size must be a positive integer, got {batch_size!r}")
        files = locate_all({"model": (MODEL_ASSET, model), "facenet": ("facenet-vggface2", facenet),
                            "deca": ("deca-model", deca), "flame": ("flame-generic-model", flame),
                            "landmarks": ("flame-landmark-embedding", landmarks), "texture": ("flame-texture", texture),
                            **({"parser": (PARSER_ASSET, parser_path)} if parser == "bisenet" else {})})
        self.device = torch.device(resolve_device(device))
        self.dtype = torch.float16 if (fp16 and self.device.type == "cuda") else torch.float32
        self.networks, self.text, self.image_encoder, self.meta = load_networks(files["model"].parent, self.device,
                                                                                self.dtype)
        from synfiqa_plugins.headmodel.deca_encoder import load_deca_encoder
        from synfiqa_plugins.models.facenet import build_facenet

        self.facenet = build_facenet(files["facenet"]).to(self.device)
        self.parser = load_face_parser(files["parser"]).to(self.device) if parser == "bisenet" else None
        self.deca = load_deca_encoder(files["deca"]).to(self.device)
        model_dict = load_generic_model(files["flame"])
        self.flame = Flame(model_dict, load_landmark_embedding(files["landmarks"]))
        self.uv = uv_layout(model_dict)
        self.texture = FlameTexture(load_texture_space(files["texture"]), n_tex=50)
        self.size, self.steps, self.guidance = size, int(steps), float(guidance)
        self.batch_size, self.reuse_control = batch_size, bool(reuse_control)
        self._prompts: dict[str, torch.Tensor] = {}
        self._mtcnn = None

    # ------------------------------------------------------------ per identity
    def _mtcnn_crop(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[str, ...]]:
        from facenet_pytorch import MTCNN
        from PIL import Image

        if self._mtcnn is None:
            self._mtcnn = MTCNN(image_size=160, device="cpu")
        crop = self._mtcnn(Image.fromarray(image))
        if crop is not None:
            return crop, ()
        whole = torch.from_numpy(np.array(Image.fromarray(image).resize((160, 160), Image.BILINEAR))).permute(2, 0, 1)
        return whole.float() / 255.0, ("caphuman: MTCNN found no face for the ID token; the whole photo was used, as the original does",)

    @torch.no_grad()
    def identity_codes(self, photo) -> dict:
        """The identity's ID token (1, 512), CLIP image tokens (1, 257, W) and DECA codes."""
        crop, notes = self._mtcnn_crop(photo.image)
        id_embedding = self.facenet(crop[None].to(self.device)).float()
        settings = self.meta["image_processor"]
        side = int(settings["size"])
        from PIL import Image

        parsed = photo.image if self.parser is None else whiten(photo.image, self.parser, self.device)
        resized = np.asarray(Image.fromarray(parsed).resize((side, side), Image.BICUBIC), dtype=np.float32) / 255.0
        pixels = (torch.from_numpy(resized).permute(2, 0, 1) - torch.tensor(settings["mean"])[:, None, None]) \
            / torch.tensor(settings["std"])[:, None, None]
        tokens = self.image_encoder(pixel_values=pixels[None].to(self.device, self.dtype)).last_hidden_state.float()
        from synfiqa_plugins.headmodel.deca_encoder import deca_crop

        h, w = photo.image.shape[:2]
        scale = np.array([512 / w, 512 / h, 512 / w, 512 / h])
        image512 = F.interpolate(torch.from_numpy(photo.image).permute(2, 0, 1)[None].float(), size=(512, 512),
                                 mode="bilinear", align_corners=False)[0] / 255.0
        codes = self.deca(deca_crop(image512, np.asarray(photo.face.box) * scale)[None].to(self.device))
        return {"id": id_embedding, "tokens": tokens, "shape": codes["shape"][0].cpu(), "tex": codes["tex"][0].cpu(),
                "notes": notes, "source": photo.key}

    def prompt(self, text: str) -> torch.Tensor:
        """One prompt's CLIP text states, encoded alone (batch 1) and kept: the same numbers
        whatever else is encoded."""
        if text not in self._prompts:
            self._prompts[text] = self.text([text])[0]
        return self._prompts[text]

    # ------------------------------------------------------------ the plan
    def render(self, identity, plan, context):
        from synfiqa_plugins.headmodel import render_hints_batch

        specs = list(plan)
        if not specs:
            return
        codes = self.identity_codes(identity.photos[0])
        seed = context.config["run"]["seed"]
        latent = self.size // LATENT_FACTOR
        control = self.networks.controlface.context(codes["tokens"].to(self.device), codes["id"].to(self.device))
        for start in range(0, len(specs), self.batch_size):
            part = specs[start:start + self.batch_size]
            padded = part + [part[0]] * (self.batch_size - len(part))
            hints = render_hints_batch(self.flame, self.texture, codes["shape"], padded, size=self.size, uv=self.uv,
                                       tex=codes["tex"])
            hint = torch.stack([h.caphuman for h in hints])
            noise = initial_noise([torch_generator(seed, identity.name, s.index, f"stage2/{s.role}") for s in padded],
                                  (4, latent, latent))
            text = torch.stack([self.prompt(s.prompt) for s in padded])
            negative = torch.stack([self.prompt(s.negative_prompt) for s in padded])
            latents = denoise(self.networks, noise, hint, control.expand(len(padded), -1, -1), text, negative,
                              self.steps, self.guidance, self.reuse_control)
            images = decode(self.networks, latents).numpy()
            for spec, image in zip(part, images):
                yield Rendered(spec.role, spec.index, np.ascontiguousarray(image), source=codes["source"], spec=spec,
                               notes=codes["notes"])

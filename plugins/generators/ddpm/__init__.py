"""Stage-1 pseudo-identities from an unconditional diffusion model (DCFace's, converted to
diffusers with `synfiqa convert guided-diffusion`), or any diffusers-format unconditional
UNet2DModel directory.

Every image is seeded from (run seed, image index) alone: its starting noise and the noise
of each of its steps come from its own generator, so image i is the same whatever the
batch size or the number of images asked for.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from synfiqa import hookimpl
from synfiqa.errors import ConfigError, WeightsNotFoundError
from synfiqa.generation import Identity, SourceImage
from synfiqa.seeding import derive_seed

DEFAULT_ASSET = "dcface-stage1-diffusers"


@dataclass
class GeneratedImages:
    images: np.ndarray                 # [n, H, W, 3] uint8 RGB
    metadata: list[dict] = field(default_factory=list)


def load_model_dir(path: str | Path):
    """(UNet2DModel, scheduler config dict) from a DDPMPipeline-style folder (model_index.json,
    unet/, scheduler/) or from a bare UNet2DModel folder (config.json [+ scheduler_config.json])."""
    from diffusers import UNet2DModel

    path = Path(path).expanduser()
    if (path / "unet" / "config.json").is_file():
        unet_dir, scheduler_file = path / "unet", path / "scheduler" / "scheduler_config.json"
    elif (path / "config.json").is_file():
        unet_dir, scheduler_file = path, path / "scheduler_config.json"
    else:
        raise ConfigError(f"{str(path)!r} is not a diffusers model folder (no unet/config.json or config.json)")
    config = json.loads((unet_dir / "config.json").read_text())
    if config.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise ConfigError(f"{unet_dir}: the ddpm generator runs an unconditional UNet2DModel, "
                          f"this folder holds a {config['_class_name']}")
    if config.get("num_class_embeds") or config.get("class_embed_type"):
        raise ConfigError(f"{unet_dir}: a class-conditional UNet; the ddpm generator is unconditional")
    try:
        # low_cpu_mem_usage needs accelerate; without it diffusers warns on every load
        unet = UNet2DModel.from_pretrained(str(unet_dir), local_files_only=True, low_cpu_mem_usage=False)
    except (OSError, ValueError, RuntimeError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        raise ConfigError(f"cannot load the UNet in {unet_dir}: {first}") from None
    scheduler = json.loads(scheduler_file.read_text()) if scheduler_file.is_file() else {}
    return unet.eval(), scheduler


class DdpmGenerator:
    """Unconditional DDPM identities: ancestral sampling with a respaced, learned-range chain."""

    def __init__(self, model: str = "", count: int = 100, batch_size: int = 8, device: str = "auto",
                 fp16: bool = True, respacing: str = "100", minmax_per_image: bool = False):
        from synfiqa_plugins.generators.ddpm.unet import RespacedSchedule, ScheduleConfig
        from synfiqa.models import resolve_device

        if count < 0 or batch_size < 1:
            raise ConfigError(f"ddpm generator: count must be >= 0 and batch_size >= 1, got {count}, {batch_size}")
        self.count, self.batch_size = count, batch_size
        self.minmax_per_image = minmax_per_image
        self.device = resolve_device(device)
        self.model_dir = self._model_dir(model)
        self.unet, scheduler_config = load_model_dir(self.model_dir)
        channels = self.unet.config.in_channels
        default_variance = "learned_range" if self.unet.config.out_channels == 2 * channels else "fixed_small"
        self.schedule = RespacedSchedule(ScheduleConfig.from_diffusers(scheduler_config, default_variance), respacing)
        self.respacing = str(respacing)
        # half precision only where it is fast and was asked for; the chain itself stays float32
        self.dtype = torch.float16 if (fp16 and self.device.type == "cuda") else torch.float32
        self.unet.to(self.device)
        if self.dtype == torch.float16:
            self.unet.half()
        size = self.unet.config.sample_size
        self.image_shape = (channels, *((size, size) if isinstance(size, int) else tuple(size)))

    @staticmethod
    def _model_dir(model: str) -> Path:
        if model:
            return Path(model).expanduser()
        from synfiqa.weights import locate

        try:
            location = locate(DEFAULT_ASSET, verify=False)
        except WeightsNotFoundError as error:
            raise WeightsNotFoundError(
                f"{str(error).splitlines()[0]} The ddpm generator needs DCFace's stage-1 model converted to "
                "diffusers (synfiqa convert guided-diffusion Unc-Diff-Stage1.pth --out DIR), or any diffusers "
                "unconditional model folder: set generate.params.ddpm.model=DIR."
            ) from None
        return location.files["unet/config.json"].parent.parent

    # ------------------------------------------------------------ sampling

    def image_seed(self, seed: int, index: int) -> int:
        return derive_seed(seed, "ddpm", index, "sample")

    def _denoise(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return self.unet(x.to(self.dtype), timesteps).sample

    def sample_indices(self, indices: list[int], seed: int, on_step=None) -> np.ndarray:
        """The images of these indices ([n, H, W, 3] uint8), sampled together as one batch."""
        from synfiqa_plugins.generators.ddpm.unet import sample, to_uint8

        generators = [torch.Generator().manual_seed(self.image_seed(seed, i)) for i in indices]

        def noise() -> torch.Tensor:
            return torch.cat([torch.randn((1, *self.image_shape), generator=g) for g in generators]).to(self.device)

        initial = noise()
        x0 = sample(self._denoise, self.schedule, initial, lambda k: noise(), on_step)
        return to_uint8(x0, self.minmax_per_image)

    def generate_indices(self, indices: list[int], seed: int, on_batch=None):
        """Yield (indices, images) batch by batch, in the order given."""
        for start in range(0, len(indices), self.batch_size):
            chunk = list(indices[start:start + self.batch_size])
            images = self.sample_indices(chunk, seed)
            if on_batch is not None:
                on_batch(len(chunk))
            yield chunk, images

    def metadata(self, seed: int, index: int) -> dict:
        return {"generator": "ddpm", "seed": seed, "index": index, "image_seed": self.image_seed(seed, index),
                "model": str(self.model_dir), "respacing": self.respacing,
                "minmax_per_image": self.minmax_per_image}

    def generate(self, n: int, seed: int = 0, conditioning=None, start: int = 0) -> GeneratedImages:
        if conditioning is not None:
            raise ConfigError("the ddpm generator is unconditional; it takes no conditioning")
        indices = list(range(start, start + n))
        batches = [images for _, images in self.generate_indices(indices, seed)]
        shape = (0, self.image_shape[1], self.image_shape[2], 3)
        images = np.concatenate(batches) if batches else np.zeros(shape, np.uint8)
        return GeneratedImages(images, [self.metadata(seed, i) for i in indices])

    # ------------------------------------------------------------ the build's view

    @staticmethod
    def identity_name(index: int) -> str:
        return f"{index:06d}"

    def identities(self, limit: int | None = None, seed: int = 0) -> list[Identity]:
        """One identity per generated image, named by its index."""
        generated = self.generate(self.count if limit is None else limit, seed)
        return [
            Identity(self.identity_name(meta["index"]), (SourceImage(key="0.png", array=image),), meta)
            for image, meta in zip(generated.images, generated.metadata)
        ]


@hookimpl
def register_generators(register):
    register("ddpm", DdpmGenerator)


def _guided_diffusion_command():
    import click

    @click.command("guided-diffusion")
    @click.argument("checkpoint", type=click.Path(dir_okay=False))
    @click.option("--out", required=True, type=click.Path(file_okay=False), help="The diffusers model folder to write.")
    @click.option("--preset", default="dcface-stage1", show_default=True,
                  help="Architecture preset (dcface-stage1: DCFace's Unc-Diff-Stage1.pth).")
    @click.option("--arch", "overrides", multiple=True, metavar="KEY=VALUE",
                  help="Override one architecture key, e.g. --arch channel_mult=1,2,4 (repeatable).")
    def guided_diffusion(checkpoint, out, preset, overrides):
        """A guided-diffusion UNet state_dict (e.g. Unc-Diff-Stage1.pth) -> a diffusers folder
        (UNet2DModel + DDPMScheduler config) that the ddpm generator loads."""
        from pathlib import Path

        from synfiqa_plugins.generators.ddpm.convert import PRESETS, convert_checkpoint
        from synfiqa.errors import ConfigError, OutputConflictError

        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; presets: {', '.join(sorted(PRESETS))}")
        values = {}
        for override in overrides:
            if "=" not in override:
                raise ConfigError(f"--arch {override!r} must look like key=value")
            key, value = override.split("=", 1)
            values[key.strip()] = value.strip()
        arch = PRESETS[preset].with_overrides(values)
        target = Path(out)
        if target.exists() and any(target.iterdir()):
            raise OutputConflictError(f"{out} is not empty; choose a new folder for the converted model")
        written = convert_checkpoint(checkpoint, target, arch)
        click.echo(f"wrote {written} (diffusers UNet2DModel + DDPMScheduler config); "
                   f"use it with: --set generate.generator=ddpm --set generate.params.ddpm.model={written}")

    return guided_diffusion


@hookimpl
def register_commands(cli):
    """`synfiqa convert guided-diffusion`: DCFace's guided-diffusion checkpoint -> the diffusers folder this generator loads."""
    convert = cli.commands.get("convert")
    if convert is not None:
        convert.add_command(_guided_diffusion_command())

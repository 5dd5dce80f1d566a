"""`synfiqa convert ...`: bring model checkpoints of the original code into the formats
synfiqa loads."""
from __future__ import annotations

import click


@click.group()
def convert():
    """Convert original checkpoints to the formats synfiqa loads."""


@convert.command("guided-diffusion")
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

    from synfiqa.diffusion_convert import PRESETS, convert_checkpoint
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


@convert.command("blip")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="The transformers folder to write (config.json, model.safetensors, tokenizer).")
@click.option("--tokenizer", default="", help="A folder with the bert-base-uncased vocabulary "
              "(default: the bert-base-uncased asset: synfiqa weights folders, Hugging Face cache).")
@click.option("--vision-heads", type=int, default=None, help="Attention heads of the ViT (default: width / 64).")
@click.option("--text-heads", type=int, default=None, help="Attention heads of the text encoder (default: width / 64).")
def blip(checkpoint, out, tokenizer, vision_heads, text_heads):
    """The original BLIP retrieval checkpoint (model_base_retrieval_coco.pth, salesforce/BLIP
    key names) -> a BlipForImageTextRetrieval folder that the blip-itc model loads."""
    from pathlib import Path

    from synfiqa.errors import OutputConflictError
    from synfiqa_plugins.models.blip import convert_original_checkpoint

    target = Path(out)
    if target.exists() and any(target.iterdir()):
        raise OutputConflictError(f"{out} is not empty; choose a new folder for the converted model")
    written = convert_original_checkpoint(checkpoint, target, tokenizer, vision_heads, text_heads)
    click.echo(f"wrote {written} (transformers BlipForImageTextRetrieval + tokenizer); "
               f"use it with: --set models.params.blip-itc.path={written}")


COMMANDS = [convert]

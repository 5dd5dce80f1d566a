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


COMMANDS = [convert]

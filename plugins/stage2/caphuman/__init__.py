"""The ``caphuman`` Stage-2 backend: MR-FIQA's generator (CapHuman's ControlFace on SD1.5) in
diffusers modules with a custom denoising loop (docs/stage2_diffusion.md).

* :mod:`.network`: ControlFace (ControlNet + mask head + identity projections), the DDIM + CFG
  sampler with the ControlNet reused across the guidance halves, the converted folder's layout;
* :mod:`.convert`: the original LDM-format files -> that folder (``synfiqa convert caphuman``);
* :mod:`.identity`: the per-identity inputs (FaceNet ID token, parsed CLIP image tokens, DECA codes);
* :mod:`.backend`: the backend itself (plan entries -> hints -> 512x512 images).
"""
from synfiqa import hookimpl


def _convert_command():
    import click

    @click.command("caphuman")
    @click.option("--control", type=click.Path(dir_okay=False), default=None,
                  help="Control-Module.pth (default: the caphuman-control-module asset).")
    @click.option("--sd", type=click.Path(dir_okay=False), default=None,
                  help="SDiff-Stage2.safetensors (default: the caphuman-sd asset).")
    @click.option("--clip", "clip_dir", type=click.Path(file_okay=False), default=None,
                  help="The clip-vit-large-patch14 folder (default: the clip-vit-large-patch14 asset).")
    @click.option("--out", required=True, type=click.Path(file_okay=False),
                  help="The folder to write (give it to stage2.params.caphuman.model, or put it in "
                       "$SYNFIQA_WEIGHTS/caphuman-diffusers/).")
    @click.option("--heads", default=8, show_default=True,
                  help="Attention heads of the UNet and ControlNet (cldm.yaml: 8; not stored in the weights).")
    def caphuman(control, sd, clip_dir, out, heads):
        """MR-FIQA's Stage-2 files (Control-Module.pth, SDiff-Stage2.safetensors, the CLIP folder)
        -> the diffusers/transformers folder the caphuman backend loads. Offline; every key of
        the originals is converted or the conversion stops naming the leftovers."""
        from pathlib import Path

        from synfiqa.errors import OutputConflictError

        from .assets import locate_sources
        from .convert import convert_files

        target = Path(out)
        if target.exists() and any(target.iterdir()):
            raise OutputConflictError(f"{out} is not empty; choose a new folder for the converted model")
        control, sd, clip_dir = locate_sources(control, sd, clip_dir)
        written = convert_files(control, sd, clip_dir, target, heads)
        click.echo(f"wrote {written}; use it with: --set stage2.params.caphuman.model='\"{written}\"'")

    return caphuman


@hookimpl
def register_commands(cli):
    """`synfiqa convert caphuman`: MR-FIQA's Stage-2 checkpoints -> the folder the caphuman backend loads."""
    convert = cli.commands.get("convert")
    if convert is not None:
        convert.add_command(_convert_command())


@hookimpl
def register_stage2_backends(register):
    from .backend import CapHumanBackend

    register("caphuman", CapHumanBackend)

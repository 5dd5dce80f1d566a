"""Atmospheric haze for synfiqa, with its veil colour as a model asset.

Everything here uses synfiqa's public plugin contract only: the hooks of
synfiqa.hookspecs, the input checks of synfiqa.degradation and the offline lookup of
synfiqa.weights.
"""
import click
import torch

from synfiqa import hookimpl
from synfiqa.degradation import check_count, check_images, check_landmarks, check_params, check_range

ASSET = "fogbank-veil"
VEIL_FILE = "veil.txt"
VEIL_SHA256 = "f70024b76f7918c14525234449dbd3a964f49fff957d5bf413db3f5f2d7e2ad9"  # b"fogbank veil: grey level 200\n"


def read_veil(path: str = "") -> float:
    """The veil's grey level, from the asset's file (found offline, checked against its sha256)."""
    from synfiqa.weights import locate

    location = locate(ASSET, explicit=path or None)
    return float(location.files[VEIL_FILE].read_text().rsplit(" ", 1)[-1])


class Haze:
    """blends the image towards a grey veil"""

    severity_axes = ("density",)

    def __init__(self, density=(0.0, 0.7), veil: float = 200.0):
        self.low, self.high = check_range("haze density", density, 0.0, 1.0)
        self.veil = float(veil)

    def sample_params(self, n, generator):
        n = check_count(n)
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        return {"density": self.low + (self.high - self.low) * u}

    def apply(self, images, params, landmarks=None):
        check_images(images)
        n, _, height, width = images.shape
        check_params(params, n, ("density",))
        check_landmarks(landmarks, n, height, width)
        density = params["density"].to("cpu", torch.float64)[:, None, None, None]
        out = images.to("cpu", torch.float64) * (1 - density) + self.veil * density
        return out.round().clamp(0, 255).to(torch.uint8).to(images.device)


@hookimpl
def register_model_assets(register):
    register(ASSET, files={VEIL_FILE: VEIL_SHA256}, license="CC0-1.0",
             source="write 'fogbank veil: grey level 200' and a line break into veil.txt",
             summary="the grey level of the fogbank haze veil")


@hookimpl
def register_degradations(register):
    register("haze", Haze, summary="atmospheric haze: blends towards a grey veil")


@hookimpl
def register_commands(cli):
    @cli.command("fogbank")
    @click.option("--path", default="", help="The veil file, if not in the usual places.")
    def fogbank(path):
        """Where the fogbank veil asset is, and its grey level (synfiqa-fogbank)."""
        click.echo(f"{ASSET}: grey level {read_veil(path):g}")

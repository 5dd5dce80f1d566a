"""Where the caphuman backend's files are found (synfiqa.weights.locate, offline), and one
error naming every missing file at once."""
from __future__ import annotations

from pathlib import Path

from synfiqa.errors import WeightsNotFoundError

CONTROL_ASSET = "caphuman-control-module"
SD_ASSET = "caphuman-sd"
CLIP_ASSET = "clip-vit-large-patch14"
MODEL_ASSET = "caphuman-diffusers"


def locate_all(wanted: dict[str, tuple[str, str | None]]) -> dict[str, Path]:
    """{role: (asset, explicit path or None)} -> {role: the first file of the asset (or the
    explicit file)}; every asset that is missing is named, with its files, in ONE one-line
    WeightsNotFoundError (the per-asset details: ``synfiqa models list``)."""
    from synfiqa.weights import asset_entry, locate

    found, missing = {}, []
    for role, (asset, explicit) in wanted.items():
        try:
            location = locate(asset, explicit=explicit or None)
            found[role] = next(iter(location.files.values()))
        except WeightsNotFoundError:
            files = ", ".join(f.path for f in asset_entry(asset).files)
            missing.append(f"{asset} ({explicit or files})")
    if missing:
        raise WeightsNotFoundError("missing model files: " + "; ".join(missing) +
                                   " (where to get them: `synfiqa models list`, docs/stage2_diffusion.md)")
    return found


def locate_sources(control=None, sd=None, clip_dir=None) -> tuple[Path, Path, Path]:
    found = locate_all({"control": (CONTROL_ASSET, control), "sd": (SD_ASSET, sd), "clip": (CLIP_ASSET, clip_dir)})
    return found["control"], found["sd"], Path(found["clip"]).parent

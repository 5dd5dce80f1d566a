"""Running a FIQA model or an embedder over image files: find the images, detect and align
each face (unless the images are aligned crops already), batch the crops through the
model. An image that cannot be used gets no value and a reason, never a made-up number.

Used by `synfiqa score` and by `synfiqa evaluate` when it computes qualities or
embeddings itself.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from synfiqa.align import ARCFACE_TEMPLATE_112
from synfiqa.errors import BadInputError, DataFileError
from synfiqa.images import decode_rgb, is_image_path, read_rgb
from synfiqa.faces import detect_and_align
from synfiqa.progress import progress as progress_bar

CROP_SIZE = 112
GENERIC_CHECKPOINT_MODEL = "cr-fiqa"  # what a checkpoint file given instead of a model name loads with


@dataclass(frozen=True)
class ImageItem:
    name: str                 # how the image is reported and matched against pairs
    path: Path | None = None
    data: bytes | None = None  # an encoded image (from an insightface .bin)


@dataclass
class ImageOutcome:
    name: str
    value: object = None      # float (quality) or np.ndarray (embedding); None when the image failed
    reason: str = ""          # short code when it failed: missing-file, unreadable-image, no-face, ...
    detail: str = ""


def collect_images(paths: list[str | Path]) -> list[ImageItem]:
    """Files as given; folders walked recursively (sorted), their images named relative to
    the folder, so that the names match a benchmark's pairs file (``person/person_0001.jpg``)."""
    items: list[ImageItem] = []
    for given in paths:
        path = Path(given).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and is_image_path(p)
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            items += [ImageItem(p.relative_to(path).as_posix(), p) for p in found]
        elif path.is_file():
            items.append(ImageItem(str(given), path))
        else:
            raise DataFileError(f"{str(given)!r}: no such file or folder")
    return items


def items_under(root: str | Path, names: list[str]) -> list[ImageItem]:
    """Images a pairs file names, as files below a root folder."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataFileError(f"image folder {str(root)!r} does not exist")
    return [ImageItem(name, root / name) for name in names]


def decode_image(data: bytes, name: str) -> np.ndarray:
    try:
        return decode_rgb(data, name)
    except BadInputError as error:
        if error.reason in ("image-too-large", "too-small"):
            raise
        raise BadInputError("unreadable-image", f"{name}: cannot decode the image ({error})") from None


class CropMaker:
    """One 112x112 ArcFace-aligned RGB crop per image. With ``aligned`` the image is taken as
    a crop already (resized to 112x112 when it is not that size, as CR-FIQA's inference
    script does); otherwise the main face is detected and aligned to the five-point template."""

    def __init__(self, aligned: bool, detector=None):
        if not aligned and detector is None:
            raise ValueError("a detector is needed unless the images are aligned crops")
        self.aligned = aligned
        self.detector = detector

    def load(self, item: ImageItem) -> np.ndarray:
        if item.data is not None:
            return decode_image(item.data, item.name)
        return read_rgb(item.path)

    def crop(self, item: ImageItem) -> np.ndarray:
        return self.crop_and_landmarks(item)[0]

    def crop_and_landmarks(self, item: ImageItem) -> tuple[np.ndarray, np.ndarray]:
        """The crop and its five landmarks in crop coordinates (for an aligned crop, the
        template's: that is where alignment put them)."""
        image = self.load(item)
        if self.aligned:
            if image.shape[:2] != (CROP_SIZE, CROP_SIZE):
                image = np.asarray(Image.fromarray(image).resize((CROP_SIZE, CROP_SIZE), Image.BILINEAR))
            return image, ARCFACE_TEMPLATE_112.astype(np.float64)
        found = detect_and_align(image, self.detector, CROP_SIZE, item.name)  # the one crop path
        return found.crop, found.landmarks


def run_model(items: list[ImageItem], crop_maker: CropMaker, model_batch: Callable, batch_size: int = 64,
              progress: bool | None = None, description: str = "images") -> list[ImageOutcome]:
    """``model_batch(uint8 [N, 3, 112, 112] tensor) -> tensor [N] or [N, D]``; one outcome per item,
    in order."""
    import torch

    outcomes = [ImageOutcome(item.name) for item in items]
    pending: list[tuple[int, np.ndarray]] = []

    def flush():
        if not pending:
            return
        batch = torch.from_numpy(np.stack([crop for _, crop in pending])).permute(0, 3, 1, 2).contiguous()
        values = model_batch(batch).detach().cpu().numpy()
        for (index, _), value in zip(pending, values):
            outcomes[index].value = float(value) if np.ndim(value) == 0 else np.asarray(value, dtype=np.float32)
        pending.clear()

    for index, item in enumerate(progress_bar(items, enabled=progress, description=description, unit="img")):
        try:
            pending.append((index, crop_maker.crop(item)))
        except BadInputError as error:
            outcomes[index].reason, outcomes[index].detail = error.reason, str(error)
        if len(pending) >= batch_size:
            flush()
    flush()
    return outcomes


def resolve_model(kind: str, spec: str, device: str = "auto", registry=None):
    """A registered component by name, or a checkpoint file for the generic CR-FIQA loader.
    Returns (model, label)."""
    from synfiqa.registry import get_registry

    registry = registry or get_registry()
    path = Path(spec).expanduser()
    if path.is_file():
        return registry.create(kind, GENERIC_CHECKPOINT_MODEL, path=str(path), device=device), path.name
    if path.suffix.lower() in {".pth", ".pt", ".ckpt", ".bin", ".safetensors"} or "/" in spec:
        raise DataFileError(f"checkpoint file {spec!r} does not exist")
    component = registry.get(kind, spec)
    params = {"device": device} if "device" in inspect.signature(component.factory).parameters else {}
    return registry.create(kind, spec, **params), spec

"""Running a FIQA model or an embedder over image files: each image through the one crop path
(synfiqa.faces.CropMaker), the crops batched through the model. An image that cannot be used
gets no value and a reason, never a made-up number. Used by `synfiqa score` (s6) and by
`synfiqa evaluate` (s7) when it computes qualities or embeddings itself.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from synfiqa.errors import BadInputError, DataFileError
from synfiqa.faces import CropMaker
from synfiqa.images import ImageItem
from synfiqa.progress import progress as progress_bar

GENERIC_CHECKPOINT_MODEL = "cr-fiqa"  # what a checkpoint file given instead of a model name loads with


@dataclass
class ImageOutcome:
    name: str
    value: object = None      # float (quality) or np.ndarray (embedding); None when the image failed
    reason: str = ""          # short code when it failed: missing-file, unreadable-image, no-face, ...
    detail: str = ""


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

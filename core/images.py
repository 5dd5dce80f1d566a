"""Reading photos into RGB uint8 arrays, with a recorded reason for every failure,
and writing images atomically."""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from synfiqa.errors import BadInputError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def is_image_path(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def read_rgb(path: str | Path) -> np.ndarray:
    """HxWx3 uint8 RGB. EXIF rotation applied; grayscale, RGBA, CMYK, palette and
    16-bit images converted. Raises BadInputError with a short reason code."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            image = ImageOps.exif_transpose(image)
            return to_rgb_array(image)
    except FileNotFoundError:
        raise BadInputError("missing-file", f"{path}: no such file") from None
    except UnidentifiedImageError:
        raise BadInputError("unreadable-image", f"{path}: not an image format synfiqa can read") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise BadInputError("corrupt-image", f"{path}: image data is corrupt or truncated ({error})") from None


def to_rgb_array(image: Image.Image) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grayscale: rescale to 8 bits instead of clipping.
        values = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if values.max() > 255 else 255.0
        gray = np.clip(np.round(values / peak * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    if array.ndim != 3 or array.shape[0] < 2 or array.shape[1] < 2:
        raise BadInputError("too-small", f"image of shape {array.shape} is too small")
    return np.ascontiguousarray(array)


def encode_jpeg(array: np.ndarray, quality: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=quality, subsampling=0)
    return buffer.getvalue()


def write_atomic(path: str | Path, data: bytes) -> None:
    """Write to a temporary name in the same folder, then rename into place: a killed
    process leaves either the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def write_text_atomic(path: str | Path, text: str) -> None:
    write_atomic(path, text.encode("utf-8"))

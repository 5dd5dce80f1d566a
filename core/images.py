"""Reading photos into RGB uint8 arrays, with a recorded reason for every failure, and
encoding images (writing them is synfiqa.store's job).

Large photos are decoded reduced: a decoded photo never holds more than MAX_DECODED_PIXELS
pixels (a JPEG is decoded at 1/2, 1/4 or 1/8 scale by libjpeg itself, any other format is
decoded whole and then box-reduced by an integer factor). A photo whose header declares more
than MAX_IMAGE_PIXELS pixels is not decoded at all: it is a BadInputError
("image-too-large"), a recorded skip like any other bad photo. Pillow's own
decompression-bomb limit is replaced by synfiqa's while (and only while) synfiqa reads a
photo, so its DecompressionBombError and DecompressionBombWarning never escape."""
from __future__ import annotations

import io
import math
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import ExifTags, Image, ImageFile, UnidentifiedImageError

from synfiqa.errors import BadInputError, DataFileError

# The most pixels a decoded photo holds: 25 MP passes the 24-megapixel photos of most
# cameras (6000 x 4000, 6016 x 4016) untouched; a larger one is decoded reduced, by the
# smallest factor that fits (a 100 MP JPEG at 1/4 scale: 6.3 MP). Face detection and the
# 112 x 112 aligned crop need far less; what it bounds is the memory of decoding and of the
# face detector's image pyramid.
MAX_DECODED_PIXELS = 25_000_000

# The most pixels a photo's header may declare: 16384 x 16384 = 268 MP, above the largest
# camera sensors (200 MP phones: 16320 x 12240; 150 MP medium format). A format that cannot
# be reduced while decoding (PNG, TIFF, ...) is decoded whole first, so this also bounds the
# peak memory of one read: about 4 bytes a pixel, 1.1 GB. Beyond it a photo is not decoded.
MAX_IMAGE_PIXELS = 16384 * 16384

# Formats Pillow identifies but cannot decode by itself: a file of theirs is not a photo.
_IDENTIFY_ONLY_FORMATS = {"MPEG"}


def _readable_suffixes() -> frozenset[str]:
    """Every extension Pillow registers for a format it can open and decode (stub formats
    such as HDF5, GRIB, BUFR and WMF, which need a handler of their own, left out)."""
    Image.init()
    readable = {name for name, (factory, _) in Image.OPEN.items()
                if name not in _IDENTIFY_ONLY_FORMATS
                and not (isinstance(factory, type) and issubclass(factory, ImageFile.StubImageFile))}
    return frozenset(ext.lower() for ext, name in Image.registered_extensions().items() if name in readable)


IMAGE_SUFFIXES = _readable_suffixes()

_TRANSPOSE_FOR_ORIENTATION = {  # EXIF orientation -> the transposition that makes the photo upright
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

# Image.MAX_IMAGE_PIXELS is one global of Pillow's: synfiqa changes it only while it reads a
# photo, under this lock, and puts the caller's value back.
_PILLOW_LIMIT_LOCK = threading.RLock()


def is_image_path(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def read_rgb(path: str | Path) -> np.ndarray:
    """HxWx3 uint8 RGB. EXIF rotation applied; grayscale, RGBA, CMYK, palette and
    16-bit images converted; a photo over MAX_DECODED_PIXELS decoded reduced (aspect kept).
    Raises BadInputError with a short reason code."""
    path = Path(path)
    try:
        return _decode(path, str(path))
    except FileNotFoundError:
        raise BadInputError("missing-file", f"{path}: no such file") from None


def decode_rgb(data: bytes, name: str) -> np.ndarray:
    """read_rgb for an encoded image held in memory; ``name`` is how errors name it."""
    return _decode(io.BytesIO(data), name)


def _decode(source: Path | BinaryIO, name: str) -> np.ndarray:
    try:
        with _PILLOW_LIMIT_LOCK:
            previous = Image.MAX_IMAGE_PIXELS
            try:
                # the header: synfiqa checks the declared size itself, to name it in the error
                Image.MAX_IMAGE_PIXELS = None
                with Image.open(source) as image:
                    width, height = image.size
                    if width * height > MAX_IMAGE_PIXELS:
                        raise BadInputError("image-too-large", f"{name}: {width} x {height} pixels is over synfiqa's "
                                            f"limit of {MAX_IMAGE_PIXELS:,} pixels ({MAX_IMAGE_PIXELS / 1e6:.0f} MP) "
                                            "for one photo: not decoded")
                    # the pixels: Pillow's checks of frames and tiles run at synfiqa's limit, and
                    # a warning of theirs is an error here
                    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
                    with warnings.catch_warnings():
                        warnings.simplefilter("error", Image.DecompressionBombWarning)
                        return to_rgb_array(_load_reduced(image))
            finally:
                Image.MAX_IMAGE_PIXELS = previous
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise BadInputError("image-too-large", f"{name}: {error}") from None
    except MemoryError:
        raise BadInputError("image-too-large", f"{name}: not enough memory to decode it") from None
    except UnidentifiedImageError:
        raise BadInputError("unreadable-image", f"{name}: not an image format synfiqa can read") from None
    except FileNotFoundError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise BadInputError("corrupt-image", f"{name}: image data is corrupt or truncated ({error})") from None


def _load_reduced(image: ImageFile.ImageFile) -> Image.Image:
    """The opened photo decoded, upright, with at most MAX_DECODED_PIXELS pixels (the
    file's own image when nothing had to change: convert it before the file is closed)."""
    width, height = image.size
    scale = next((s for s in (1, 2, 4, 8) if _reduced_pixels(width, height, s) <= MAX_DECODED_PIXELS), 8)
    if scale > 1:
        # JPEG: libjpeg decodes at 1/scale (draft picks the largest scale the requested size
        # allows); other formats ignore it and are decoded whole
        image.draft("RGB", (max(1, width // scale), max(1, height // scale)))
    image.load()
    orientation = image.getexif().get(ExifTags.Base.Orientation)
    result: Image.Image = image
    factor = 1
    while _reduced_pixels(*result.size, factor) > MAX_DECODED_PIXELS:
        factor += 1
    if factor > 1:
        if result.mode in ("P", "PA"):
            has_alpha = result.mode == "PA" or "transparency" in result.info
            result = result.convert("RGBA" if has_alpha else "RGB")
        elif result.mode == "1":
            result = result.convert("L")
        elif result.mode.startswith("I;16"):
            result = result.convert("I")
        result = result.reduce(factor)
    if orientation in _TRANSPOSE_FOR_ORIENTATION:
        result = result.transpose(_TRANSPOSE_FOR_ORIENTATION[orientation])
    return result


def _reduced_pixels(width: int, height: int, factor: int) -> int:
    return math.ceil(width / factor) * math.ceil(height / factor)


def to_rgb_array(image: Image.Image) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16/32-bit grayscale: rescale to 8 bits instead of clipping (floating-point ones, as
        # a PFM holds them, from [0, 1] when they lie in it).
        values = np.nan_to_num(np.asarray(image, dtype=np.float64))
        top = values.max()
        peak = 1.0 if image.mode == "F" and top <= 1.0 else 65535.0 if top > 255 else 255.0
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


# Chroma subsampling of a stored JPEG (run.jpeg_subsampling). synfiqa stores 4:4:4, full
# colour resolution, so the storage itself does not blur a degraded sample's colour edges; the
# original saves with Pillow's defaults, quality 75 and 4:2:0 (docs/method.md#11-conventions-the-original-and-synfiqa).
JPEG_SUBSAMPLINGS = ("4:4:4", "4:2:2", "4:2:0")


def encode_jpeg(array: np.ndarray, quality: int, subsampling: str = "4:4:4") -> bytes:
    """JPEG bytes through Pillow's libjpeg at `quality` and chroma `subsampling`; quality 75
    with "4:2:0" gives the same bytes as Pillow's `save` with no options (the original's)."""
    if subsampling not in JPEG_SUBSAMPLINGS:
        raise ValueError(f"JPEG subsampling must be one of {', '.join(JPEG_SUBSAMPLINGS)}; got {subsampling!r}")
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=quality, subsampling=subsampling)
    return buffer.getvalue()


def encode_png(array: np.ndarray) -> bytes:
    """Lossless PNG bytes (generated identities, `synfiqa degrade` copies)."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


# ---------------------------------------------------------------- image files as inputs of a command

@dataclass(frozen=True)
class ImageItem:
    name: str                 # how the image is reported and matched against pairs
    path: Path | None = None
    data: bytes | None = None  # an encoded image (from an insightface .bin)


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

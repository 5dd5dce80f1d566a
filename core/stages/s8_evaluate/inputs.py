"""Per-image inputs of an evaluation: embeddings (.npz, image name -> vector) and qualities
(CSV image,quality), and the name matching that ties them to the names in a pairs file.

Names match when they are equal after normalisation (forward slashes, no leading "./").
Failing that, a name also matches without its image extension or by its file name alone,
when that is unambiguous: pairs say ``Aaron/Aaron_0001.jpg`` where CR-FIQA's tools write
``Aaron_0001.jpg`` or a full path.
"""
from __future__ import annotations

import csv
import io
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from synfiqa.errors import DataFileError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def normalise_name(name: str) -> str:
    name = str(name).strip().replace("\\", "/")
    while name.startswith("./"):
        name = name[2:]
    return name.lstrip("/")


def _without_extension(name: str) -> str:
    path = PurePosixPath(name)
    return str(path.with_suffix("")) if path.suffix.lower() in IMAGE_EXTENSIONS else name


def _file_name(name: str) -> str:
    return PurePosixPath(name).name


def _file_stem(name: str) -> str:
    return _without_extension(_file_name(name))


_LOOSE_KEYS = (_without_extension, _file_name, _file_stem)  # tried in this order


class NameIndex:
    """Maps image names, as a pairs file writes them, to rows of a table."""

    def __init__(self, names: list[str], source: str):
        self.source = source
        self.names = list(names)
        self._exact: dict[str, int] = {}
        for row, name in enumerate(self.names):
            key = normalise_name(name)
            if key in self._exact:
                raise DataFileError(f"{source}: image {name!r} appears twice")
            self._exact[key] = row
        self._loose: list | None = None  # built on the first name that does not match exactly

    def _unique_map(self, key_of) -> dict[str, int]:
        mapping: dict[str, int] = {}
        ambiguous = set()
        for name, row in self._exact.items():
            key = key_of(name)
            if key in mapping:
                ambiguous.add(key)
            mapping[key] = row
        for key in ambiguous:
            del mapping[key]
        return mapping

    def find(self, name: str) -> int | None:
        key = normalise_name(name)
        row = self._exact.get(key)
        if row is not None:
            return row
        if self._loose is None:
            self._loose = [(key_of, self._unique_map(key_of)) for key_of in _LOOSE_KEYS]
        for key_of, mapping in self._loose:
            row = mapping.get(key_of(key))
            if row is not None:
                return row
        return None

    def rows_for_pairs(self, pairs) -> tuple[np.ndarray, np.ndarray]:
        """Rows of both images of every pair. An image the table lacks is an error that names
        the first pair's line that uses one and counts the other missing images."""
        resolved = np.array([-1 if (row := self.find(name)) is None else row for name in pairs.names], dtype=np.int64)
        lacking = resolved < 0
        if lacking.any():
            used = np.zeros(len(resolved), dtype=bool)
            used[pairs.index_a] = True
            used[pairs.index_b] = True
            lacking &= used
        if lacking.any():
            first = int(np.argmax(lacking[pairs.index_a] | lacking[pairs.index_b]))
            a, b = int(pairs.index_a[first]), int(pairs.index_b[first])
            name = pairs.names[a] if lacking[a] else pairs.names[b]
            count = int(lacking.sum())
            more = f" ({count - 1} more image(s) missing)" if count > 1 else ""
            raise DataFileError(f"{pairs.where(first)}: image {name!r} is not in {self.source}{more}")
        return resolved[pairs.index_a], resolved[pairs.index_b]


# ---------------------------------------------------------------- embeddings


@dataclass
class EmbeddingTable:
    names: list[str]
    vectors: np.ndarray   # float32 [M, D], L2-normalised rows
    source: str

    def __post_init__(self):
        self.index = NameIndex(self.names, self.source)

    @property
    def dimension(self) -> int:
        return int(self.vectors.shape[1])


def embedding_table(named_vectors: dict[str, np.ndarray], source: str) -> EmbeddingTable:
    """Checks and L2-normalises a name -> vector mapping; errors name the file and the image."""
    if not named_vectors:
        raise DataFileError(f"{source}: holds no embeddings")
    names = list(named_vectors)
    first_dimension = None
    for name in names:
        vector = np.asarray(named_vectors[name])
        if vector.ndim != 1 and not (vector.ndim == 2 and 1 in vector.shape):
            raise DataFileError(f"{source}: the embedding of {name!r} has shape {vector.shape}; expected one vector")
        size = vector.size
        if first_dimension is None:
            first_dimension = (name, size)
        elif size != first_dimension[1]:
            raise DataFileError(f"{source}: embeddings have different dimensions: {first_dimension[0]!r} has "
                                f"{first_dimension[1]}, {name!r} has {size}")
    vectors = np.stack([np.asarray(named_vectors[n], dtype=np.float32).reshape(-1) for n in names])
    bad = ~np.isfinite(vectors).all(axis=1)
    if bad.any():
        raise DataFileError(f"{source}: the embedding of {names[int(np.argmax(bad))]!r} holds NaN or infinite values")
    norms = np.linalg.norm(vectors.astype(np.float64), axis=1)
    if (norms == 0).any():
        raise DataFileError(f"{source}: the embedding of {names[int(np.argmax(norms == 0))]!r} is all zeros "
                            f"(no direction, so no cosine)")
    return EmbeddingTable(names, (vectors / norms[:, None]).astype(np.float32), source)


TABLE_KEYS = ("names", "embeddings")  # the compact layout: a string array and an [M, D] array


def read_embeddings(path: str | Path) -> EmbeddingTable:
    """An .npz mapping each image name to its vector, or (much faster to load for many
    images: one array instead of one archive member per image) holding exactly two arrays,
    ``names`` [M] (strings) and ``embeddings`` [M, D]."""
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"embeddings file {str(path)!r} does not exist")
    try:
        with np.load(path, allow_pickle=False) as archive:
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise DataFileError(f"{path}: expected an .npz archive mapping image names to vectors")
            if sorted(archive.files) == sorted(TABLE_KEYS):
                names, matrix = archive["names"], archive["embeddings"]
                if names.dtype.kind not in "US" or names.ndim != 1 or matrix.ndim != 2 or len(names) != len(matrix):
                    raise DataFileError(f"{path}: 'names' must be [M] strings and 'embeddings' [M, D], got "
                                        f"{names.dtype} {names.shape} and {matrix.shape}")
                named = dict(zip(names.astype(str).tolist(), matrix))
                if len(named) != len(names):
                    raise DataFileError(f"{path}: an image name appears twice in 'names'")
            else:
                named = {name: archive[name] for name in archive.files}
    except (zipfile.BadZipFile, ValueError, OSError) as error:
        raise DataFileError(f"{path}: not a readable .npz archive ({error})") from None
    return embedding_table(named, str(path))


def write_embeddings(path: str | Path, names: list[str], vectors: np.ndarray) -> None:
    np.savez(path, **{name: np.asarray(vector, dtype=np.float32) for name, vector in zip(names, vectors)})


# ---------------------------------------------------------------- qualities


@dataclass
class QualityTable:
    names: list[str]
    values: np.ndarray    # float64, finite
    source: str

    def __post_init__(self):
        self.index = NameIndex(self.names, self.source)


def _parse_quality(token: str, where: str, name: str) -> float:
    try:
        value = float(token)
    except ValueError:
        raise DataFileError(f"{where}: the quality of {name!r} is {token.strip()!r}, not a number") from None
    if math.isnan(value) or math.isinf(value):
        raise DataFileError(f"{where}: the quality of {name!r} is {token.strip()}; qualities must be finite numbers")
    return value


def read_quality(path: str | Path) -> QualityTable:
    """A CSV with header image,quality (what `synfiqa score` writes), or a headerless
    two-column text file "image<whitespace>score" (a synfiqa build's Quality-Scores.txt,
    CR-FIQA's score files). An empty quality (an image without a face) is an error."""
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"quality file {str(path)!r} does not exist")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DataFileError(f"{path}: not a text file") from None
    source = str(path)
    first = next((line for line in text.splitlines() if line.strip()), "")
    names, values = [], []
    if "," in first:
        reader = csv.reader(io.StringIO(text))
        header = [cell.strip().lower() for cell in next(reader)]
        if "image" not in header or "quality" not in header:
            raise DataFileError(f"{source} line 1: the header must name columns image and quality, got {', '.join(header)}")
        name_col, value_col = header.index("image"), header.index("quality")
        reason_col = header.index("reason") if "reason" in header else None
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            where = f"{source} line {reader.line_num}"
            if len(row) <= max(name_col, value_col):
                raise DataFileError(f"{where}: expected columns image,quality, got {','.join(row)[:80]!r}")
            name, token = row[name_col].strip(), row[value_col]
            if not token.strip():
                why = f" ({row[reason_col].strip()})" if reason_col is not None and len(row) > reason_col else ""
                raise DataFileError(f"{where}: {name!r} has no quality{why}; drop its pairs or score it again")
            names.append(name)
            values.append(_parse_quality(token, where, name))
    else:
        for number, raw in enumerate(text.splitlines(), start=1):
            tokens = raw.split()
            if not tokens:
                continue
            where = f"{source} line {number}"
            if len(tokens) != 2:
                raise DataFileError(f"{where}: expected 'image quality' (or a CSV with header image,quality), "
                                    f"got {raw.strip()[:80]!r}")
            names.append(tokens[0])
            values.append(_parse_quality(tokens[1], where, tokens[0]))
    if not names:
        raise DataFileError(f"{source}: holds no qualities")
    return QualityTable(names, np.array(values, dtype=np.float64), source)


def quality_table(named_values: dict[str, float], source: str) -> QualityTable:
    names = list(named_values)
    values = np.array([named_values[n] for n in names], dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        raise DataFileError(f"{source}: the quality of {names[int(np.argmax(bad))]!r} is not a finite number")
    return QualityTable(names, values, source)

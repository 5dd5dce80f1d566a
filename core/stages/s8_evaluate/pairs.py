"""Readers for verification-pair files. Every reader returns a PairList whose entries
remember the line they came from, so later errors can point at it.

Formats (``auto`` picks one from the suffix and the first data line):

* ``csv``   a header with columns image_a, image_b, genuine (1/0, true/false, yes/no).
* ``lfw``   LFW-style pairs.txt: an optional header of one or two integers, then
            ``name n1 n2`` (genuine) or ``name1 n1 name2 n2`` (impostor); image names
            become ``name/name_0001.jpg``. ``xqlfw`` is the same format (XQLFW ships
            xqlfw_pairs.txt in LFW's layout).
* ``list``  whitespace-separated ``image_a image_b 1|0`` per line (CR-FIQA's pair_list.txt).
* ``bin``   an insightface verification file (lfw.bin, agedb_30.bin, cfp_fp.bin, calfw.bin,
            cplfw.bin): a pickle of (encoded images, issame list); images 2i and 2i+1 form
            pair i and are named ``00000.jpg``, ``00001.jpg``, ... The encoded images are kept,
            so qualities and embeddings can be computed from the file itself.
"""
from __future__ import annotations

import csv
import io
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from synfiqa.errors import DataFileError

FORMATS = ("auto", "csv", "lfw", "xqlfw", "list", "bin")
_TRUE = {"1", "true", "yes", "y", "t", "same", "genuine"}
_FALSE = {"0", "false", "no", "n", "f", "diff", "different", "impostor"}


@dataclass
class PairList:
    image_a: list[str]
    image_b: list[str]
    genuine: np.ndarray          # bool, one per pair
    lines: np.ndarray            # where each pair came from: line number (1-based) or pair index
    source: str
    format: str
    encoded_images: dict[str, bytes] | None = field(default=None, repr=False)  # only .bin files

    def __post_init__(self):
        self.genuine = np.asarray(self.genuine, dtype=bool)
        self.lines = np.asarray(self.lines, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.image_a)

    def where(self, index: int) -> str:
        unit = "pair" if self.format == "bin" else "line"
        return f"{self.source} {unit} {int(self.lines[index])}"

    def image_names(self) -> list[str]:
        """Every image named by a pair, once, in order of first appearance."""
        return list(dict.fromkeys(name for pair in zip(self.image_a, self.image_b) for name in pair))


def read_pairs(path: str | Path, format: str = "auto") -> PairList:
    path = Path(path)
    if format not in FORMATS:
        raise DataFileError(f"unknown pairs format {format!r}; choose one of {', '.join(FORMATS)}")
    if not path.is_file():
        raise DataFileError(f"pairs file {str(path)!r} does not exist")
    if format == "auto":
        format = detect_format(path)
    if format == "bin":
        return read_insightface_bin(path)
    text = _read_text(path)
    if format == "csv":
        return parse_csv(text, str(path))
    if format in ("lfw", "xqlfw"):
        return parse_lfw(text, str(path), format)
    return parse_list(text, str(path))


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataFileError(f"{path}: not a text file ({error.reason} at byte {error.start}); "
                            f"binary pairs files must be insightface .bin files") from None


def _is_int(token: str) -> bool:
    return token.lstrip("+-").isdigit()


def detect_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".bin":
        return "bin"
    if suffix == ".csv":
        return "csv"
    text = _read_text(path)
    data_lines = [(number, line.strip()) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if not data_lines:
        raise DataFileError(f"{path}: the pairs file is empty")
    number, first = data_lines[0]
    if "," in first and {"image_a", "image_b", "genuine"} <= {c.strip() for c in first.split(",")}:
        return "csv"
    tokens = first.split()
    if 1 <= len(tokens) <= 2 and all(_is_int(t) for t in tokens):
        return "lfw"  # LFW's header: number of folds and pairs per fold
    if len(tokens) in (3, 4) and _is_int(tokens[1]):
        return "lfw"
    if len(tokens) == 3 and tokens[2].lower() in _TRUE | _FALSE:
        return "list"
    raise DataFileError(
        f"{path} line {number}: unknown pairs format ({first[:80]!r}). Expected a CSV with header "
        f"image_a,image_b,genuine; an LFW/XQLFW pairs.txt ('name n1 n2' / 'name1 n1 name2 n2'); "
        f"a list 'image_a image_b 1|0'; or an insightface .bin file"
    )


def _genuine_flag(token: str, where: str) -> bool:
    value = token.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise DataFileError(f"{where}: genuine must be 1 or 0 (or true/false), got {token.strip()!r}")


_FLAGS = {**{token: True for token in _TRUE}, **{token: False for token in _FALSE}}


def parse_csv(text: str, source: str) -> PairList:
    fast = _parse_simple_csv(text, source)
    if fast is not None:
        return fast
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    while header is not None and not any(cell.strip() for cell in header):
        header = next(reader, None)
    if header is None:
        raise DataFileError(f"{source}: the pairs file is empty")
    columns = [cell.strip().lower() for cell in header]
    missing = [name for name in ("image_a", "image_b", "genuine") if name not in columns]
    if missing:
        raise DataFileError(f"{source} line {reader.line_num}: the header lacks column(s) {', '.join(missing)} "
                            f"(found: {', '.join(columns)}); expected image_a,image_b,genuine")
    ia, ib, ig = columns.index("image_a"), columns.index("image_b"), columns.index("genuine")
    width = max(ia, ib, ig) + 1
    image_a, image_b, genuine, lines = [], [], [], []
    for row in reader:
        if not any(cell.strip() for cell in row):
            continue
        where = f"{source} line {reader.line_num}"
        if len(row) < width:
            raise DataFileError(f"{where}: expected {len(columns)} columns, got {len(row)}: {','.join(row)[:80]!r}")
        a, b = row[ia].strip(), row[ib].strip()
        if not a or not b:
            raise DataFileError(f"{where}: an image name is empty")
        image_a.append(a)
        image_b.append(b)
        genuine.append(_genuine_flag(row[ig], where))
        lines.append(reader.line_num)
    if not image_a:
        raise DataFileError(f"{source}: no pairs after the header")
    return PairList(image_a, image_b, np.array(genuine, dtype=bool), np.array(lines), source, "csv")


def _parse_simple_csv(text: str, source: str) -> PairList | None:
    """The common case, a million lines fast: no quoting, no blank lines, exactly the three
    columns. Anything else (or any error, to get its message) goes the careful way."""
    if '"' in text:
        return None
    lines = text.splitlines()
    if len(lines) < 2 or not all(lines) or "\r" in text:
        return None
    header = [cell.strip().lower() for cell in lines[0].split(",")]
    if sorted(header) != ["genuine", "image_a", "image_b"]:
        return None
    rows = [line.split(",") for line in lines[1:]]
    if any(len(row) != 3 for row in rows):
        return None
    columns = list(zip(*rows))
    image_a = [cell.strip() for cell in columns[header.index("image_a")]]
    image_b = [cell.strip() for cell in columns[header.index("image_b")]]
    flags = [_FLAGS.get(cell.strip().lower()) for cell in columns[header.index("genuine")]]
    if None in flags or "" in image_a or "" in image_b:
        return None
    return PairList(image_a, image_b, np.array(flags, dtype=bool), np.arange(2, len(lines) + 1), source, "csv")


def lfw_image_name(person: str, number: str) -> str:
    return f"{person}/{person}_{int(number):04d}.jpg"


def parse_lfw(text: str, source: str, format: str = "lfw") -> PairList:
    image_a, image_b, genuine, lines = [], [], [], []
    seen_data = False
    for number, raw in enumerate(text.splitlines(), start=1):
        tokens = raw.split()
        if not tokens:
            continue
        where = f"{source} line {number}"
        if not seen_data and 1 <= len(tokens) <= 2 and all(_is_int(t) for t in tokens):
            seen_data = True  # the header
            continue
        seen_data = True
        if len(tokens) == 3 and _is_int(tokens[1]) and _is_int(tokens[2]):
            image_a.append(lfw_image_name(tokens[0], tokens[1]))
            image_b.append(lfw_image_name(tokens[0], tokens[2]))
            genuine.append(True)
        elif len(tokens) == 4 and _is_int(tokens[1]) and _is_int(tokens[3]):
            image_a.append(lfw_image_name(tokens[0], tokens[1]))
            image_b.append(lfw_image_name(tokens[2], tokens[3]))
            genuine.append(False)
        else:
            raise DataFileError(f"{where}: expected 'name n1 n2' or 'name1 n1 name2 n2' (LFW pairs format), "
                                f"got {raw.strip()[:80]!r}")
        lines.append(number)
    if not image_a:
        raise DataFileError(f"{source}: no pairs found")
    return PairList(image_a, image_b, np.array(genuine, dtype=bool), np.array(lines), source, format)


def parse_list(text: str, source: str) -> PairList:
    image_a, image_b, genuine, lines = [], [], [], []
    for number, raw in enumerate(text.splitlines(), start=1):
        tokens = raw.split()
        if not tokens:
            continue
        where = f"{source} line {number}"
        if len(tokens) != 3:
            raise DataFileError(f"{where}: expected 'image_a image_b 1|0', got {raw.strip()[:80]!r}")
        image_a.append(tokens[0])
        image_b.append(tokens[1])
        genuine.append(_genuine_flag(tokens[2], where))
        lines.append(number)
    if not image_a:
        raise DataFileError(f"{source}: no pairs found")
    return PairList(image_a, image_b, np.array(genuine, dtype=bool), np.array(lines), source, "list")


# ---------------------------------------------------------------- insightface .bin


class _VerificationBinUnpickler(pickle.Unpickler):
    """Unpickles only what a verification .bin holds (bytes, lists, bools, numpy arrays),
    so opening a downloaded file cannot run code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
        ("builtins", "bytearray"), ("__builtin__", "bytearray"),
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a verification .bin")


def bin_image_name(index: int) -> str:
    return f"{index:05d}.jpg"


def read_insightface_bin(path: str | Path) -> PairList:
    path = Path(path)
    payload = None
    for encoding in ("ASCII", "bytes"):  # Python 3 pickles, then Python 2 ones (str = bytes)
        try:
            with open(path, "rb") as handle:
                payload = _VerificationBinUnpickler(handle, encoding=encoding).load()
            break
        except UnicodeDecodeError:
            continue
        except Exception as error:  # any unpickling failure means: not a verification .bin
            raise DataFileError(f"{path}: not an insightface verification .bin ({error})") from None
    if not (isinstance(payload, (tuple, list)) and len(payload) == 2):
        raise DataFileError(f"{path}: an insightface .bin holds a pair (images, issame_list), "
                            f"got {type(payload).__name__}")
    encoded, issame = payload
    issame = np.asarray(issame)
    if issame.ndim != 1 or issame.dtype.kind not in "biu":
        raise DataFileError(f"{path}: issame_list must be a flat list of booleans")
    if len(encoded) != 2 * len(issame):
        raise DataFileError(f"{path}: {len(encoded)} images for {len(issame)} pairs; expected two images per pair")
    images: dict[str, bytes] = {}
    for index, item in enumerate(encoded):
        if isinstance(item, np.ndarray):
            item = item.tobytes()
        if not isinstance(item, (bytes, bytearray)):
            raise DataFileError(f"{path}: image {index} is {type(item).__name__}, expected encoded bytes")
        images[bin_image_name(index)] = bytes(item)
    names = list(images)
    return PairList(names[0::2], names[1::2], issame.astype(bool), np.arange(1, len(issame) + 1),
                    str(path), "bin", encoded_images=images)


def write_insightface_bin(path: str | Path, encoded_images: list[bytes], issame: list[bool]) -> None:
    """The same layout insightface writes (tests and small custom benchmarks use it)."""
    with open(path, "wb") as handle:
        pickle.dump((list(encoded_images), list(bool(x) for x in issame)), handle, protocol=4)

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
* ``tinyface`` a TinyFace test set (a folder holding Probe/ and Gallery_Match/, itself, its
            Testing_Set/ or tinyface/Testing_Set/): every probe image against every
            Gallery_Match image, genuine iff the identity (the file name up to its first "_")
            is the same; Gallery_Distractor/ only on request (impostors against every probe).
* ``adience`` Adience fold files (fold_<k>_data.txt, tab-separated with columns user_id,
            original_image, face_id, ...; one file or a folder holding fold_0..4): every
            unordered pair of the listed faces, genuine iff the face_id is the same, as
            CR-FIQA's evaluation/extract_adience.py builds its pair_list.txt. Images
            ``faces/<user_id>/coarse_tilt_aligned_face.<face_id>.<original_image>`` (or
            ``aligned/<user_id>/landmark_aligned_face...`` when only that folder exists).

The builders of the last two hold the pairs as two integer index arrays into the image
names, so millions of pairs stay compact (TinyFace: 3,728 probes x 4,443 gallery images =
16.6 M pairs).
"""
from __future__ import annotations

import csv
import io
import pickle
import re
from pathlib import Path

import numpy as np

from synfiqa.errors import DataFileError

FORMATS = ("auto", "csv", "lfw", "xqlfw", "list", "bin", "tinyface", "adience")
INDEXED_FORMATS = ("bin", "tinyface", "adience")  # located by pair number, not by line
_TRUE = {"1", "true", "yes", "y", "t", "same", "genuine"}
_FALSE = {"0", "false", "no", "n", "f", "diff", "different", "impostor"}


class PairList:
    """Verification pairs: the image names once each, two index arrays into them, and a
    genuine flag per pair. ``image_a`` / ``image_b`` give the names per pair (as lists).
    ``lines`` says where each pair came from (line number, 1-based, or pair number);
    ``image_root`` is the folder the names are relative to, when the reader knows it;
    ``notes`` are remarks about the data that belong in the report."""

    def __init__(self, image_a, image_b, genuine, lines, source: str, format: str,
                 encoded_images: dict[str, bytes] | None = None):
        position: dict[str, int] = {}
        index_a = np.empty(len(image_a), dtype=np.int64)
        index_b = np.empty(len(image_b), dtype=np.int64)
        for i, (a, b) in enumerate(zip(image_a, image_b)):  # names in order of first appearance
            index_a[i] = position.setdefault(a, len(position))
            index_b[i] = position.setdefault(b, len(position))
        self._setup(list(position), index_a, index_b, genuine, lines, source, format, encoded_images)

    @classmethod
    def from_indices(cls, names: list[str], index_a, index_b, genuine, source: str, format: str,
                     lines=None, encoded_images=None, image_root: Path | None = None) -> "PairList":
        pairs = cls.__new__(cls)
        pairs._setup(list(names), index_a, index_b, genuine, lines, source, format, encoded_images, image_root)
        return pairs

    def _setup(self, names, index_a, index_b, genuine, lines, source, format, encoded_images, image_root=None):
        self.names = names
        kind = np.int32 if len(names) < 2 ** 31 else np.int64
        self.index_a = np.asarray(index_a, dtype=kind)
        self.index_b = np.asarray(index_b, dtype=kind)
        self.genuine = np.asarray(genuine, dtype=bool)
        self._lines = None if lines is None else np.asarray(lines, dtype=np.int64)
        self.source, self.format = source, format
        self.encoded_images = encoded_images
        self.image_root = image_root
        self.notes: list[str] = []
        if not (len(self.index_a) == len(self.index_b) == len(self.genuine)):
            raise ValueError("index_a, index_b and genuine must have one length")

    @property
    def image_a(self) -> list[str]:
        return [self.names[i] for i in self.index_a.tolist()]

    @property
    def image_b(self) -> list[str]:
        return [self.names[i] for i in self.index_b.tolist()]

    @property
    def lines(self) -> np.ndarray:
        return self._lines if self._lines is not None else np.arange(1, len(self) + 1)

    def __len__(self) -> int:
        return len(self.genuine)

    def __repr__(self) -> str:
        return (f"PairList({len(self)} pairs, {int(self.genuine.sum())} genuine, {len(self.names)} images, "
                f"format={self.format!r}, source={self.source!r})")

    def where(self, index: int) -> str:
        unit = "pair" if self.format in INDEXED_FORMATS else "line"
        line = int(self._lines[index]) if self._lines is not None else index + 1
        return f"{self.source} {unit} {line}"

    def image_names(self) -> list[str]:
        """Every image named by a pair, once, in order of first appearance."""
        used = np.zeros(len(self.names), dtype=bool)
        used[self.index_a] = True
        used[self.index_b] = True
        return self.names if used.all() else [n for n, u in zip(self.names, used) if u]


def read_pairs(path: str | Path, format: str = "auto") -> PairList:
    path = Path(path)
    if format not in FORMATS:
        raise DataFileError(f"unknown pairs format {format!r}; choose one of {', '.join(FORMATS)}")
    if format == "auto":
        if path.is_dir():
            format = detect_folder_format(path)
        elif path.is_file():
            format = detect_format(path)
    if format == "tinyface":
        return read_tinyface(path)
    if format == "adience":
        return read_adience(path)
    if not path.is_file():
        raise DataFileError(f"pairs file {str(path)!r} does not exist")
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
    if ADIENCE_FOLD.fullmatch(path.name):
        return "adience"
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
    count = len(issame)
    return PairList.from_indices(names, np.arange(0, 2 * count, 2), np.arange(1, 2 * count, 2), issame.astype(bool),
                                 str(path), "bin", encoded_images=images)


def write_insightface_bin(path: str | Path, encoded_images: list[bytes], issame: list[bool]) -> None:
    """The same layout insightface writes (tests and small custom benchmarks use it)."""
    with open(path, "wb") as handle:
        pickle.dump((list(encoded_images), list(bool(x) for x in issame)), handle, protocol=4)


# ---------------------------------------------------------------- TinyFace


TINYFACE_PARTS = ("Probe", "Gallery_Match", "Gallery_Distractor")


def tinyface_root(path: str | Path) -> Path | None:
    """The folder holding Probe/ and Gallery_Match/: the path itself, its Testing_Set/ or its
    tinyface/Testing_Set/ (the layout of the TinyFace download)."""
    path = Path(path)
    for candidate in (path, path / "Testing_Set", path / "tinyface" / "Testing_Set"):
        if (candidate / "Probe").is_dir() and (candidate / "Gallery_Match").is_dir():
            return candidate
    return None


def _image_files(folder: Path) -> list[str]:
    """Image files under a folder (recursively), named relative to its parent, sorted."""
    from synfiqa.stages.s8_evaluate.inputs import IMAGE_EXTENSIONS

    return sorted(p.relative_to(folder.parent).as_posix() for p in folder.rglob("*")
                  if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _tinyface_identity(name: str, root: Path) -> int:
    stem = Path(name).name.split("_")[0]
    if not stem.isdigit():
        raise DataFileError(f"{root / name}: a TinyFace image is named <identity>_<n>.<ext> with a numeric "
                            f"identity; got {Path(name).name!r}")
    return int(stem)


def read_tinyface(path: str | Path, distractors: bool = False) -> PairList:
    """Every Probe image against every Gallery_Match image (probe-major order); genuine iff the
    identities agree. With ``distractors``, every probe against every Gallery_Distractor image
    too (impostors; 153k distractors make that 570 M pairs for the full set)."""
    root = tinyface_root(path)
    if root is None:
        raise DataFileError(f"{path}: not a TinyFace test set (no Probe/ and Gallery_Match/ folders in it, "
                            f"its Testing_Set/ or tinyface/Testing_Set/)")
    probes = _image_files(root / "Probe")
    gallery = _image_files(root / "Gallery_Match")
    if distractors and (root / "Gallery_Distractor").is_dir():
        extra = _image_files(root / "Gallery_Distractor")
    else:
        extra = []
    if not probes or not gallery:
        raise DataFileError(f"{root}: Probe/ and Gallery_Match/ must hold images")
    probe_id = np.array([_tinyface_identity(n, root) for n in probes])
    gallery_id = np.array([_tinyface_identity(n, root) for n in gallery] + [-1] * len(extra))
    names = probes + gallery + extra
    count_p, count_g = len(probes), len(gallery) + len(extra)
    index_a = np.repeat(np.arange(count_p), count_g)
    index_b = np.tile(np.arange(count_p, count_p + count_g), count_p)
    genuine = (probe_id[:, None] == gallery_id[None, :]).reshape(-1)
    pairs = PairList.from_indices(names, index_a, index_b, genuine, str(root), "tinyface", image_root=root)
    missing = sorted(set(probe_id.tolist()) - set(gallery_id.tolist()))
    if missing:
        pairs.notes.append(f"{len(missing)} probe identit{'y has' if len(missing) == 1 else 'ies have'} no "
                           f"Gallery_Match image (only impostor pairs), e.g. {missing[0]}")
    return pairs


# ---------------------------------------------------------------- Adience


ADIENCE_FOLD = re.compile(r"fold_(\d+)_data\.txt")
ADIENCE_IMAGE_FOLDERS = (("faces", "coarse_tilt_aligned_face"), ("aligned", "landmark_aligned_face"))


def adience_fold_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted((p for p in path.iterdir() if ADIENCE_FOLD.fullmatch(p.name)),
                  key=lambda p: int(ADIENCE_FOLD.fullmatch(p.name).group(1)))


def read_adience(path: str | Path, image_folder: str | None = None) -> PairList:
    """Every unordered pair (i < j, in fold-file order) of the faces the fold files list;
    genuine iff the face_id agrees (CR-FIQA's rule: extract_adience.py names each image by
    its face_id and pairs every image with every later one). A face listed twice counts once.
    ``image_folder``: "faces" or "aligned"; by default the one that exists beside the fold
    files ("faces" when both or neither do)."""
    path = Path(path)
    if not path.exists():
        raise DataFileError(f"Adience fold file or folder {str(path)!r} does not exist")
    files = adience_fold_files(path)
    if not files:
        raise DataFileError(f"{path}: no Adience fold files (fold_<k>_data.txt) in it")
    root = files[0].parent
    if image_folder is None:
        present = [folder for folder, _ in ADIENCE_IMAGE_FOLDERS if (root / folder).is_dir()]
        image_folder = present[0] if present else "faces"
    prefix = dict(ADIENCE_IMAGE_FOLDERS).get(image_folder)
    if prefix is None:
        raise DataFileError(f"Adience image folder must be one of faces, aligned; got {image_folder!r}")
    names, identities, seen = [], [], set()
    users_of: dict[str, set[str]] = {}
    for file in files:
        text = _read_text(file)
        rows = [line.split("\t") for line in text.splitlines() if line.strip()]
        if not rows:
            raise DataFileError(f"{file}: empty")
        header = [cell.strip() for cell in rows[0]]
        missing = [c for c in ("user_id", "original_image", "face_id") if c not in header]
        if missing:
            raise DataFileError(f"{file} line 1: an Adience fold file needs tab-separated columns user_id, "
                                f"original_image, face_id; missing {', '.join(missing)}")
        cu, co, cf = header.index("user_id"), header.index("original_image"), header.index("face_id")
        for number, row in enumerate(rows[1:], start=2):
            if len(row) <= max(cu, co, cf):
                raise DataFileError(f"{file} line {number}: expected {len(header)} tab-separated columns, "
                                    f"got {len(row)}")
            user, original, face = row[cu].strip(), row[co].strip(), row[cf].strip()
            if not face.isdigit():
                raise DataFileError(f"{file} line {number}: face_id must be a number, got {face!r}")
            name = f"{image_folder}/{user}/{prefix}.{face}.{original}"
            if name in seen:
                continue
            seen.add(name)
            names.append(name)
            identities.append(int(face))
            users_of.setdefault(face, set()).add(user)
    count = len(names)
    if count < 2:
        raise DataFileError(f"{path}: fewer than two faces listed")
    index_a, index_b = upper_triangle_pairs(count)
    identity = np.array(identities)
    genuine = identity[index_a] == identity[index_b]
    source = str(path)
    pairs = PairList.from_indices(names, index_a, index_b, genuine, source, "adience", image_root=root)
    shared = sorted(int(face) for face, users in users_of.items() if len(users) > 1)
    if shared:
        pairs.notes.append(f"{len(shared)} face_id(s) appear under several user_ids (e.g. {shared[0]}); "
                           f"as in CR-FIQA, the face_id alone is the identity")
    return pairs


def upper_triangle_pairs(count: int) -> tuple[np.ndarray, np.ndarray]:
    """(i, j) for all i < j, row by row, as int32 (int64 beyond 2^31 images)."""
    kind = np.int32 if count < 2 ** 31 else np.int64
    total = count * (count - 1) // 2
    index_a = np.repeat(np.arange(count - 1, dtype=kind), np.arange(count - 1, 0, -1))
    starts = np.cumsum(np.r_[0, np.arange(count - 1, 1, -1)])       # where row i starts
    index_b = np.arange(total, dtype=np.int64) - np.repeat(starts, np.arange(count - 1, 0, -1)) + index_a + 1
    return index_a, index_b.astype(kind)


def detect_folder_format(path: Path) -> str:
    if tinyface_root(path) is not None:
        return "tinyface"
    if adience_fold_files(path):
        return "adience"
    raise DataFileError(f"{path}: a folder is read as a TinyFace test set (Probe/, Gallery_Match/) or as "
                        f"Adience fold files (fold_<k>_data.txt); found neither")

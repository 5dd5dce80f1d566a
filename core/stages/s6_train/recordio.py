"""MXNet RecordIO (`train.rec` + `train.idx`, what CR-FIQA and InsightFace train from), read
without mxnet.

A record: uint32 magic 0xced7230a, uint32 `lrecord` (upper 3 bits: the continue flag,
lower 29: the length), the payload padded to 4 bytes. A record longer than one part (or
one whose payload holds the magic number) is split: flag 1 starts it, 2 continues it, 3
ends it, and the reader puts the magic number back between the parts (dmlc-core's
RecordIOReader). The payload of an image record is the IRHeader struct `IfQQ` (flag,
label, id, id2), then, when flag > 0, `flag` float32 labels (the label is then the
first), then the encoded image. `train.idx` holds one `key<TAB>offset` line per record.

InsightFace's datasets start with a header record (key 0, flag > 0) whose labels are the
range of image keys [1, label[0]); without one, every key of the index is an image.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from synfiqa.errors import DataFileError

MAGIC = 0xCED7230A
_HEADER = struct.Struct("<IfQQ")
_LENGTH_MASK = (1 << 29) - 1


@dataclass(frozen=True)
class Record:
    flag: int
    label: float | np.ndarray   # one float, or `flag` float32 labels when flag > 0
    id: int
    id2: int
    payload: bytes              # the encoded image

    @property
    def first_label(self) -> float:
        return float(self.label[0]) if isinstance(self.label, np.ndarray) else float(self.label)


def read_index(path: str | Path) -> dict[int, int]:
    """`key<TAB>offset` lines -> {key: offset}; a malformed line is a DataFileError naming it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise DataFileError(f"{path}: cannot be read as a RecordIO index ({error})") from None
    index = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("\t")
        try:
            key, offset = int(parts[0]), int(parts[1])
            if offset < 0 or len(parts) != 2:
                raise ValueError
        except (ValueError, IndexError):
            raise DataFileError(f"{path}:{number}: expected 'key<TAB>offset', got {line[:80]!r}") from None
        index[key] = offset
    if not index:
        raise DataFileError(f"{path}: an empty RecordIO index")
    return index


def unpack(payload: bytes, where: str) -> Record:
    """The IRHeader, the labels and the image bytes of one record's payload."""
    if len(payload) < _HEADER.size:
        raise DataFileError(f"{where}: a record of {len(payload)} bytes is shorter than its header")
    flag, label, id1, id2 = _HEADER.unpack_from(payload)
    body = payload[_HEADER.size:]
    if flag > 0:
        if len(body) < 4 * flag:
            raise DataFileError(f"{where}: the header announces {flag} labels but the record is too short")
        labels = np.frombuffer(body, dtype="<f4", count=flag).copy()
        return Record(flag, labels, id1, id2, bytes(body[4 * flag:]))
    return Record(flag, float(label), id1, id2, bytes(body))


class RecordFile:
    """Random access to the records of a .rec file through its .idx. Opens the file lazily,
    once per process (a DataLoader worker gets its own handle)."""

    def __init__(self, rec: str | Path, idx: str | Path | None = None):
        self.rec = Path(rec)
        self.idx = Path(idx) if idx is not None else self.rec.with_suffix(".idx")
        if not self.rec.is_file():
            raise DataFileError(f"RecordIO file {str(self.rec)!r} does not exist")
        if not self.idx.is_file():
            raise DataFileError(f"{self.rec}: its index {self.idx.name} is missing (key<TAB>offset lines)")
        self.index = read_index(self.idx)
        self.size = self.rec.stat().st_size
        self._handle = None
        self._pid = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_handle"] = None
        return state

    def _file(self):
        import os

        if self._handle is None or self._pid != os.getpid():
            self._handle = open(self.rec, "rb")
            self._pid = os.getpid()
        return self._handle

    def keys(self) -> list[int]:
        return sorted(self.index)

    def read_raw(self, key: int) -> bytes:
        """The payload of the record at `key` (parts joined)."""
        if key not in self.index:
            raise DataFileError(f"{self.rec}: no record with key {key} in {self.idx.name}")
        handle = self._file()
        offset = self.index[key]
        where = f"{self.rec} (record {key} at byte {offset})"
        parts: list[bytes] = []
        while True:
            if offset + 8 > self.size:
                raise DataFileError(f"{where}: truncated (the file ends inside a record header)")
            handle.seek(offset)
            magic, lrecord = struct.unpack("<II", handle.read(8))
            if magic != MAGIC:
                raise DataFileError(f"{where}: not a RecordIO record (magic 0x{magic:08x}, expected 0x{MAGIC:08x}); "
                                    f"the .idx does not belong to this .rec, or the file is damaged")
            flag, length = lrecord >> 29, lrecord & _LENGTH_MASK
            if offset + 8 + length > self.size:
                raise DataFileError(f"{where}: truncated (a record of {length} bytes runs past the end of the file)")
            parts.append(handle.read(length))
            offset += 8 + length + (-length % 4)
            if flag in (0, 3):
                break
            if flag not in (1, 2):
                raise DataFileError(f"{where}: continue flag {flag} is not a RecordIO flag")
        return struct.pack("<I", MAGIC).join(parts)

    def read(self, key: int) -> Record:
        return unpack(self.read_raw(key), f"{self.rec} (record {key})")

    def image_bytes(self, key: int) -> bytes:
        """The encoded image of the record at `key`."""
        return self.read(key).payload

    def header(self, key: int) -> Record:
        """The record's header and labels (its payload left empty), reading only those bytes:
        scanning the labels of a large .rec does not read its images."""
        if key not in self.index:
            raise DataFileError(f"{self.rec}: no record with key {key} in {self.idx.name}")
        handle = self._file()
        offset = self.index[key]
        handle.seek(offset)
        head = handle.read(8 + _HEADER.size)
        if len(head) < 8 + _HEADER.size or struct.unpack_from("<I", head)[0] != MAGIC:
            return self.read(key)  # the full read names what is wrong
        lrecord = struct.unpack_from("<I", head, 4)[0]
        flag, length = lrecord >> 29, lrecord & _LENGTH_MASK
        label_flag = _HEADER.unpack_from(head, 8)[0]
        wanted = _HEADER.size + 4 * label_flag
        if flag not in (0, 1) or length < wanted or offset + 8 + length > self.size:
            return self.read(key)
        payload = head[8:] + (handle.read(4 * label_flag) if label_flag else b"")
        return unpack(payload, f"{self.rec} (record {key})")

    def image_keys(self) -> list[int]:
        """The keys of the image records: [1, label[0]) when key 0 is InsightFace's header
        record, else every key."""
        keys = self.keys()
        if 0 in self.index:
            first = self.read(0)
            if first.flag > 0 and isinstance(first.label, np.ndarray) and not first.payload:
                end = int(first.label[0])
                return [k for k in range(1, end) if k in self.index]
        return keys

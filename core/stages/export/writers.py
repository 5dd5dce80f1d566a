"""`synfiqa export DATASET --format F --out DIR`: a finished build in the formats large
datasets travel in (docs/export.md). Every file is written under a temporary name and
renamed into place when complete: a killed export leaves no half file under a final name,
and DIR/export.json, written last, says the export is complete.

    parquet      DIR/samples.parquet: one row per sample, every parameter and score a column
    webdataset   DIR/shard-NNNNNN.tar: about `identities_per_shard` identities per shard;
                 per sample <key>.jpg, <key>.json, <key>.cls together, keys without dots
    recordio     DIR/train.rec, train.idx, property: MXNet RecordIO as InsightFace's and
                 CR-FIQA's MXFaceDataset read it (label[0] = identity index, label[1] = MR)
    hf           DIR/train/<identity>/<file> and DIR/train/metadata.jsonl: the `datasets`
                 imagefolder layout
"""
from __future__ import annotations

import json
import math
import os
import shutil
import struct
import tarfile
import time
from contextlib import contextmanager
from pathlib import Path

from synfiqa.errors import ConfigError, OutputWriteError
from synfiqa.progress import progress as progress_bar
from synfiqa.stages.export.source import ROLES, Build, Sample, read_build
from synfiqa.store import STATE, StageFolder, temporary_name, write_error, write_text_atomic

FORMATS = ("parquet", "webdataset", "recordio", "hf")
MARKER = f"{STATE}/export.json"
DONE = "export.json"
PARQUET = "samples.parquet"
SHARD = "shard-{:06d}.tar"
HF_SPLIT = "train"
HF_METADATA = "metadata.jsonl"
REC, IDX, PROPERTY = "train.rec", "train.idx", "property"
INSTALL_HINT = 'pip install "synfiqa[export]"'

# ---------------------------------------------------------------- shared


@contextmanager
def atomic_file(path: Path, root: Path, sync: bool = True):
    """A file written through a temporary name and renamed into place when the block ends
    without an error (synced first unless `sync` is false: the caller syncs many small files
    at once); on any error the temporary is removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_name(path)
    try:
        with open(temporary, "wb") as handle:
            yield handle
            handle.flush()
            if sync:
                os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise write_error(root, error) from None
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def sample_key(sample: Sample) -> str:
    """The WebDataset key: ASCII, no dots, unique, sorting in export order."""
    return f"{sample.identity_index:06d}_{sample.role[0]}{sample.index:06d}"


def flat_columns(samples: list[Sample]) -> list[str]:
    """Every column of a flat table of the samples: fixed ones, then params.*, scores.* and
    the other recorded keys (source, circular, control.*, ...), each sorted."""
    params, scores, extra = set(), set(), set()
    for sample in samples:
        params.update(sample.params)
        scores.update(sample.scores)
        extra.update(sample.extra)
    return (["key", "identity", "identity_index", "role", "index", "path", "quality"]
            + [f"params.{k}" for k in sorted(params)] + [f"scores.{k}" for k in sorted(scores)] + sorted(extra))


def flat_row(sample: Sample) -> dict:
    row = {"key": sample.key, "identity": sample.identity, "identity_index": sample.identity_index,
           "role": sample.role, "index": sample.index, "path": sample.path, "quality": sample.label}
    row.update({f"params.{k}": v for k, v in sample.params.items()})
    row.update({f"scores.{k}": v for k, v in sample.scores.items()})
    row.update(sample.extra)
    return row


def _require(module: str, fmt: str) -> None:
    """A missing optional dependency, named before anything is written."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ConfigError(f"--format {fmt} needs {module}, which is not installed: {INSTALL_HINT}")


# ---------------------------------------------------------------- parquet


def write_parquet(build: Build, out: Path, progress=None) -> dict:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError(f"--format parquet needs pyarrow, which is not installed: {INSTALL_HINT}") from None

    columns = flat_columns(build.samples)
    rows = [flat_row(s) for s in build.samples]
    arrays, fields = [], []
    for name in columns:
        values = [row.get(name) for row in rows]
        if name.startswith(("params.", "scores.")) or name == "quality":
            array = pa.array([None if v is None else float(v) for v in values], type=pa.float64())
        else:
            try:
                array = pa.array(values)
            except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed types: each value as JSON text
                array = pa.array([None if v is None else json.dumps(v, sort_keys=True) for v in values], pa.string())
        arrays.append(array)
        fields.append(pa.field(name, array.type))
    metadata = {"synfiqa.dataset": str(build.root.resolve()), "synfiqa.quality": build.label_name or "",
                "synfiqa.identities": json.dumps(build.identities)}
    table = pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=metadata))
    with atomic_file(out / PARQUET, out) as handle:
        pq.write_table(table, handle, compression="zstd")
    return {"files": [PARQUET], "columns": len(columns)}


# ---------------------------------------------------------------- webdataset


def _tar_add(tar: tarfile.TarFile, name: str, data: bytes, mtime: int) -> None:
    import io

    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), mtime, 0o644
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def shard_groups(build: Build, identities_per_shard: int) -> list[list[Sample]]:
    groups: list[list[Sample]] = []
    for sample in build.samples:
        shard = sample.identity_index // identities_per_shard
        while len(groups) <= shard:
            groups.append([])
        groups[shard].append(sample)
    return [g for g in groups if g]


def write_webdataset(build: Build, out: Path, identities_per_shard: int = 100, progress=None) -> dict:
    mtime = int((build.root / "manifest.jsonl").stat().st_mtime)
    names = []
    bar = progress_bar(total=len(build.samples), enabled=progress, description="webdataset", unit="sample")
    for number, group in enumerate(shard_groups(build, identities_per_shard)):
        name = SHARD.format(number)
        with atomic_file(out / name, out) as handle:
            with tarfile.open(fileobj=handle, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for sample in group:
                    key = sample_key(sample)
                    suffix = Path(sample.path).suffix.lower().lstrip(".") or "jpg"
                    _tar_add(tar, f"{key}.{suffix}", build.image_path(sample).read_bytes(), mtime)
                    _tar_add(tar, f"{key}.json", json.dumps(sample.record(), sort_keys=True).encode(), mtime)
                    _tar_add(tar, f"{key}.cls", str(sample.identity_index).encode(), mtime)
                    bar.update(1)
        names.append(name)
    bar.close()
    return {"files": names, "shards": len(names), "identities_per_shard": identities_per_shard}


# ---------------------------------------------------------------- recordio

# dmlc-core's RecordIO: every record starts with this word and a uint32 whose upper 3 bits
# are the continue flag and lower 29 the length; payloads are padded to 4 bytes
REC_MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", REC_MAGIC)
IR_HEADER = struct.Struct("<IfQQ")   # MXNet's IRHeader: flag, label, id, id2


def pack_record(labels: list[float], key: int, image: bytes = b"") -> bytes:
    """mx.recordio.pack(IRHeader(0, labels, key, 0), image): several labels go after the
    header as float32 and `flag` says how many (the header's own label is then 0)."""
    return IR_HEADER.pack(len(labels), 0.0, key, 0) + struct.pack(f"<{len(labels)}f", *labels) + image


def frame_record(payload: bytes) -> bytes:
    """dmlc RecordIOWriter::WriteRecord: the payload split at every 4-byte-aligned copy of the
    magic word (flags 1 = first part, 2 = middle, 3 = last; the reader puts the magic back),
    the last part padded to 4 bytes."""
    if len(payload) >= 1 << 29:
        raise ValueError("a RecordIO record holds at most 2**29 - 1 bytes")
    parts, start = [], 0
    position = payload.find(_MAGIC_BYTES)
    while position != -1:
        if position % 4 == 0:
            parts.append((1 if start == 0 else 2, payload[start:position]))
            start = position + 4
            position = payload.find(_MAGIC_BYTES, start)
        else:
            position = payload.find(_MAGIC_BYTES, position + 1)
    parts.append((3 if start else 0, payload[start:]))
    out = bytearray()
    for flag, part in parts:
        out += _MAGIC_BYTES + struct.pack("<I", (flag << 29) | len(part)) + part
    out += b"\0" * (-len(parts[-1][1]) % 4)
    return bytes(out)


def image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as image:
        return image.size


def write_recordio(build: Build, out: Path, progress=None) -> dict:
    """Keys 1..N: the images (labels [identity index, MR], MR NaN for references); key 0:
    the header, labels [N + 1, N + 1 + K]; keys N + 1 .. N + K: one record per identity,
    labels [first key, end key) of its images (InsightFace's face2rec2 layout)."""
    n, k = len(build.samples), len(build.identities)
    ranges: list[list[int]] = [[0, 0] for _ in range(k)]
    offsets: list[tuple[int, int]] = []
    bar = progress_bar(total=n, enabled=progress, description="recordio", unit="sample")
    with atomic_file(out / REC, out) as handle:
        position = 0

        def put(key: int, payload: bytes) -> None:
            nonlocal position
            data = frame_record(payload)
            handle.write(data)
            offsets.append((key, position))
            position += len(data)

        put(0, pack_record([float(n + 1), float(n + 1 + k)], 0))
        for key, sample in enumerate(build.samples, start=1):
            quality = math.nan if sample.label is None else float(sample.label)
            put(key, pack_record([float(sample.identity_index), quality], key, build.image_path(sample).read_bytes()))
            span = ranges[sample.identity_index]
            span[0] = span[0] or key
            span[1] = key + 1
            bar.update(1)
        for number, (first, end) in enumerate(ranges):
            put(n + 1 + number, pack_record([float(first), float(end)], n + 1 + number))
    bar.close()
    with atomic_file(out / IDX, out) as handle:
        handle.write("".join(f"{key}\t{offset}\n" for key, offset in offsets).encode())
    width, height = image_size(build.image_path(build.samples[0]))
    write_text_atomic(out / PROPERTY, f"{k},{height},{width}\n")
    return {"files": [REC, IDX, PROPERTY], "records": len(offsets), "image_size": [height, width]}


# ---------------------------------------------------------------- hf imagefolder


def write_hf(build: Build, out: Path, progress=None) -> dict:
    split = out / HF_SPLIT
    columns = flat_columns(build.samples)
    lines = []
    bar = progress_bar(total=len(build.samples), enabled=progress, description="hf", unit="sample")
    for sample in build.samples:
        name = f"{sample.identity}/{sample.file_name}"
        with atomic_file(split / name, out, sync=False) as handle, open(build.image_path(sample), "rb") as source:
            shutil.copyfileobj(source, handle)
        row = flat_row(sample)
        lines.append(json.dumps({"file_name": name, **{c: row.get(c) for c in columns}}, sort_keys=False))
        bar.update(1)
    bar.close()
    os.sync()  # the images on disk before the metadata that names them (one sync, not one per image)
    with atomic_file(split / HF_METADATA, out) as handle:  # last: the images it names are there
        handle.write(("\n".join(lines) + "\n").encode())
    return {"files": [f"{HF_SPLIT}/{HF_METADATA}"], "images": len(lines)}


# ---------------------------------------------------------------- the command


def _owned(fmt: str, out: Path) -> tuple[str, ...]:
    fixed = {"parquet": (PARQUET,), "recordio": (REC, IDX, PROPERTY), "hf": (HF_SPLIT,), "webdataset": ()}[fmt]
    shards = tuple(p.name for p in out.glob("shard-*.tar")) if fmt == "webdataset" and out.is_dir() else ()
    return (STATE, DONE) + fixed + shards


def export_dataset(dataset: str | Path, fmt: str, out: str | Path, *, overwrite: bool = False,
                   roles: tuple[str, ...] = ROLES, identities_per_shard: int = 100, progress: bool | None = None,
                   echo=print) -> dict:
    """Export the build in `dataset` to `out` in `fmt`; returns what export.json records."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if identities_per_shard < 1:
        raise ConfigError("--identities-per-shard must be at least 1")
    if fmt == "parquet":
        _require("pyarrow", fmt)
    dataset, out = Path(dataset), Path(out)
    if out.resolve() == dataset.resolve() or out.resolve().is_relative_to(dataset.resolve()):
        raise ConfigError(f"--out {out} lies inside the dataset {dataset}: choose a folder outside it")
    started = time.perf_counter()
    build = read_build(dataset, roles)
    description = {"format": fmt, "dataset": str(dataset.resolve()), "roles": list(roles)}
    if fmt == "webdataset":
        description["identities_per_shard"] = identities_per_shard
    with StageFolder(out, marker=MARKER, what=f"{fmt} export", owned=_owned(fmt, out),
                     settings="other export settings") as folder:
        folder.claim(description, overwrite)
        (out / DONE).unlink(missing_ok=True)  # written again last, when this export is complete
        if fmt == "webdataset":  # shards of an earlier export that this one does not write again
            for stale in out.glob("shard-*.tar"):
                stale.unlink()
        writer = {"parquet": write_parquet, "webdataset": write_webdataset, "recordio": write_recordio,
                  "hf": write_hf}[fmt]
        kwargs = {"identities_per_shard": identities_per_shard} if fmt == "webdataset" else {}
        try:
            result = writer(build, out, progress=progress, **kwargs)
        except OSError as error:
            raise write_error(out, error) from None
        seconds = time.perf_counter() - started
        summary = {**description, **result, "samples": len(build.samples), "identities": len(build.identities),
                   "references": sum(1 for s in build.samples if s.role == "reference"),
                   "degraded": sum(1 for s in build.samples if s.role == "degraded"),
                   "quality": build.label_name, "seconds": round(seconds, 3),
                   "samples_per_second": round(len(build.samples) / seconds, 1) if seconds > 0 else None}
        try:
            write_text_atomic(out / DONE, json.dumps(summary, indent=2, sort_keys=True) + "\n")
        except OSError as error:
            raise write_error(out, error) from None
    echo(f"export: {summary['samples']} samples of {summary['identities']} identities as {fmt} in {out} "
         f"({seconds:.1f} s, {summary['samples_per_second']} samples/s)")
    return summary


__all__ = ["FORMATS", "OutputWriteError", "export_dataset", "frame_record", "pack_record", "sample_key"]

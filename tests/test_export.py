"""`synfiqa export`: every format read back by its consumer's reader (pyarrow, tarfile, an
independent RecordIO reader written here, `datasets`' imagefolder), with every sample,
identity and label of the build present; a killed export leaves no half file; bad input is
one line.

The build is made here by hand in the SynFIQA layout (random JPEGs, a manifest with the
fields a real build records, Quality-Scores.txt written as text), so what the export must
contain is known independently of synfiqa's own readers."""
from __future__ import annotations

import io
import json
import math
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

IDENTITIES = ["ann", "j.doe", "zoë"]   # a dot (keys must not have one) and a non-ASCII name
REFERENCES, DEGRADED = 2, 3
MAGIC = 0xCED7230A


def _jpeg(rng) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def build(tmp_path_factory) -> dict:
    """A finished build: 3 identities x (2 references + 3 degraded); returns its ground truth."""
    root = tmp_path_factory.mktemp("build") / "ds"
    rng = np.random.default_rng(0)
    (root / ".synfiqa").mkdir(parents=True)
    (root / ".synfiqa" / "build.json").write_text('{"fingerprint": "test"}\n')
    rows, scores, truth = [], [], {}
    for identity in IDENTITIES:
        (root / "data" / identity).mkdir(parents=True)
        for role, count in (("reference", REFERENCES), ("degraded", DEGRADED)):
            for k in range(count):
                name = f"Ref-{k}.jpg" if role == "reference" else f"{k}.jpg"
                data = _jpeg(rng)
                if identity == "ann" and name == "1.jpg":
                    # the RecordIO magic word at a 4-byte-aligned offset of the payload (header + 2
                    # labels = 32 bytes): the writer must split the record there (a decoder ignores
                    # bytes after the JPEG's end)
                    data += b"\0" * (-len(data) % 4) + struct.pack("<I", MAGIC) + b"tail"
                (root / "data" / identity / name).write_bytes(data)
                row = {"identity": identity, "index": k, "role": role, "status": "ok",
                       "path": f"data/{identity}/{name}", "source": f"{identity}_1.jpg",
                       "params": {"pose.abs_yaw": float(rng.uniform(0, 30))},
                       "plugins": {"generator": "folder (synfiqa 0.1.0)"}, "control.light": "left"}
                quality = None
                if role == "degraded":
                    quality = round(float(rng.uniform()), 6)
                    row["params"]["blur.sigma"] = float(rng.uniform(0, 3))
                    row["scores"] = {"fr": float(rng.uniform()), "sd": float(rng.uniform()), "mr": quality}
                    row["partial"] = ["computed without vl"]
                    if identity == "ann":
                        row["circular"] = True
                    scores.append(f"/{identity}/{name}\t{quality:.6f}\n")
                rows.append(row)
                truth[f"/{identity}/{name}"] = {"row": row, "bytes": data, "quality": quality,
                                               "identity_index": IDENTITIES.index(identity)}
    # a skipped photo row: not a sample
    rows.append({"identity": "ann", "role": "source", "status": "skipped", "reason": "no-face", "source": "x.jpg"})
    rng.shuffle(rows)
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "Quality-Scores.txt").write_text("".join(sorted(scores)))
    (root / "summary.json").write_text(json.dumps({"quality_score": "mr"}))
    return {"root": root, "truth": truth}


def _export(build, fmt, out, *extra) -> None:
    from synfiqa_cli.main import cli

    result = CliRunner().invoke(cli, ["export", str(build["root"]), "--format", fmt, "--out", str(out), *extra])
    assert result.exit_code == 0, result.output
    expected = len(build["truth"]) if "degraded" not in extra else len(IDENTITIES) * DEGRADED
    assert json.loads((out / "export.json").read_text())["samples"] == expected


def _decoded(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


# ---------------------------------------------------------------- parquet


def test_parquet_has_one_row_per_sample_with_every_parameter_and_score(build, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    _export(build, "parquet", tmp_path / "out")
    table = pq.read_table(tmp_path / "out" / "samples.parquet")
    rows = {row["key"]: row for row in table.to_pylist()}
    assert set(rows) == set(build["truth"])
    for key, expected in build["truth"].items():
        row, source = rows[key], expected["row"]
        assert row["identity"] == source["identity"] and row["role"] == source["role"]
        assert row["identity_index"] == expected["identity_index"] and row["index"] == source["index"]
        assert row["quality"] == expected["quality"]  # None for references
        assert (build["root"] / row["path"]).read_bytes() == expected["bytes"]
        for name, value in source["params"].items():
            assert row[f"params.{name}"] == value
        for name, value in source.get("scores", {}).items():
            assert row[f"scores.{name}"] == value
        assert row["control.light"] == "left" and row["source"] == source["source"]
        assert row["circular"] == source.get("circular")
    assert table.schema.field("params.blur.sigma").type == "double"
    assert json.loads(table.schema.metadata[b"synfiqa.identities"]) == IDENTITIES


# ---------------------------------------------------------------- webdataset


def _read_shards(folder: Path) -> dict[str, dict]:
    """tarfile as WebDataset reads a shard: a sample is the run of consecutive members with
    one key (the name up to its first dot); a key seen again after another is an error."""
    samples, seen = {}, set()
    for shard in sorted(folder.glob("shard-*.tar")):
        previous = None
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                key, _, extension = member.name.partition(".")
                if key != previous:
                    assert key not in seen, f"{key} split across the shard"
                    seen.add(key)
                    samples[key] = {"shard": shard.name}
                    previous = key
                samples[key][extension] = tar.extractfile(member).read()
    return samples


def test_webdataset_shards_hold_every_sample_together(build, tmp_path):
    out = tmp_path / "out"
    _export(build, "webdataset", out, "--identities-per-shard", "2")
    assert sorted(p.name for p in out.glob("*.tar")) == ["shard-000000.tar", "shard-000001.tar"]
    samples = _read_shards(out)
    assert len(samples) == len(build["truth"])
    shards_of = {}
    for key, sample in samples.items():
        assert "." not in key and key.isascii()
        assert set(sample) == {"shard", "jpg", "json", "cls"}
        record = json.loads(sample["json"])
        expected = build["truth"][record["key"]]
        assert sample["jpg"] == expected["bytes"]
        assert record["quality"] == expected["quality"]
        assert record["identity_index"] == expected["identity_index"] == int(sample["cls"])
        assert record["params"] == expected["row"]["params"]
        assert record["scores"] == expected["row"].get("scores", {})
        shards_of.setdefault(record["identity"], set()).add(sample["shard"])
    assert all(len(shards) == 1 for shards in shards_of.values())  # an identity never spans two shards
    assert shards_of["ann"] == shards_of["j.doe"] == {"shard-000000.tar"}


def test_webdataset_reads_the_shards(build, tmp_path):
    wds = pytest.importorskip("webdataset")
    out = tmp_path / "out"
    _export(build, "webdataset", out)
    keys = [json.loads(s["json"])["key"] for s in wds.WebDataset(str(out / "shard-000000.tar"), shardshuffle=False)]
    assert sorted(keys) == sorted(build["truth"])


def test_the_torch_dataset_over_shards_gives_train_s_sample_format(build, tmp_path):
    import torch

    from synfiqa.stages.export import WebDatasetFaces

    out = tmp_path / "out"
    _export(build, "webdataset", out, "--identities-per-shard", "1")
    dataset = WebDatasetFaces(out)
    assert len(dataset) == len(build["truth"]) and dataset.num_classes == len(IDENTITIES)
    records = {json.loads(s["json"])["key"]: s for s in _read_shards(out).values()}
    found = set()
    for i in range(len(dataset)):
        item = dataset[i]
        assert item["error"] == "" and item["image"].dtype == torch.uint8 and item["image"].shape == (3, 112, 112)
        # which sample it is: by its pixels, against the build's own files
        matches = [key for key, e in build["truth"].items()
                   if np.array_equal(_decoded(e["bytes"]), item["image"].permute(1, 2, 0).numpy())]
        assert len(matches) == 1
        expected = build["truth"][matches[0]]
        found.add(matches[0])
        assert item["identity"] == expected["identity_index"]
        assert (math.isnan(item["label"]) if expected["quality"] is None else item["label"] == expected["quality"])
        assert item["params"] == expected["row"]["params"]
        flipped = dataset[(i, True)]["image"]
        assert torch.equal(flipped, item["image"].flip(-1))
    assert found == set(build["truth"]) and len(records) == len(found)


# ---------------------------------------------------------------- recordio


def read_recordio(rec: Path, idx: Path) -> dict[int, tuple[tuple, np.ndarray, bytes]]:
    """An independent reader of dmlc RecordIO + MXNet's IRHeader: key -> ((flag, label, id,
    id2), float32 labels, image bytes), checking that every .idx offset starts a record."""
    data = rec.read_bytes()
    offsets = {}
    for line in idx.read_text().splitlines():
        key, offset = line.split("\t")
        offsets[int(key)] = int(offset)
    records = {}
    for key, position in offsets.items():
        payload, first = b"", True
        while True:
            magic, lrecord = struct.unpack_from("<II", data, position)
            assert magic == MAGIC, f"record {key}: no magic at {position}"
            flag, length = lrecord >> 29, lrecord & ((1 << 29) - 1)
            assert flag == (0 if first else flag) or flag == 1 or not first, flag
            payload += data[position + 8:position + 8 + length]
            position += 8 + length + (-length % 4)
            if flag in (0, 3):
                break
            payload += struct.pack("<I", MAGIC)
            first = False
        header = struct.unpack_from("<IfQQ", payload)
        labels = np.frombuffer(payload, dtype="<f4", count=header[0], offset=24)
        records[key] = (header, labels, payload[24 + 4 * header[0]:])
    return records


def test_recordio_is_what_mxface_dataset_reads(build, tmp_path):
    out = tmp_path / "out"
    _export(build, "recordio", out)
    records = read_recordio(out / "train.rec", out / "train.idx")
    n, k = len(build["truth"]), len(IDENTITIES)
    header0, labels0, body0 = records[0]
    assert header0[0] == 2 and body0 == b""
    assert list(labels0) == [n + 1, n + 1 + k]   # MXFaceDataset: images are keys 1 .. label[0] - 1
    assert set(records) == set(range(n + 1 + k))
    by_bytes = {e["bytes"]: e for e in build["truth"].values()}
    assert len(by_bytes) == n
    seen = []
    for key in range(1, n + 1):
        header, labels, image = records[key]
        expected = by_bytes[image]                 # every image's exact bytes, the split one too
        seen.append(image)
        assert header[0] == 2 and header[2] == key
        assert labels[0] == expected["identity_index"]   # MXFaceDataset: label = header.label[0]
        if expected["quality"] is None:
            assert math.isnan(labels[1])
        else:
            assert labels[1] == np.float32(expected["quality"])
    assert len(set(seen)) == n
    for number in range(k):                          # identity records: [first key, end key)
        _, (first, end), _ = records[n + 1 + number]
        identities = {by_bytes[records[key][2]]["identity_index"] for key in range(int(first), int(end))}
        assert identities == {number} and end - first == REFERENCES + DEGRADED
    assert (out / "property").read_text().strip() == f"{k},112,112"
    # the split record really was split (one part flagged 1 at its offset)
    split = next(key for key in range(1, n + 1) if struct.pack("<I", MAGIC) in records[key][2])
    position = int(dict(line.split("\t") for line in (out / "train.idx").read_text().splitlines())[str(split)])
    assert struct.unpack_from("<II", (out / "train.rec").read_bytes(), position)[1] >> 29 == 1


def test_recordio_reads_with_the_train_stage_reader(build, tmp_path):
    recordio = pytest.importorskip("synfiqa.stages.s6_train.recordio")
    out = tmp_path / "out"
    _export(build, "recordio", out, "--roles", "degraded")
    reader = recordio.RecordFile(out / "train.rec")
    keys = reader.image_keys()
    assert len(keys) == len(IDENTITIES) * DEGRADED
    by_bytes = {e["bytes"]: e for e in build["truth"].values()}
    for key in keys:
        record = reader.read(key)
        expected = by_bytes[record.payload]
        assert record.first_label == expected["identity_index"]
        assert record.label[1] == np.float32(expected["quality"])


# ---------------------------------------------------------------- hf imagefolder


def test_hf_imagefolder_loads_with_datasets(build, tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "out"
    _export(build, "hf", out)
    loaded = datasets.load_dataset("imagefolder", data_dir=str(out), cache_dir=str(tmp_path / "cache"))
    split = loaded["train"]
    assert len(split) == len(build["truth"])
    for row in split:
        expected = build["truth"][row["key"]]
        assert np.array_equal(np.asarray(row["image"].convert("RGB")), _decoded(expected["bytes"]))
        assert row["identity"] == expected["row"]["identity"]
        assert row["identity_index"] == expected["identity_index"]
        assert row["quality"] == expected["quality"]
        for name, value in expected["row"]["params"].items():
            assert row[f"params.{name}"] == value
        for name, value in expected["row"].get("scores", {}).items():
            assert row[f"scores.{name}"] == value


# ---------------------------------------------------------------- failures


def _run(*args):
    from synfiqa_cli.main import cli

    return CliRunner().invoke(cli, ["export", *map(str, args)])


def test_a_folder_that_is_not_a_build_is_one_line(tmp_path):
    (tmp_path / "photos").mkdir()
    result = _run(tmp_path / "photos", "--format", "recordio", "--out", tmp_path / "out")
    assert result.exit_code == 2 and "not a SynFIQA build" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_a_missing_image_is_one_line_and_nothing_is_written(build, tmp_path):
    import shutil

    copy = tmp_path / "ds"
    shutil.copytree(build["root"], copy)
    (copy / "data" / "zoë" / "2.jpg").unlink()
    result = _run(copy, "--format", "webdataset", "--out", tmp_path / "out")
    assert result.exit_code == 2 and "data/zoë/2.jpg" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_a_foreign_output_folder_is_refused(build, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("keep")
    result = _run(build["root"], "--format", "parquet", "--out", tmp_path / "out")
    assert result.exit_code == 2 and "mine.txt" in result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["mine.txt"]


@pytest.mark.parametrize("fmt", ["webdataset", "recordio", "hf"])
def test_a_killed_export_leaves_no_half_file_and_reruns(build, tmp_path, monkeypatch, fmt):
    from synfiqa.stages.export import source

    out = tmp_path / "out"
    real, calls = Path.read_bytes, {"n": 0}

    def dying(path):
        if path.suffix == ".jpg":
            calls["n"] += 1
            if calls["n"] == 7:
                raise KeyboardInterrupt  # the process killed in the middle of a file
        return real(path)

    monkeypatch.setattr(Path, "read_bytes", dying)
    if fmt == "hf":  # copies through open(): kill it on the 7th image
        import shutil

        real_copy = shutil.copyfileobj

        def dying_copy(a, b, *rest):
            calls["n"] += 1
            if calls["n"] == 7:
                raise KeyboardInterrupt
            return real_copy(a, b, *rest)

        monkeypatch.setattr(shutil, "copyfileobj", dying_copy)
    with pytest.raises(KeyboardInterrupt):
        from synfiqa.stages.export import export_dataset

        export_dataset(build["root"], fmt, out, identities_per_shard=1, echo=lambda *_: None)
    monkeypatch.undo()
    assert source is not None
    files = [p for p in out.rglob("*") if p.is_file() and ".synfiqa" not in p.parts]
    assert not (out / "export.json").exists()
    assert not [p for p in files if ".tmp-" in p.name]
    if fmt == "webdataset":
        for shard in out.glob("*.tar"):       # only complete shards carry a final name
            with tarfile.open(shard) as tar:
                assert len(tar.getmembers()) == 3 * (REFERENCES + DEGRADED)
    if fmt == "recordio":
        assert not (out / "train.rec").exists() and not (out / "train.idx").exists()
    if fmt == "hf":
        assert not (out / "train" / "metadata.jsonl").exists()
        assert all(p.stat().st_size > 0 for p in files)
    _export(build, fmt, out, "--identities-per-shard", "1")   # the same command again completes it

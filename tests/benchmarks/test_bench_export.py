"""Export throughput (samples/s) of each `synfiqa export` format over a synthetic build in
the SynFIQA layout: IDENTITIES x (10 references + 100 degraded) 112x112 JPEGs (about 5 KB
each, as a build writes them), a manifest with a real build's fields, Quality-Scores.txt.

    python tests/benchmarks/test_bench_export.py [IDENTITIES]      (default 200: 22,000 samples)
    python -m pytest tests/benchmarks/test_bench_export.py -s      (20 identities as a plain test)

Each export is checked for its sample count, so a fast empty one fails."""
from __future__ import annotations

import io
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REFERENCES, DEGRADED = 10, 100
FORMATS = ("parquet", "webdataset", "recordio", "hf")


def face_like_jpegs(count: int, seed: int = 0) -> list[bytes]:
    """Smooth random images (JPEGs of about a build's size, not of white noise)."""
    rng = np.random.default_rng(seed)
    blobs = []
    for _ in range(count):
        small = rng.integers(0, 256, (14, 14, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((112, 112), Image.BICUBIC)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=95, subsampling=0)
        blobs.append(buffer.getvalue())
    return blobs


def synthetic_build(root: Path, identities: int) -> int:
    rng = np.random.default_rng(0)
    blobs = face_like_jpegs(64)
    (root / ".synfiqa").mkdir(parents=True)
    (root / ".synfiqa" / "build.json").write_text('{"fingerprint": "bench"}\n')
    rows, scores = [], []
    for i in range(identities):
        name = f"id{i:06d}"
        folder = root / "data" / name
        folder.mkdir(parents=True)
        for role, count in (("reference", REFERENCES), ("degraded", DEGRADED)):
            for k in range(count):
                file = f"Ref-{k}.jpg" if role == "reference" else f"{k}.jpg"
                (folder / file).write_bytes(blobs[int(rng.integers(len(blobs)))])
                row = {"identity": name, "index": k, "role": role, "status": "ok", "path": f"data/{name}/{file}",
                       "source": f"{name}_1.jpg", "params": {"pose.abs_yaw": float(rng.uniform(0, 60))},
                       "plugins": {"generator": "folder (synfiqa 0.1.0)"}}
                if role == "degraded":
                    mr = float(rng.uniform())
                    row["params"].update({"blur-downscale.low_scale": float(rng.uniform(1, 4)),
                                          "blur-downscale.blur_level": float(rng.uniform(1, 4))})
                    row["scores"] = {"fr": float(rng.uniform()), "sd": float(rng.uniform()), "mr": mr}
                    row["partial"] = ["computed without vl"]
                    scores.append(f"/{name}/{file}\t{mr:.6f}\n")
                rows.append(row)
    (root / "manifest.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    (root / "Quality-Scores.txt").write_text("".join(sorted(scores)))
    (root / "summary.json").write_text(json.dumps({"quality_score": "mr"}))
    return len(rows)


def measure(identities: int, folder: Path) -> dict[str, dict]:
    from synfiqa.stages.export import export_dataset

    samples = synthetic_build(folder / "build", identities)
    results = {}
    for fmt in FORMATS:
        out = folder / f"out-{fmt}"
        os.sync()
        started = time.perf_counter()
        summary = export_dataset(folder / "build", fmt, out, echo=lambda *_: None)
        seconds = time.perf_counter() - started
        assert summary["samples"] == samples
        size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
        results[fmt] = {"samples": samples, "seconds": round(seconds, 2), "samples_per_s": round(samples / seconds),
                        "MB": round(size / 1e6, 1)}
    return results


def test_export_throughput(tmp_path):
    pytest.importorskip("pyarrow")
    identities = int(os.environ.get("SYNFIQA_BENCH_IDENTITIES", "20"))
    for fmt, result in measure(identities, tmp_path).items():
        print(f"\n{fmt:<11} {result['samples']} samples in {result['seconds']} s: {result['samples_per_s']} samples/s, "
              f"{result['MB']} MB")


if __name__ == "__main__":
    import tempfile

    count = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    with tempfile.TemporaryDirectory() as folder:
        print(json.dumps(measure(count, Path(folder)), indent=1))

"""The dataset-wide step of a build at SynFIQA scale: 10,000 identities x (10 references +
100 degraded) = 1.1 M manifest rows through `Pipeline.finalize` (sd ranks over every
severity axis, MR, min-max) and the writing of manifest.jsonl, Quality-Scores.txt and
summary.json, exactly as `_build_identities` does. Prints wall time and peak memory (goal of
issue 15: under 60 s and under 2 GB). Run:

    python -m pytest tests/benchmarks/test_bench_finalize.py -s     (SYNFIQA_BENCH_IDENTITIES to resize)
    python tests/benchmarks/test_bench_finalize.py [IDENTITIES] [whole]   (whole: the baseline,
        the manifest text built whole as before; run it and the default one after the other)

By default, as a plain test, it runs at 1,000 identities; the numbers of docs/benchmarks.md
are from 10,000. The MR of a few samples is checked against a computation by hand, and the
manifest (written in chunks) against the rows' text, so a fast wrong answer fails."""
from __future__ import annotations

import gc
import hashlib
import json
import os
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

REFERENCES, DEGRADED = 10, 100
AXES = ["blur-downscale.low_scale", "blur-downscale.blur_level"]
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * PAGE


class PeakRSS:
    """The largest resident set size seen while the block runs (sampled every 5 ms)."""

    def __enter__(self):
        self.peak, self._stop = rss(), threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss())

    def __exit__(self, *_):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss())


def synthetic_records(identities: int, seed: int = 0) -> list[dict]:
    """Per-identity records shaped like a real build's (.synfiqa/identities/<id>.json)."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(identities):
        name = f"id{i:06d}"
        yaw = rng.uniform(0, 60, REFERENCES + DEGRADED).tolist()
        low, blur, theta = (rng.uniform(1, 4, DEGRADED).tolist() for _ in range(3))
        fr = rng.uniform(0.2, 0.9, DEGRADED).tolist()
        rows = [{"identity": name, "index": k, "role": "reference", "status": "ok", "path": f"data/{name}/Ref-{k}.jpg",
                 "source": f"{name}_1.jpg", "params": {"pose.abs_yaw": yaw[k]}} for k in range(REFERENCES)]
        rows += [{"identity": name, "index": k, "role": "degraded", "status": "ok", "path": f"data/{name}/{k}.jpg",
                  "source": f"{name}_2.jpg",
                  "params": {"pose.abs_yaw": yaw[REFERENCES + k], AXES[0]: low[k], AXES[1]: blur[k],
                             "blur-downscale.theta": theta[k]},
                  "scores": {"fr": fr[k]}} for k in range(DEGRADED)]
        records.append({"identity": name, "status": "ok", "rows": rows})
    return records


def dataset_wide_pipeline():
    """What `Pipeline.finalize` reads of a Pipeline, with the real sd and mr annotators (fr
    is per identity: its values are in the records)."""
    from synfiqa.config import load_config
    from synfiqa.registry import get_registry

    registry = get_registry()
    annotators = [("sd", registry.create("annotator", "sd")), ("mr", registry.create("annotator", "mr"))]
    return SimpleNamespace(annotators=annotators, unavailable={"vl": "benchmark"}, context=None,
                           chain=SimpleNamespace(severity_axes=list(AXES)), plugins={"annotators": "sd, mr"},
                           config=load_config(None, [f"run.references={REFERENCES}", f"run.degraded={DEGRADED}"]))


def run_dataset_wide(records: list[dict], out: Path) -> dict:
    """`_build_identities`' dataset-wide block: finalize, then the three files together
    (`write_dataset_files`, the build's own function)."""
    from synfiqa.stages.build import Pipeline, write_dataset_files

    rows, quality, summary = Pipeline.finalize(dataset_wide_pipeline(), records)
    write_dataset_files(out, rows, quality, summary)
    return summary


def run_dataset_wide_whole_manifest(records: list[dict], out: Path) -> dict:
    """The baseline: the same step with the manifest text built whole before it is written, as
    the build did before `write_dataset_files` streamed it."""
    from synfiqa import layout
    from synfiqa.stages.build import Pipeline
    from synfiqa.store import write_group

    rows, quality, summary = Pipeline.finalize(dataset_wide_pipeline(), records)
    write_group({
        out / layout.MANIFEST: "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows).encode(),
        out / layout.QUALITY_SCORES: layout.format_quality_scores(quality).encode(),
        out / layout.SUMMARY: (json.dumps(summary, indent=2, sort_keys=True) + "\n").encode(),
    }, out)
    return summary


def measure(identities: int, out: Path, step=None) -> dict:
    records = synthetic_records(identities)
    gc.collect()
    before = rss()
    with PeakRSS() as peak:
        started, cpu = time.perf_counter(), time.process_time()
        summary = (step or run_dataset_wide)(records, out)
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu
    return {"identities": identities, "rows": identities * (REFERENCES + DEGRADED), "seconds": seconds,
            "cpu_seconds": cpu_seconds, "rss_before_gb": before / 2**30, "peak_rss_gb": peak.peak / 2**30,
            "added_gb": (peak.peak - before) / 2**30, "summary": summary, "records": records}


def check(result: dict, out: Path) -> None:
    from synfiqa import layout
    from synfiqa.mr_label import rank_score

    scores = layout.read_quality_scores(out / layout.QUALITY_SCORES)
    assert len(scores) == result["identities"] * DEGRADED
    degraded = [row for record in result["records"] for row in record["rows"] if row["role"] == "degraded"]
    # by hand: r = (N - average rank) / N per axis, sd = min, raw = fr + 0.5 sd, min-max
    columns = {axis: np.array([row["params"][axis] for row in degraded]) for axis in ["pose.abs_yaw", *AXES]}
    n = len(degraded)
    sd = np.min([(n - (np.argsort(np.argsort(c)) + 1)) / n for c in columns.values()], axis=0)  # no ties
    raw = np.array([row["scores"]["fr"] for row in degraded]) + 0.5 * sd
    mr = (raw - raw.min()) / (raw.max() - raw.min())
    for i in np.random.default_rng(1).integers(0, n, 50):
        key = layout.quality_key(degraded[i]["identity"], Path(degraded[i]["path"]).name)
        assert abs(scores[key] - mr[i]) < 2e-6, key
    assert rank_score is not None
    # the manifest, written in chunks, is the text of the rows whole: one sorted-keys JSON line per row
    expected = hashlib.sha256()
    for record in result["records"]:   # finalize completed these rows in place
        for row in record["rows"]:
            expected.update((json.dumps(row, sort_keys=True) + "\n").encode())
    written = hashlib.sha256()
    with open(out / layout.MANIFEST, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            written.update(block)
    assert written.hexdigest() == expected.hexdigest()


def test_dataset_wide_step(tmp_path):
    identities = int(os.environ.get("SYNFIQA_BENCH_IDENTITIES", "1000"))
    result = measure(identities, tmp_path)
    check(result, tmp_path)
    print(f"\ndataset-wide step, {result['rows']:,} rows: {result['seconds']:.1f} s wall, {result['cpu_seconds']:.1f} s "
          f"CPU, peak RSS {result['peak_rss_gb']:.2f} GB ({result['rss_before_gb']:.2f} GB holding the records before, "
          f"+{result['added_gb']:.2f} GB during)")


if __name__ == "__main__":
    import sys
    import tempfile

    count = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    # "whole": the baseline, in its own process (a process's peak memory is not given back for a second run)
    step = run_dataset_wide_whole_manifest if sys.argv[2:] == ["whole"] else run_dataset_wide
    with tempfile.TemporaryDirectory() as folder:
        result = measure(count, Path(folder), step)
        check(result, Path(folder))
    print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in result.items()
                      if k not in ("records", "summary")}))

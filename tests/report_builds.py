"""Hand-made SynFIQA builds for the report tests: the files a build writes (marker, data/,
manifest.jsonl, Quality-Scores.txt, summary.json, filter.json), with scores chosen by the test,
so what the report must flag is known without running a build."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from synfiqa import layout

AXES = ["pose.abs_yaw", "blur-downscale.low_scale", "blur-downscale.blur_level"]


def write_build(root: Path, identities: dict[str, list[tuple[float, float, float]]],
                filter_verdicts: list[dict] | None = None, source_sizes: dict[str, tuple[int, int]] | None = None,
                references: int = 1, reference_images: dict[str, list[np.ndarray]] | None = None) -> Path:
    """identities: name -> one (score, low_scale, blur_level) per degraded sample. Each identity
    gets `references` references from the source photo 'ref.png' and samples from 'sample.png',
    written to `root/photos/<identity>/` at `source_sizes[identity]` (default 400x500).
    `reference_images[identity]`: its references' crops (default: `references` noise images)."""
    rng = np.random.default_rng(0)
    (root / ".synfiqa").mkdir(parents=True)
    (root / layout.BUILD_MARKER).write_text("{}\n")
    rows, quality = [], {}
    for identity, samples in identities.items():
        folder = root / layout.DATA / identity
        folder.mkdir(parents=True)
        photos = root / "photos" / identity
        photos.mkdir(parents=True)
        size = (source_sizes or {}).get(identity, (400, 500))
        for photo in ("ref.png", "sample.png"):
            Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(photos / photo)
        crops = (reference_images or {}).get(identity) or [
            rng.integers(0, 255, (112, 112, 3), dtype=np.uint8) for _ in range(references)]
        for k, crop in enumerate(crops):
            name = layout.reference_name(k)
            # given crops are stored losslessly (PNG bytes under the layout's .jpg name), so a test
            # embeds the very pixels the report reads
            Image.fromarray(crop).save(folder / name, format="PNG" if reference_images else "JPEG")
            rows.append({"identity": identity, "index": k, "role": "reference", "status": "ok", "source": "ref.png",
                         "path": layout.relative_path(identity, name), "params": {"pose.abs_yaw": 1.0}})
        for k, (score, low_scale, blur) in enumerate(samples):
            name = layout.sample_name(k)
            Image.fromarray(rng.integers(0, 255, (112, 112, 3), dtype=np.uint8)).save(folder / name, format="JPEG")
            rows.append({"identity": identity, "index": k, "role": "degraded", "status": "ok", "source": "sample.png",
                         "path": layout.relative_path(identity, name),
                         "params": {"pose.abs_yaw": 2.0, "blur-downscale.low_scale": low_scale,
                                    "blur-downscale.blur_level": blur},
                         "scores": {"fr": score, "sd": 0.5, "mr": score}})
            quality[layout.quality_key(identity, name)] = score
    (root / layout.MANIFEST).write_text("".join(json.dumps(row, sort_keys=True) + "\n" for row in rows))
    (root / layout.QUALITY_SCORES).write_text(layout.format_quality_scores(quality))
    (root / layout.SUMMARY).write_text(json.dumps({"quality_score": "mr", "severity_axes": AXES,
                                                   "missing_domains": {"vl": "no BLIP weights"}}))
    if filter_verdicts is not None:
        (root / ".synfiqa" / "filter.json").write_text(json.dumps({
            "chain": ["yaw", "glasses"], "identities": sorted(identities), "verdicts": filter_verdicts}))
    (root / layout.CONFIG).write_text(f'[generate]\ngenerator = "folder"\n\n[generate.params.folder]\n'
                                      f'path = "{(root / "photos").as_posix()}"\ngrouping = "auto"\n')
    return root


def following_and_rising(count: int = 12) -> dict[str, list[tuple[float, float, float]]]:
    """'falls': the score falls as both axes rise (as labels should); 'rises': the score rises
    with them (labels against severity)."""
    severities = [(1.0 + i * 0.25, 0.5 + i * 0.3) for i in range(count)]
    return {
        "falls": [(0.9 - 0.05 * i, low, blur) for i, (low, blur) in enumerate(severities)],
        "rises": [(0.2 + 0.05 * i, low, blur) for i, (low, blur) in enumerate(severities)],
    }

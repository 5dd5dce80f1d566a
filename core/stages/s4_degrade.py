"""Stage 4, degradation: ``degrade_crops`` (a build's samples) and `synfiqa degrade` (the
configured degradation chain over a folder of face images, resumably).

    OUT/<image name without suffix>/<k>.png   n degraded copies of each input image (lossless)
    OUT/degraded.jsonl                        one row per copy: source, index, path, every
                                              recorded parameter; one row per skipped input
    OUT/.synfiqa-degrade.json                 the chain, its parameters, n and the seed

Photos are detected and aligned to the ArcFace 112x112 template first (the degradations,
occlusion among them, place themselves from the five aligned landmarks); `aligned` takes
the images as crops already. Copy k of image s draws its parameters from the generator
seeded by (run seed, s, k, "degrade/<step>"), as a build does for sample k of identity s,
so a copy does not depend on the batch it was made in or on the other images. An image
whose copies and rows all exist is not redone.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from synfiqa.align import warp_affine
from synfiqa.config import component_params
from synfiqa.degradation import DegradationChain
from synfiqa.errors import BadInputError
from synfiqa.faces import CropMaker
from synfiqa.images import ImageItem
from synfiqa.images import encode_png
from synfiqa.progress import progress as progress_bar
from synfiqa.store import StageFolder, append_rows, read_rows, write_atomic

MANIFEST = "degraded.jsonl"
MARKER = ".synfiqa-degrade.json"


def degrade_crops(chain: DegradationChain, crops: np.ndarray, landmarks: np.ndarray, sampled: list[dict],
                  batch_size: int, to_aligned: np.ndarray | None = None, aligned_size: int = 112) -> np.ndarray:
    """The chain over crops [N, S, S, 3] uint8 with their five landmarks [N, 5, 2] and the
    sampled parameters (``chain.sample``, first dimension N), in batches. With `to_aligned`
    ([N, 2, 3], crop pixels -> aligned pixels) each degraded crop is then aligned to
    `aligned_size`, as the original degrades the detector's crop and aligns afterwards.
    Returns [N, S, S, 3] uint8 (S = aligned_size with to_aligned)."""
    out = []
    for start in range(0, len(crops), batch_size):
        stop = min(start + batch_size, len(crops))
        batch = torch.from_numpy(np.ascontiguousarray(crops[start:stop])).permute(0, 3, 1, 2).contiguous()
        points = torch.from_numpy(np.asarray(landmarks[start:stop], dtype=np.float32))
        part = [{key: value[start:stop] for key, value in step.items()} for step in sampled]
        images = chain.apply(batch, part, landmarks=points)
        if to_aligned is not None:
            images = warp_affine(images, torch.from_numpy(np.asarray(to_aligned[start:stop], dtype=np.float64)),
                                 (aligned_size, aligned_size))
        out.append(images.permute(0, 2, 3, 1).numpy())
    size = crops.shape[1:] if len(crops) else (0, 0, 3)
    return np.concatenate(out) if out else np.zeros((0, *size), dtype=np.uint8)


def output_stem(item: ImageItem) -> str:
    """Where an input's copies go inside OUT: its name without suffix, kept inside OUT even
    for a file given by an absolute or ../ path."""
    parts = [part for part in PurePosixPath(item.name).with_suffix("").parts if part not in ("/", ".", "..")]
    return "/".join(parts)


def copy_paths(item: ImageItem, n: int) -> list[str]:
    return [f"{output_stem(item)}/{k}.png" for k in range(n)]


def degrade_folder(items: list[ImageItem], config: dict, registry, crop_maker: CropMaker, n: int,
                   out: str | Path, progress: bool | None = None, echo=print) -> dict:
    out = Path(out)
    chain = DegradationChain.from_config(config, registry)
    if not chain.steps:
        raise BadInputError("empty-chain", "degrade.chain is empty: nothing to apply")
    chain.probe()  # a broken degradation plugin is named before anything is written
    seed = config["run"]["seed"]
    description = {"chain": config["degrade"]["chain"], "seed": seed, "n": n, "aligned": crop_maker.aligned,
                   "params": {name: component_params(config, "degrade", name) for name in config["degrade"]["chain"]}}
    _check_names(items)
    with StageFolder(out, marker=MARKER, what="degradation run") as folder:
        if folder.claim(description):
            echo(f"resuming the degradation in {out}")
        return _degrade(items, config, chain, crop_maker, n, out, progress, echo)


def _degrade(items, config, chain, crop_maker, n, out, progress, echo) -> dict:
    seed = config["run"]["seed"]
    rows = read_rows(out / MANIFEST, key="key")
    bar = progress_bar(total=len(items), enabled=progress, description="degrade", unit="img")
    made, skipped = 0, Counter()
    for item in items:
        paths = copy_paths(item, n)
        keys = [f"{item.name}#{k}" for k in range(n)]
        if f"{item.name}#skipped" in rows or all(k in rows and (out / p).is_file() for k, p in zip(keys, paths)):
            bar.update(1)
            continue
        try:
            crop, landmarks = crop_maker.crop_and_landmarks(item)
        except BadInputError as error:
            append_rows(out / MANIFEST, [{"key": f"{item.name}#skipped", "source": item.name, "status": "skipped",
                                          "reason": error.reason, "detail": str(error)}])
            skipped[error.reason] += 1
            bar.update(1)
            continue
        indices = list(range(n))
        sampled = chain.sample(seed, item.name, indices)
        images = torch.from_numpy(np.array(crop)).permute(2, 0, 1)[None].expand(n, -1, -1, -1).contiguous()
        points = torch.from_numpy(np.asarray(landmarks, dtype=np.float32))[None].expand(n, -1, -1).contiguous()
        degraded = chain.apply(images, sampled, landmarks=points).permute(0, 2, 3, 1).numpy()
        for path, pixels in zip(paths, degraded):
            write_atomic(out / path, encode_png(pixels))
        append_rows(out / MANIFEST, [  # rows after the images: a row always has its image
            {"key": key, "source": item.name, "index": k, "path": path, "status": "ok", "params": params}
            for k, (key, path, params) in enumerate(zip(keys, paths, chain.records(sampled, n)))])
        made += n
        bar.update(1)
    bar.close()
    all_rows = read_rows(out / MANIFEST, key="key").values()
    total = sum(1 for row in all_rows if row["status"] == "ok")
    reasons = Counter(row["reason"] for row in all_rows if row["status"] == "skipped")
    line = f"degrade: {made} copies made now ({total} in {out}, {' -> '.join(config['degrade']['chain'])})"
    if reasons:
        line += "; inputs skipped: " + ", ".join(f"{reason} ({count})" for reason, count in sorted(reasons.items()))
    echo(line)
    return {"made": made, "total": total, "skipped": dict(reasons),
            "severity_axes": chain.severity_axes}


def _check_names(items: list[ImageItem]) -> None:
    """Two inputs that differ only in suffix (a.jpg, a.png) would write the same copies."""
    seen: dict[str, str] = {}
    for item in items:
        stem = output_stem(item)
        if stem in seen:
            raise BadInputError("duplicate-name", f"{seen[stem]} and {item.name} would write the same copies "
                                f"({stem}/<k>.png): rename one")
        seen[stem] = item.name

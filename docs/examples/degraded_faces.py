"""Writes a tiny verification benchmark from the six test photos, to try `synfiqa evaluate`:
each photo aligned (MTCNN), plus three copies degraded with the MR-FIQA blur + downscale at
known severities; SFace embeddings; two quality files (the negated severity, and the same
values shuffled across images as a blind baseline); every pair of the 24 crops.

    python docs/examples/degraded_faces.py OUT_DIR
    synfiqa evaluate --pairs OUT_DIR/pairs.csv --embeddings OUT_DIR/emb.npz \
        --quality severity=OUT_DIR/severity.csv --quality shuffled=OUT_DIR/shuffled.csv --plot edc.png
"""
from __future__ import annotations

import itertools
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from synfiqa.align import align_face
from synfiqa.images import read_rgb
from synfiqa.models import pick_main_face
from synfiqa.registry import get_registry
from synfiqa_plugins.degradations.blur_downscale import anisotropic_kernel, blur_downscale_reference

FACES = Path(__file__).resolve().parents[2] / "tests" / "data" / "faces"
SEVERITIES = {1: (4.0, 1.0), 2: (8.0, 2.0), 3: (14.0, 3.0)}  # level -> (downscale factor, blur sigma)


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    registry = get_registry()
    detector, embedder = registry.create("detector", "mtcnn"), registry.create("embedder", "sface")
    photos = sorted(p.stem for p in FACES.glob("*.jpg"))
    crops = []
    for photo in photos:
        image = read_rgb(FACES / f"{photo}.jpg")
        crops.append(align_face(image, pick_main_face(detector.detect(image)).landmarks)[0])
    clean = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous()
    images, severity = {}, {}
    for level in range(4):
        batch = clean
        if level:
            factor, sigma = SEVERITIES[level]
            kernel = anisotropic_kernel(0.0, sigma ** 2, sigma ** 2, torch.zeros(21, 21)).float()
            batch = blur_downscale_reference(clean, kernel[None].repeat(len(photos), 1, 1),
                                             torch.full((len(photos),), factor))
        for photo, crop in zip(photos, batch):
            name = f"{photo}_s{level}.png"
            images[name], severity[name] = crop, level
            Image.fromarray(crop.permute(1, 2, 0).numpy()).save(out / name)
    names = list(images)
    vectors = embedder.embed(torch.stack([images[n] for n in names])).numpy()
    np.savez(out / "emb.npz", **dict(zip(names, vectors)))
    (out / "severity.csv").write_text("image,quality\n" + "".join(f"{n},{-severity[n]}\n" for n in names))
    shuffled = np.random.default_rng(0).permutation([-severity[n] for n in names])
    (out / "shuffled.csv").write_text("image,quality\n" + "".join(f"{n},{q}\n" for n, q in zip(names, shuffled)))
    person = {n: n.split("_")[0] for n in names}
    (out / "pairs.csv").write_text("image_a,image_b,genuine\n" + "".join(
        f"{a},{b},{int(person[a] == person[b])}\n" for a, b in itertools.combinations(names, 2)))
    print(f"wrote {len(names)} crops, {len(names) * (len(names) - 1) // 2} pairs to {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "degraded_faces"))

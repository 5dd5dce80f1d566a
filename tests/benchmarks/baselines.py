"""The speed comparisons of the compiled ops against their baselines, defined once and used
by tests/benchmarks/test_bench_ops.py (pytest-benchmark; `make bench`) and by
`python -m tests.benchmarks.baselines` (the table of docs/benchmarks.md). They live with the
tests, not in the `synfiqa` package: the baselines need a source checkout's test
dependencies (kornia, scipy, OpenCV, the blur-downscale plugin's sampler), and the runtime
package ships no benchmark code.

Every comparison runs its contenders in one process on the same data:
  blur_resample   synfiqa native; synfiqa reference (pure torch); kornia batched
                  (filter2d on the whole batch, interpolate per output size); the original
                  per-image path (scipy.ndimage correlate + two PIL bicubic resizes); OpenCV per
                  image (filter2D, INTER_AREA down, INTER_CUBIC up). Kernels and factors come
                  from the blur-downscale plugin's own sampler (the paper's mixture). The
                  per-image baselines run on the first `subset` images of the batch (their cost
                  per image does not depend on the batch).
  ref_cosine      native against reading every input embedding once (torch sum over the
                  samples and the references: a memory-bound pass); the original per-sample
                  Python loop on the first `loop_rows` samples.
  greedy_unique   native against the plain greedy loop and the blocked pure-torch twin
                  at N = n_loop; native alone at N = n_big (with its extra peak memory).
  rasterize       native against its pure-torch twin (bbox candidates + scatter_reduce amin)
                  on a FLAME-sized mesh (a jittered UV sphere, 5,002 vertices, 10,000 faces,
                  rotated per sample, about half the image covered), 512x512, batch 10.
Throughput is in units (images or rows) per second; `speed-up` is the native op's throughput
over the contender's.
"""
from __future__ import annotations

import gc
import platform
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch


@dataclass
class Contender:
    name: str
    fn: Callable[[], object]
    units: int          # images or rows one call processes
    rounds: int = 3


@dataclass
class Comparison:
    op: str
    title: str
    unit: str
    contenders: list[Contender]
    subject: str = "synfiqa native"
    info: dict = field(default_factory=dict)


# ---------------------------------------------------------------- data

def blur_batch(batch: int, size: int, seed: int = 0):
    """uint8 images and the blur-downscale plugin's own kernels and factors."""
    from synfiqa_plugins.degradations.blur_downscale import BlurDownscale

    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=generator)
    params = BlurDownscale().sample_params(batch, generator)
    return images, params["kernel"], params["low_scale"] + 1.0


def identity_like_embeddings(n: int, d: int, duplicate_fraction: float = 0.2, seed: int = 0) -> torch.Tensor:
    """Random directions (distinct identities: cosines near 0) where a `duplicate_fraction` of
    rows are noisy copies of an earlier row (cosine ~0.7: over the 0.3 threshold)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=generator)
    duplicate = torch.rand(n, generator=generator) < duplicate_fraction
    duplicate[0] = False
    source = (torch.rand(n, generator=generator) * torch.arange(n)).long()
    noisy = x[source] + torch.randn(n, d, generator=generator)
    x[duplicate] = noisy[duplicate]
    return x


# ---------------------------------------------------------------- baselines

def kornia_batched(images, kernels, factors):
    import kornia
    import torch.nn.functional as F

    from synfiqa.ops.reference import downscaled_size

    n, _, height, width = images.shape
    blurred = kornia.filters.filter2d(images.float(), kernels, border_type="reflect")
    sizes = [downscaled_size(height, width, float(f)) for f in factors]
    out = torch.empty_like(blurred)
    for size in sorted(set(sizes)):  # one interpolate per distinct downscaled size
        index = torch.tensor([i for i, s in enumerate(sizes) if s == size])
        small = F.interpolate(blurred[index], size=size, mode="bicubic", antialias=True, align_corners=False)
        out[index] = F.interpolate(small, size=(height, width), mode="bicubic", align_corners=False)
    return out.round().clamp(0, 255).to(torch.uint8)


def original_per_image(images, kernels, factors):
    """The original pipeline's path, one image at a time: scipy correlation, PIL bicubic."""
    import numpy as np
    from PIL import Image
    from scipy import ndimage

    from synfiqa.ops.reference import downscaled_size

    out = []
    for image, kernel, factor in zip(images, kernels, factors):
        hwc = image.permute(1, 2, 0).numpy().astype(np.float64)
        blurred = ndimage.correlate(hwc, kernel.double().numpy()[:, :, None], mode="mirror")
        picture = Image.fromarray(np.clip(np.round(blurred), 0, 255).astype(np.uint8))
        small_h, small_w = downscaled_size(hwc.shape[0], hwc.shape[1], float(factor))
        picture = picture.resize((small_w, small_h), Image.BICUBIC).resize((hwc.shape[1], hwc.shape[0]), Image.BICUBIC)
        out.append(np.asarray(picture))
    return out


def opencv_per_image(images, kernels, factors):
    import cv2
    import numpy as np

    from synfiqa.ops.reference import downscaled_size

    out = []
    for image, kernel, factor in zip(images, kernels, factors):
        hwc = np.ascontiguousarray(image.permute(1, 2, 0).numpy())
        blurred = cv2.filter2D(hwc, -1, kernel.numpy(), borderType=cv2.BORDER_REFLECT_101)
        small_h, small_w = downscaled_size(hwc.shape[0], hwc.shape[1], float(factor))
        small = cv2.resize(blurred, (small_w, small_h), interpolation=cv2.INTER_AREA)
        out.append(cv2.resize(small, (hwc.shape[1], hwc.shape[0]), interpolation=cv2.INTER_CUBIC))
    return out


def greedy_unique_loop(embeddings, threshold):
    """The plain greedy loop of Stage 1: for each kept i in order, drop every later kept j
    with cosine(i, j) > threshold; cosines of float64 unit rows by matrix-vector products.
    O(N^2 D). A baseline and an independent check of the blocked twin's bookkeeping, not a
    twin: its cosines are not the ordered ones, so a cosine within ~1e-13 of the threshold
    may be judged differently (the twin, synfiqa.ops.reference, defines the op)."""
    x = embeddings.to(torch.float64)
    unit = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    kept = torch.ones(unit.shape[0], dtype=torch.bool, device=embeddings.device)
    for i in range(unit.shape[0]):
        if kept[i]:
            later = unit[i + 1 :] @ unit[i]
            kept[i + 1 :] &= later <= threshold
    return kept


def per_sample_loop(samples, sample_ids, references, reference_ids):
    """The original's scoring loop in torch: each identity's mean once, then one
    cosine_similarity call per sample."""
    import torch.nn.functional as F

    means = {}
    out = torch.empty(len(sample_ids), dtype=torch.float64)
    for i, identity in enumerate(sample_ids.tolist()):
        if identity not in means:
            means[identity] = references[reference_ids == identity].double().mean(dim=0)
        out[i] = F.cosine_similarity(samples[i].double(), means[identity], dim=0)
    return out


def per_sample_loop_numpy(samples, sample_ids, references, reference_ids):
    """The same loop with numpy rows (cheaper per call than torch)."""
    import numpy as np

    x, ids = samples.numpy(), sample_ids.tolist()
    refs, ref_ids = references.numpy(), reference_ids.numpy()
    means = {}
    out = np.empty(len(ids))
    for i, identity in enumerate(ids):
        if identity not in means:
            means[identity] = refs[ref_ids == identity].astype(np.float64).mean(axis=0)
        mean = means[identity]
        out[i] = float(np.dot(x[i], mean) / (np.linalg.norm(x[i]) * np.linalg.norm(mean)))
    return out


# ---------------------------------------------------------------- comparisons

def blur_comparisons(sizes=(112, 224), batches=(64, 256), subset: int = 16) -> Iterator[Comparison]:
    from synfiqa.ops import blur_resample

    for size in sizes:
        for batch in batches:
            images, kernels, factors = blur_batch(batch, size)
            few = slice(0, min(subset, batch))
            slow_rounds = 1 if size > 112 else 2
            yield Comparison("blur_resample", f"blur_resample {size}x{size} B={batch}", "images", [
                Contender("synfiqa native", lambda i=images, k=kernels, f=factors: blur_resample(i, k, f, impl="native"),
                          batch, rounds=5),
                Contender("synfiqa reference (torch)",
                          lambda i=images, k=kernels, f=factors: blur_resample(i, k, f, impl="reference"), batch,
                          rounds=2),
                Contender("kornia batched", lambda i=images, k=kernels, f=factors: kornia_batched(i, k, f), batch,
                          rounds=2),
                Contender("original per-image (scipy+PIL)",
                          lambda i=images[few], k=kernels[few], f=factors[few]: original_per_image(i, k, f),
                          len(range(batch)[few]), rounds=slow_rounds),
                Contender("OpenCV per image",
                          lambda i=images[few], k=kernels[few], f=factors[few]: opencv_per_image(i, k, f),
                          len(range(batch)[few]), rounds=slow_rounds),
            ])
            del images, kernels, factors


def ref_cosine_comparisons(n: int = 1_000_000, d: int = 512, samples_per_identity: int = 100,
                           refs_per_identity: int = 10, loop_rows: int = 20_000) -> Iterator[Comparison]:
    from synfiqa.ops import ref_cosine

    generator = torch.Generator().manual_seed(0)
    samples = torch.randn(n, d, generator=generator)
    sample_ids = torch.arange(n) // samples_per_identity
    identities = (n + samples_per_identity - 1) // samples_per_identity
    references = torch.randn(identities * refs_per_identity, d, generator=generator)
    reference_ids = torch.arange(identities * refs_per_identity) // refs_per_identity
    loop = min(loop_rows, n)
    read_bytes = (samples.numel() + references.numel()) * samples.element_size()
    yield Comparison("ref_cosine", f"ref_cosine N={n:.0e} D={d}", "rows", [
        Contender("synfiqa native",
                  lambda: ref_cosine(samples, sample_ids, references, reference_ids, impl="native"), n, rounds=5),
        Contender("read the embeddings once", lambda: (samples.sum(), references.sum()), n, rounds=5),
        Contender("synfiqa reference (torch)",
                  lambda: ref_cosine(samples, sample_ids, references, reference_ids, impl="reference"), n, rounds=1),
        Contender(f"per-sample Python loop, torch as the original ({loop} rows)",
                  lambda: per_sample_loop(samples[:loop], sample_ids[:loop], references, reference_ids), loop,
                  rounds=1),
        Contender(f"per-sample Python loop, numpy ({loop} rows)",
                  lambda: per_sample_loop_numpy(samples[:loop], sample_ids[:loop], references, reference_ids), loop,
                  rounds=1),
    ], info={"bytes_read": read_bytes})
    del samples, references


def greedy_comparisons(n_loop: int = 10_000, n_big: int = 100_000, d: int = 512,
                       threshold: float = 0.3) -> Iterator[Comparison]:
    from synfiqa.ops import greedy_unique, greedy_unique_reference

    small = identity_like_embeddings(n_loop, d)
    yield Comparison("greedy_unique", f"greedy_unique N={n_loop:.0e} D={d}", "rows", [
        Contender("synfiqa native", lambda: greedy_unique(small, threshold, impl="native"), n_loop, rounds=3),
        Contender("plain greedy loop (torch)", lambda: greedy_unique_loop(small, threshold), n_loop, rounds=1),
        Contender("blocked reference (torch float64)", lambda: greedy_unique_reference(small, threshold), n_loop,
                  rounds=1),
    ])
    del small
    if n_big:
        big = identity_like_embeddings(n_big, d)
        yield Comparison("greedy_unique", f"greedy_unique N={n_big:.0e} D={d}", "rows", [
            Contender("synfiqa native", lambda: greedy_unique(big, threshold, impl="native"), n_big, rounds=1),
        ], info={"peak_extra_bytes": lambda: peak_extra_memory(lambda: greedy_unique(big, threshold, impl="native"))})


def comparisons(ops=("blur_resample", "ref_cosine", "greedy_unique", "rasterize"),
                quick: bool = False) -> Iterator[Comparison]:
    if "blur_resample" in ops:
        yield from blur_comparisons(sizes=(112,) if quick else (112, 224), batches=(64,) if quick else (64, 256))
    if "ref_cosine" in ops:
        yield from ref_cosine_comparisons(n=100_000 if quick else 1_000_000, loop_rows=5_000 if quick else 20_000)
    if "greedy_unique" in ops:
        yield from greedy_comparisons(n_loop=3_000 if quick else 10_000, n_big=0 if quick else 100_000)
    if "rasterize" in ops:
        yield from rasterize_comparisons(size=256 if quick else 512, batch=10)


def flame_sized_mesh(batch: int = 10, seed: int = 0, rings: int = 50, segments: int = 100):
    """verts float32 [batch, 5002, 3] (NDC, z around 10 as DECA's +10), faces int64 [10000, 3]:
    a unit UV sphere scaled by 0.8, jittered, rotated about the vertical axis per sample (the
    size and on-screen coverage of a FLAME head at 512x512: 5,023 vertices, 9,976 faces)."""
    import math

    generator = torch.Generator().manual_seed(seed)
    theta = torch.linspace(0, math.pi, rings + 2)[1:-1]
    phi = torch.linspace(0, 2 * math.pi, segments + 1)[:-1]
    t, p = torch.meshgrid(theta, phi, indexing="ij")
    points = torch.stack([t.sin() * p.cos(), t.cos(), t.sin() * p.sin()], -1).reshape(-1, 3)
    points = torch.cat([points, torch.tensor([[0.0, 1.0, 0.0], [0.0, -1.0, 0.0]])])
    i = torch.arange(rings - 1).repeat_interleave(segments)
    j = torch.arange(segments).repeat(rings - 1)
    a, b = i * segments + j, i * segments + (j + 1) % segments
    c, d = a + segments, b + segments
    top, bottom = rings * segments, rings * segments + 1
    k = torch.arange(segments)
    faces = torch.cat([torch.stack([a, c, b], 1), torch.stack([b, c, d], 1),
                       torch.stack([torch.full_like(k, top), k, (k + 1) % segments], 1),
                       torch.stack([torch.full_like(k, bottom), (rings - 1) * segments + (k + 1) % segments,
                                    (rings - 1) * segments + k], 1)])
    angles = torch.rand(batch, generator=generator) * 2 - 1
    cos, sin = angles.cos(), angles.sin()
    zero, one = torch.zeros_like(cos), torch.ones_like(cos)
    rotation = torch.stack([torch.stack([cos, zero, sin], -1), torch.stack([zero, one, zero], -1),
                            torch.stack([-sin, zero, cos], -1)], -2)
    verts = 0.8 * points @ rotation.transpose(1, 2) + 0.01 * torch.randn(batch, points.shape[0], 3,
                                                                          generator=generator)
    verts[..., 2] += 10.0
    return verts.float().contiguous(), faces


def rasterize_comparisons(size: int = 512, batch: int = 10) -> Iterator[Comparison]:
    from synfiqa.ops import rasterize

    verts, faces = flame_sized_mesh(batch)
    yield Comparison("rasterize", f"rasterize {size}x{size} B={batch} F={faces.shape[0]}", "images", [
        Contender("synfiqa native", lambda: rasterize(verts, faces, size, size, impl="native"), batch, rounds=3),
        Contender("synfiqa reference (torch)", lambda: rasterize(verts, faces, size, size, impl="reference"), batch,
                  rounds=1),
    ])


# ---------------------------------------------------------------- measuring

def peak_extra_memory(fn: Callable[[], object]) -> int | None:
    """Peak resident memory above the starting point while fn runs (Linux: VmHWM is reset
    through /proc/self/clear_refs); None where that is not available."""
    def field_kb(name):
        for line in open("/proc/self/status"):
            if line.startswith(name):
                return int(line.split()[1])
        raise KeyError(name)

    try:
        gc.collect()
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        before = field_kb("VmRSS:")
        fn()
        return (field_kb("VmHWM:") - before) * 1024
    except (OSError, KeyError):
        return None


def best_seconds(fn: Callable[[], object], rounds: int) -> float:
    fn()  # warm-up: builds, caches, page faults
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def measure(comparison: Comparison) -> list[dict]:
    timings = {c.name: best_seconds(c.fn, c.rounds) / c.units for c in comparison.contenders}
    subject = timings[comparison.subject]
    rows = []
    for contender in comparison.contenders:
        per_unit = timings[contender.name]
        row = {"op": comparison.op, "case": comparison.title, "contender": contender.name,
               "seconds_per_call": per_unit * contender.units, "units_per_call": contender.units,
               "throughput": 1.0 / per_unit, "unit": comparison.unit, "speedup": per_unit / subject}
        if "bytes_read" in comparison.info and contender.name == "read the embeddings once":
            row["bandwidth_gb_s"] = comparison.info["bytes_read"] / (per_unit * contender.units) / 1e9
        rows.append(row)
    if "peak_extra_bytes" in comparison.info:
        rows[0]["peak_extra_bytes"] = comparison.info["peak_extra_bytes"]()
    return rows


def machine() -> dict:
    import os

    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "system": platform.platform()}


def run(ops=("blur_resample", "ref_cosine", "greedy_unique", "rasterize"), quick: bool = False,
        progress: Callable[[str], None] | None = None) -> list[dict]:
    rows = []
    for comparison in comparisons(ops, quick):
        if progress:
            progress(comparison.title)
        rows.extend(measure(comparison))
        del comparison
        gc.collect()
    return rows


def format_table(rows: list[dict]) -> str:
    lines = [f"| case | contender | time per call | throughput | native speed-up |", "|---|---|---|---|---|"]
    for row in rows:
        extra = []
        if "bandwidth_gb_s" in row:
            extra.append(f"{row['bandwidth_gb_s']:.1f} GB/s")
        if row.get("peak_extra_bytes") is not None:
            extra.append(f"peak extra memory {row['peak_extra_bytes'] / 2**20:.0f} MiB")
        note = f" ({', '.join(extra)})" if extra else ""
        lines.append(f"| {row['case']} | {row['contender']}{note} | {row['seconds_per_call'] * 1e3:,.1f} ms "
                     f"| {row['throughput']:,.0f} {row['unit']}/s | {row['speedup']:,.2f}x |")
    return "\n".join(lines)


def main(argv=None) -> None:
    """python -m tests.benchmarks.baselines [--op OP ...] [--quick] [--json]: the table of
    docs/benchmarks.md (what `synfiqa ops bench` printed before the baselines left the
    package), from the root of a source checkout."""
    import argparse
    import json
    import sys

    ops = ("blur_resample", "ref_cosine", "greedy_unique", "rasterize")
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.baselines", description=main.__doc__)
    parser.add_argument("--op", dest="ops", action="append", choices=ops,
                        help="only this op (repeatable; default: all)")
    parser.add_argument("--quick", action="store_true", help="small sizes only (seconds instead of minutes)")
    parser.add_argument("--json", dest="as_json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    progress = None if args.as_json else (lambda title: print(f"measuring {title} ...", file=sys.stderr))
    rows = run(tuple(args.ops or ops), quick=args.quick, progress=progress)
    if args.as_json:
        print(json.dumps({"machine": machine(), "rows": rows}, indent=2))
        return
    about = machine()
    print(f"{about['cpu']}, {about['cores']} cores, torch {about['torch']} ({about['torch_threads']} threads)")
    print(format_table(rows))


if __name__ == "__main__":
    main()

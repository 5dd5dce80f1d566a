"""synfiqa::rasterize on a GPU machine, run as is from the root of a source checkout:

    python tests/benchmarks/gpu_rasterize.py            # or: python -m tests.benchmarks.gpu_rasterize

1. builds the CPU and CUDA libraries (first run: a few minutes);
2. parity: the CUDA kernel against the C++ kernel, torch.equal on pix_to_face, bary and zbuf
   (they compute the same float32 operations, so they must agree bit for bit), on random
   overlapping meshes (odd and non-square sizes, z behind the camera, degenerate faces) and on
   the FLAME-sized mesh at 512x512 x 10;
3. timing: CUDA (synchronised, best of 10) against the C++ kernel and the pure-torch twin on
   the CPU and on the GPU, FLAME-sized mesh, 512x512, batch 10; prints a markdown table.
Exits 1 when a parity check fails."""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

import synfiqa.ops as ops  # noqa: E402
from synfiqa.ops import loader  # noqa: E402
from tests.benchmarks.baselines import flame_sized_mesh  # noqa: E402


def random_mesh(n, v, f, seed):
    g = torch.Generator().manual_seed(seed)
    verts = torch.rand(n, v, 3, generator=g) * 2.6 - 1.3
    verts[..., 2] = torch.rand(n, v, generator=g) * 2.5 - 0.5
    faces = torch.randint(0, v, (f, 3), generator=g)
    faces[:5, 1] = faces[:5, 0]
    return verts, faces


def best(fn, rounds, cuda):
    fn()
    times = []
    for _ in range(rounds):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device visible")
        return 1
    for kind in ("cpu", "cuda"):
        start = time.perf_counter()
        if not loader._load(kind, verbose=False):
            print(f"{kind} build failed: {loader.state(kind).error}")
            print("\n".join(loader.state(kind).log[-1:]))
            return 1
        print(f"{kind} library ready in {time.perf_counter() - start:.1f} s")
    print(torch.cuda.get_device_name(0), "| torch", torch.__version__, "| CPU threads", torch.get_num_threads())

    failures = 0
    cases = [("random 1x37x53", *random_mesh(1, 60, 120, 0), 37, 53),
             ("random 3x53x37", *random_mesh(3, 60, 120, 1), 53, 37),
             ("random 4x256x256 (5k faces)", *random_mesh(4, 2000, 5000, 2), 256, 256),
             ("FLAME-sized 10x512x512", *flame_sized_mesh(10), 512, 512)]
    print("\n| parity case | pix_to_face | bary | zbuf | covered |\n|---|---|---|---|---|")
    for name, verts, faces, h, w in cases:
        cpu = ops.rasterize(verts, faces, h, w, impl="native")
        gpu = [t.cpu() for t in ops.rasterize(verts.cuda(), faces.cuda(), h, w, impl="native")]
        same = [torch.equal(a, b) for a, b in zip(cpu, gpu)]
        failures += not all(same)
        diff = [("equal" if s else f"{int((a != b).sum())} differ") for s, a, b in zip(same, cpu, gpu)]
        print(f"| {name} | {diff[0]} | {diff[1]} | {diff[2]} | {float((cpu[0] >= 0).float().mean()):.3f} |")

    verts, faces = flame_sized_mesh(10)
    vg, fg = verts.cuda(), faces.cuda()
    rows = [("CUDA kernel", best(lambda: ops.rasterize(vg, fg, 512, 512, impl="native"), 10, True)),
            ("pure-torch twin on the GPU", best(lambda: ops.rasterize(vg, fg, 512, 512, impl="reference"), 3, True)),
            ("C++ kernel (CPU)", best(lambda: ops.rasterize(verts, faces, 512, 512, impl="native"), 3, False)),
            ("pure-torch twin on the CPU", best(lambda: ops.rasterize(verts, faces, 512, 512, impl="reference"), 1,
                                                False))]
    cuda_time = rows[0][1]
    print("\n| rasterize 512x512, B=10, FLAME-sized (10,000 faces) | time per call | images/s | CUDA speed-up |")
    print("|---|---|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {seconds * 1e3:,.2f} ms | {10 / seconds:,.0f} | {seconds / cuda_time:,.1f}x |")
    print("\nparity:", "OK" if not failures else f"{failures} case(s) FAILED")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

"""GPU benchmark of the caphuman sampler: full-size randomly initialised SD1.5 UNet + 9-channel
ControlFace (synfiqa_plugins.stage2.caphuman.random_init "sd15"), 512x512 (latent 64), fp16,
batch 10, 20 DDIM steps with classifier-free guidance, the ControlNet reused across the two
halves and not reused. Prints seconds per image (the denoising loop; VAE decode separately) and
peak GPU memory, and writes them as JSON to $OUT/gpu_stage2.json (or ./gpu_stage2.json).

    python tests/benchmarks/gpu_stage2.py [--batch 10] [--steps 20] [--repeats 2]

On a machine without CUDA it prints why and exits 0 (nothing to measure).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("gpu_stage2: skipped: no CUDA device on this machine (run it on a GPU machine as is)")
        return 0
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from synfiqa_plugins.stage2.caphuman.network import decode, denoise
    from synfiqa_plugins.stage2.caphuman.random_init import random_networks

    device, dtype = torch.device("cuda"), torch.float16
    torch.backends.cuda.matmul.allow_tf32 = True
    networks = random_networks("sd15")
    for module in (networks.unet, networks.controlface, networks.vae):
        module.to(device=device, dtype=dtype)
    n = args.batch
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(n, 4, 64, 64, generator=generator)
    hint = torch.rand(n, 9, 512, 512, generator=generator)
    context = torch.randn(n, 258, 768, generator=generator)
    text, negative = torch.randn(n, 77, 768, generator=generator), torch.randn(n, 77, 768, generator=generator)
    results = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "batch": n, "steps": args.steps,
               "image_size": 512, "dtype": "float16", "guidance": 7.0}
    for reuse in (True, False):
        label = "reused" if reuse else "not_reused"
        denoise(networks, noise, hint, context, text, negative, steps=2, reuse_control=reuse)   # warm-up
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(args.repeats):
            torch.cuda.synchronize()
            start = time.perf_counter()
            latents = denoise(networks, noise, hint, context, text, negative, steps=args.steps, reuse_control=reuse)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        best = min(times)
        results[label] = {"seconds_per_batch": best, "seconds_per_image": best / n,
                          "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30, "all_runs_s": times}
        print(f"ControlNet {label:>10}: {best / n:.3f} s/image ({best:.2f} s per batch of {n}), "
              f"peak {results[label]['peak_memory_gib']:.1f} GiB")
    torch.cuda.synchronize()
    start = time.perf_counter()
    decode(networks, latents)
    torch.cuda.synchronize()
    results["vae_decode_seconds_per_image"] = (time.perf_counter() - start) / n
    results["speedup_reused"] = results["not_reused"]["seconds_per_image"] / results["reused"]["seconds_per_image"]
    total = results["reused"]["seconds_per_image"] + results["vae_decode_seconds_per_image"]
    results["synfiqa_scale_gpu_hours"] = total * 10_000 * 110 / 3600
    print(f"VAE decode: {results['vae_decode_seconds_per_image']:.3f} s/image; reuse speed-up x{results['speedup_reused']:.2f}; "
          f"10k identities x 110 images: {results['synfiqa_scale_gpu_hours']:.0f} GPU-hours on this GPU")
    out = Path(os.environ.get("OUT", ".")) / "gpu_stage2.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

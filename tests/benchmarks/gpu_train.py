"""`synfiqa train` on a GPU machine, run as is from the root of a source checkout:

    python tests/benchmarks/gpu_train.py [--steps 40] [--arch iresnet50] [--batch 128]

IResNet-50 (the built-in CR-FIQA network), batch 128, AMP (float16 autocast, GradScaler),
CR target, on 2,048 random 112x112 crops in 64 identity folders, 8 DataLoader workers:
prints the images/s of the steady state (the last logged window), the peak GPU memory, and
that the loss stayed finite; then the same for fp32 (AMP off) for comparison. A markdown
table at the end. Exits 1 when no CUDA device is visible or a loss is not finite."""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402


def noise_dataset(root: Path, identities: int = 64, per_identity: int = 32) -> Path:
    rng = np.random.default_rng(0)
    for identity in range(identities):
        folder = root / f"id{identity:03d}"
        folder.mkdir(parents=True)
        for k in range(per_identity):
            Image.fromarray(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)).save(folder / f"{k}.jpg", quality=95)
    return root


def run(dataset: Path, out: Path, arch: str, batch: int, steps: int, amp: str) -> dict:
    from synfiqa.stages.s6_train import load_settings, train
    from synfiqa_plugins.models.cr_fiqa import CRFIQAScorer

    settings = load_settings(None, [f"arch='{arch}'", f"batch_size={batch}", f"amp='{amp}'", "workers=8",
                                    "device='cuda'", "log_every=10", "checkpoint_every=100000", "cr_offset=1.0"])
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = train([dataset], out, settings, CRFIQAScorer.training_network, max_steps=steps)
    wall = time.perf_counter() - start
    last = result.rows[-1]
    return {"amp": amp, "images_per_s": last["images_per_s"], "steps_per_s": last["steps_per_s"],
            "peak_gib": torch.cuda.max_memory_allocated() / 2 ** 30, "wall_s": wall,
            "finite": all(np.isfinite(r["loss"]) for r in result.rows), "loss": last["loss"]}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--arch", default="iresnet50")
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device visible")
        return 1
    torch.backends.cudnn.benchmark = True
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        dataset = noise_dataset(Path(tmp) / "data")
        rows = [run(dataset, Path(tmp) / f"run-{amp}", args.arch, args.batch, args.steps, amp) for amp in ("on", "off")]
    print(f"\n| {args.arch}, batch {args.batch} | images/s | steps/s | peak GPU memory | loss finite |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| AMP {row['amp']} | {row['images_per_s']:.0f} | {row['steps_per_s']:.2f} | {row['peak_gib']:.2f} GiB "
              f"| {row['finite']} |")
    return 0 if all(row["finite"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

"""synfiqa's compiled ops, with their pure-torch twins.

    blur_resample(images, kernels, factors, out_size=None, impl="auto")
        uint8 [N, C, H, W] -> uint8 [N, C, out_h, out_w]: per-sample KxK blur (reflect
        padding), antialiased bicubic downscale to round(H / factor), bicubic resize to
        out_size (default: the input size). The MR-FIQA degradation in one pass.
    ref_cosine(samples, sample_ids, references, reference_ids, impl="auto")
        [N] cosine of each sample embedding to the plain mean of its identity's reference
        embeddings (the fr domain of the MR score). NaN where the identity has no reference.
    greedy_unique(embeddings, threshold, impl="auto")
        bool [N] kept: the Stage-1 uniqueness rule, greedy in row order.
    rasterize(verts, faces, height, width, impl="auto")
        (pix_to_face, bary, zbuf): pytorch3d's rasterize_meshes as DECA calls it (one face
        per pixel, blur 0, no culling, NDC), with deterministic tie rules.

impl: "reference" runs the op's pure-torch twin (synfiqa.ops.reference: exactly one per op,
the definition the kernel must match, the parity tests' oracle and the fallback); "native"
the compiled kernel (C++ on CPU, CUDA on GPU), raising NativeOpsUnavailable when it cannot be
built; "auto" the compiled kernel when it builds, else the twin (a failed build warns once).
Set SYNFIQA_NO_NATIVE_OPS=1 to make "auto" use the twin. `status()` says which backend each
op uses and why. Code that needs "the reference" calls these wrappers with impl="reference".

The compiled kernels equal their twin: blur_resample within 1 grey level (float32
summation order; the C++ kernel also skips kernel border rows/columns whose total absolute
weight is below 2^-24 of the kernel's, a change below float32 resolution, <= 1.5e-5 grey
level), ref_cosine within float32 rounding, greedy_unique exactly. greedy_unique compares
float64 "ordered cosines" (products rounded one by one, summed in index order; see
synfiqa.ops.reference): the C++ kernel and the twin compute that same formula for every
cosine near the threshold, so they agree bit for bit even for a cosine a few float64 ulp
from it. The CUDA kernel compares float64 GEMM cosines (cuBLAS summation order): it can
judge differently only a cosine within ~1e-13 of the threshold. rasterize: the C++ and CUDA
kernels and the twin compute the same float32 operations one by one (no fused multiply-add)
and resolve ties by face index, so all three agree bit for bit on every output.

Benchmarks against the slow baselines are not part of this package: tests/benchmarks
(`make bench` in a source checkout).
"""
from __future__ import annotations

import math
from numbers import Real

import torch

from synfiqa.ops import loader as _loader
from synfiqa.ops.reference import (
    blur_resample_reference,
    greedy_unique_reference,
    rasterize_reference,
    ref_cosine_reference,
)

IMPLS = ("auto", "native", "reference")

__all__ = [
    "IMPLS", "NativeOpsUnavailable", "blur_resample", "ref_cosine", "greedy_unique", "rasterize", "status", "build",
    "blur_resample_reference", "ref_cosine_reference", "greedy_unique_reference", "rasterize_reference",
]


class NativeOpsUnavailable(RuntimeError):
    """impl="native" was asked for, but the compiled op cannot run here."""


# ---------------------------------------------------------------- backend choice

def _native_ready(device: torch.device) -> tuple[bool, str]:
    if device.type == "cpu":
        if _loader.ensure_cpu():
            return True, "compiled C++ kernel"
        return False, f"the C++ build failed: {_loader.state('cpu').error}"
    if device.type == "cuda":
        if _loader.ensure_cuda():
            return True, "compiled CUDA kernel"
        return False, f"the CUDA build failed: {_loader.state('cuda').error}"
    return False, f"no compiled kernel for device type {device.type!r}"


def _use_native(op: str, impl: str, device: torch.device) -> bool:
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "reference":
        return False
    if impl == "auto" and _loader.native_disabled():
        return False
    ready, reason = _native_ready(device)
    if impl == "native" and not ready:
        raise NativeOpsUnavailable(f"native {op} is unavailable on {device}: {reason}")
    return ready


# ---------------------------------------------------------------- validation helpers

def _tensor(value, name: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def _same_device(tensor: torch.Tensor, name: str, device: torch.device, anchor: str) -> None:
    if tensor.device != device:
        raise ValueError(f"{name} is on {tensor.device} but {anchor} is on {device}; move them to one device")


def _float_matrix(value, name: str) -> torch.Tensor:
    x = _tensor(value, name)
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D [rows, D], got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if x.shape[1] == 0:
        raise ValueError(f"{name} must have at least one column (D >= 1), got shape {tuple(x.shape)}")
    return x


def _ids(value, name: str, length: int, length_name: str, device: torch.device, anchor: str) -> torch.Tensor:
    ids = _tensor(value, name)
    if ids.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(ids.shape)}")
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor, got {ids.dtype}")
    if ids.shape[0] != length:
        raise ValueError(f"{name} has {ids.shape[0]} entries but {length_name} has {length} rows")
    _same_device(ids, name, device, anchor)
    ids = ids.to(torch.int64).contiguous()
    if ids.numel() and int(ids.min()) < 0:
        raise ValueError(f"{name} must be >= 0 (identity indices), got {int(ids.min())}")
    return ids


# ---------------------------------------------------------------- blur_resample

def blur_resample(images: torch.Tensor, kernels: torch.Tensor, factors, out_size=None,
                  impl: str = "auto") -> torch.Tensor:
    """Blur each sample with its KxK kernel (correlation, reflect padding), downscale it by
    its factor (antialiased bicubic, to round(H / factor) x round(W / factor)), resize it to
    out_size (bicubic), round: uint8 [N, C, out_h, out_w].

    images: uint8 [N, C, H, W], N >= 1, H and W > K // 2.
    kernels: float [N, K, K] (or one [K, K] for every sample), K odd.
    factors: [N] (or one number) >= 1; moved to the images' device.
    out_size: (out_h, out_w); default (H, W).
    """
    images = _tensor(images, "images")
    if images.dim() != 4:
        raise ValueError(f"images must be 4-D [N, C, H, W], got shape {tuple(images.shape)}")
    if images.dtype != torch.uint8:
        raise TypeError(f"images must be uint8, got {images.dtype}")
    n, channels, height, width = images.shape
    if n == 0:
        raise ValueError("images is an empty batch (N = 0)")
    if channels == 0 or height == 0 or width == 0:
        raise ValueError(f"images has an empty dimension: shape {tuple(images.shape)}")
    device = images.device

    kernels = _tensor(kernels, "kernels")
    if not kernels.is_floating_point():
        raise TypeError(f"kernels must be a floating-point tensor, got {kernels.dtype}")
    if kernels.dim() == 2:
        kernels = kernels.expand(n, *kernels.shape)
    if kernels.dim() != 3 or kernels.shape[1] != kernels.shape[2]:
        raise ValueError(f"kernels must be [N, K, K] (or [K, K]), got shape {tuple(kernels.shape)}")
    if kernels.shape[0] != n:
        raise ValueError(f"kernels has {kernels.shape[0]} kernels but images has {n} samples")
    size = kernels.shape[1]
    if size == 0 or size % 2 == 0:
        raise ValueError(f"kernels must have an odd size >= 1 (the blur is centred), got K = {size}")
    if height <= size // 2 or width <= size // 2:
        raise ValueError(f"images ({height}x{width}) must be larger than kernel size // 2 = {size // 2} "
                         f"for reflect padding")
    _same_device(kernels, "kernels", device, "images")
    kernels = kernels.to(torch.float32).contiguous()
    if not bool(torch.isfinite(kernels).all()):
        raise ValueError("kernels contain NaN or infinity")

    if isinstance(factors, Real):
        factors = torch.full((n,), float(factors), dtype=torch.float64)
    factors = _tensor(factors, "factors")
    if factors.dim() == 0:
        factors = factors.expand(n)
    if factors.dim() != 1 or factors.shape[0] != n:
        raise ValueError(f"factors must be [N] = [{n}] (or one number), got shape {tuple(factors.shape)}")
    factors = factors.to(device=device, dtype=torch.float64).contiguous()
    if not bool(torch.isfinite(factors).all()) or bool((factors < 1.0).any()):
        raise ValueError(f"factors must be finite and >= 1 (a downscale), got min {float(factors.min())}")

    if out_size is None:
        out_size = (height, width)
    try:
        out_h, out_w = (int(v) for v in out_size)
    except (TypeError, ValueError):
        raise ValueError(f"out_size must be (height, width), got {out_size!r}") from None
    if out_h <= 0 or out_w <= 0:
        raise ValueError(f"out_size must be positive, got {(out_h, out_w)}")

    images = images.contiguous()
    if _use_native("blur_resample", impl, device):
        return torch.ops.synfiqa.blur_resample(images, kernels, factors, [out_h, out_w])
    return blur_resample_reference(images, kernels, factors, (out_h, out_w))


# ---------------------------------------------------------------- ref_cosine

def _common_float(*tensors: torch.Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def ref_cosine(samples: torch.Tensor, sample_ids: torch.Tensor, references: torch.Tensor,
               reference_ids: torch.Tensor, impl: str = "auto") -> torch.Tensor:
    """[N] cosine of samples[i] to the plain (not re-normalised) mean of the references whose
    id equals sample_ids[i]; NaN when no reference has that id.

    samples [N, D] and references [M, D] floating (float64 if either is, else float32: the
    result's dtype); sample_ids [N] and reference_ids [M] non-negative integers.
    """
    samples = _float_matrix(samples, "samples")
    references = _float_matrix(references, "references")
    device = samples.device
    _same_device(references, "references", device, "samples")
    if references.shape[1] != samples.shape[1]:
        raise ValueError(f"references have D = {references.shape[1]} but samples have D = {samples.shape[1]}")
    sample_ids = _ids(sample_ids, "sample_ids", samples.shape[0], "samples", device, "samples")
    reference_ids = _ids(reference_ids, "reference_ids", references.shape[0], "references", device, "samples")
    dtype = _common_float(samples, references)
    samples = samples.to(dtype).contiguous()
    references = references.to(dtype).contiguous()
    if samples.shape[0] == 0:
        return torch.empty((0,), dtype=dtype, device=device)
    if _use_native("ref_cosine", impl, device):
        return torch.ops.synfiqa.ref_cosine(samples, sample_ids, references, reference_ids)
    return ref_cosine_reference(samples, sample_ids, references, reference_ids)


# ---------------------------------------------------------------- greedy_unique

def greedy_unique(embeddings: torch.Tensor, threshold: float, impl: str = "auto") -> torch.Tensor:
    """bool [N]: row j is kept unless a kept earlier row i has cosine(i, j) > threshold
    (the Stage-1 identity-uniqueness filter; 0.3 in the paper). Memory stays O(N D).
    Cosines are float64 ordered cosines (synfiqa.ops.reference), whatever the input dtype."""
    embeddings = _float_matrix(embeddings, "embeddings")
    if isinstance(threshold, torch.Tensor) and threshold.numel() == 1:
        threshold = threshold.item()
    if not isinstance(threshold, Real) or isinstance(threshold, bool) or not math.isfinite(float(threshold)):
        raise ValueError(f"threshold must be a finite number, got {threshold!r}")
    threshold = float(threshold)
    embeddings = embeddings.to(_common_float(embeddings)).contiguous()
    if embeddings.shape[0] == 0:
        return torch.empty((0,), dtype=torch.bool, device=embeddings.device)
    native = _use_native("greedy_unique", impl, embeddings.device)
    if not bool(torch.isfinite(embeddings).all()):
        raise ValueError("embeddings contain NaN or infinity")
    if native:
        return torch.ops.synfiqa.greedy_unique(embeddings, threshold)
    return greedy_unique_reference(embeddings, threshold)


# ---------------------------------------------------------------- rasterize

def rasterize(verts: torch.Tensor, faces: torch.Tensor, height: int, width: int,
              impl: str = "auto") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rasterize N meshes that share `faces`, one face per pixel: pytorch3d's
    `rasterize_meshes(..., blur_radius=0, faces_per_pixel=1, perspective_correct=False)` (no
    culling) as DECA calls it, with the K axis dropped.

    verts: floating [N, V, 3] in pytorch3d NDC (+X left, +Y up, +Z away from the camera; the
    shorter image side spans [-1, 1]); computed in float32. faces: integer [F, 3] in [0, V).
    height, width: the image size (may differ).

    Returns pix_to_face int64 [N, H, W] (packed index n * F + f, as pytorch3d; -1 where no
    face covers the pixel), bary float32 [N, H, W, 3] and zbuf float32 [N, H, W] (-1 there).
    The nearest face wins (smallest interpolated z; z < 0 is behind the camera and skipped),
    ties to the lowest face index; a pixel centre exactly on a shared edge is covered by
    exactly one of the faces. The full definition: synfiqa.ops.reference.rasterize_reference.
    """
    verts = _tensor(verts, "verts")
    if verts.dim() != 3 or verts.shape[2] != 3:
        raise ValueError(f"verts must be 3-D [N, V, 3], got shape {tuple(verts.shape)}")
    if not verts.is_floating_point():
        raise TypeError(f"verts must be a floating-point tensor, got {verts.dtype}")
    faces = _tensor(faces, "faces")
    if faces.dim() != 2 or faces.shape[1] != 3:
        raise ValueError(f"faces must be 2-D [F, 3], got shape {tuple(faces.shape)}")
    if faces.is_floating_point() or faces.is_complex() or faces.dtype == torch.bool:
        raise TypeError(f"faces must be an integer tensor, got {faces.dtype}")
    device = verts.device
    _same_device(faces, "faces", device, "verts")
    sizes = []
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
        sizes.append(int(value))
    height, width = sizes
    if faces.shape[0] >= 2**31:
        raise ValueError(f"at most 2^31 - 1 faces, got {faces.shape[0]}")
    verts = verts.to(torch.float32).contiguous()
    faces = faces.to(torch.int64).contiguous()
    if faces.numel() and (int(faces.min()) < 0 or int(faces.max()) >= verts.shape[1]):
        raise ValueError(f"faces must index vertices in [0, {verts.shape[1]}), got values in "
                         f"[{int(faces.min())}, {int(faces.max())}]")
    if not bool(torch.isfinite(verts).all()):
        raise ValueError("verts contain NaN or infinity")
    if _use_native("rasterize", impl, device):
        return tuple(torch.ops.synfiqa.rasterize(verts, faces, height, width))
    return rasterize_reference(verts, faces, height, width)


# ---------------------------------------------------------------- status and build

def status(load_cached: bool = True) -> dict:
    """Which backend each op uses on each device, and why. Loads an already compiled
    library from the cache (milliseconds) but never compiles."""
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    report = {"ops": [], "cache": str(_loader.cache_root()), "torch": torch.__version__,
              "cuda_available": torch.cuda.is_available(), "native_disabled": _loader.native_disabled()}
    for device in devices:
        state = _loader.state(device)
        if load_cached and not state.loaded and not state.attempted and _loader.cached_library(device):
            _loader._load(device)
        key = "CPU" if device == "cpu" else "CUDA"
        for op in _loader.OPS:
            if _loader.native_disabled():
                backend, reason = "reference", f"{_loader.DISABLE_ENV} is set"
            elif state.loaded and _loader.has_kernel(op, key):
                backend, reason = "native", f"compiled {key} kernel ({state.path})"
            elif state.loaded:
                backend, reason = "reference", f"the {key} library has no kernel for {op}"
            elif state.error:
                backend, reason = "reference", f"build failed: {state.error.splitlines()[0]}"
            else:
                backend = "native (after compiling)"
                reason = "not compiled yet: the first call compiles it, or run `synfiqa ops build`"
            report["ops"].append({"op": op, "device": device, "backend": backend, "reason": reason})
    if not torch.cuda.is_available():
        report["ops"].extend({"op": op, "device": "cuda", "backend": "unavailable",
                              "reason": "no CUDA device visible"} for op in _loader.OPS)
    return report


def build(cuda: bool | None = None, verbose: bool = False) -> dict:
    """Compile ahead of time: the CPU library, and the CUDA one when a GPU is visible (or
    cuda=True, a compile-only check without a GPU). Returns {kind: error or None}."""
    kinds = ("cpu", "cuda") if (torch.cuda.is_available() if cuda is None else cuda) else ("cpu",)
    states = _loader.build(kinds, verbose=verbose)
    return {kind: (None if s.loaded else (s.error or "not built")) for kind, s in states.items()}

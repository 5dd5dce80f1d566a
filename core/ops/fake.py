"""Fake (meta) kernels of the compiled ops, so torch.compile and FakeTensor tracing can
reason about shapes without running them. The C++ library names this module with
`m.set_python_module("synfiqa.ops.fake")`; it is imported right after the library loads."""
from __future__ import annotations

import torch


@torch.library.register_fake("synfiqa::blur_resample")
def _blur_resample_fake(images, kernels, factors, out_size):
    torch._check(images.dim() == 4, lambda: "images must be [N, C, H, W]")
    torch._check(kernels.dim() == 3, lambda: "kernels must be [N, K, K]")
    return images.new_empty((images.shape[0], images.shape[1], out_size[0], out_size[1]), dtype=torch.uint8)


@torch.library.register_fake("synfiqa::ref_cosine")
def _ref_cosine_fake(samples, sample_ids, references, reference_ids):
    torch._check(samples.dim() == 2, lambda: "samples must be [N, D]")
    return samples.new_empty((samples.shape[0],))


@torch.library.register_fake("synfiqa::greedy_unique")
def _greedy_unique_fake(embeddings, threshold):
    torch._check(embeddings.dim() == 2, lambda: "embeddings must be [N, D]")
    return embeddings.new_empty((embeddings.shape[0],), dtype=torch.bool)


@torch.library.register_fake("synfiqa::rasterize")
def _rasterize_fake(verts, faces, height, width):
    torch._check(verts.dim() == 3 and verts.shape[2] == 3, lambda: "verts must be [N, V, 3]")
    torch._check(faces.dim() == 2 and faces.shape[1] == 3, lambda: "faces must be [F, 3]")
    n = verts.shape[0]
    return (verts.new_empty((n, height, width), dtype=torch.int64),
            verts.new_empty((n, height, width, 3), dtype=torch.float32),
            verts.new_empty((n, height, width), dtype=torch.float32))

// The op schemas of the `synfiqa` namespace. Kernels live one file per op and
// backend (cpu/, cuda/); fake kernels for torch.compile are registered from
// Python, in the module named below.
#include <torch/library.h>

TORCH_LIBRARY(synfiqa, m) {
  m.set_python_module("synfiqa.ops.fake");
  // uint8 [N, C, H, W], float [N, K, K] (K odd), float64 [N] (>= 1) -> uint8 [N, C, out_h, out_w]
  m.def("blur_resample(Tensor images, Tensor kernels, Tensor factors, int[2] out_size) -> Tensor");
  // float [N, D], int64 [N], float [M, D], int64 [M] -> float [N] (NaN where the identity has no reference)
  m.def("ref_cosine(Tensor samples, Tensor sample_ids, Tensor references, Tensor reference_ids) -> Tensor");
  // float [N, D], threshold -> bool [N] kept
  m.def("greedy_unique(Tensor embeddings, float threshold) -> Tensor");
  // float32 [N, V, 3] NDC, int64 [F, 3], height, width -> (pix_to_face int64 [N, H, W] (packed n * F + f, -1),
  // bary float32 [N, H, W, 3] (-1), zbuf float32 [N, H, W] (-1)): pytorch3d rasterize_meshes, 1 face per pixel
  m.def("rasterize(Tensor verts, Tensor faces, int height, int width) -> (Tensor, Tensor, Tensor)");
}

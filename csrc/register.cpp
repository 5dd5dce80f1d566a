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
}

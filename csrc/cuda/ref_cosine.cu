// ref_cosine on the GPU: one warp per sample reads the sample's row once
// (coalesced) and its identity's mean, and reduces the dot product and the
// squared norm with warp shuffles. The means are computed by the host code
// (register_cuda.cpp) with ATen reductions.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "launchers.h"

namespace synfiqa::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarp = 32;

template <typename T>
__global__ void ref_cosine_kernel(const T* samples, const int64_t* row_of_sample, const T* means,
                                  const double* mean_norms, int64_t n, int64_t d, T* out) {
  const int64_t sample = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (sample >= n) return;  // whole warps leave together
  const int64_t row = row_of_sample[sample];
  if (row < 0) {
    if (lane == 0) out[sample] = static_cast<T>(NAN);
    return;
  }
  const T* x = samples + sample * d;
  const T* m = means + row * d;
  double dot = 0.0, square = 0.0;
  for (int64_t k = lane; k < d; k += kWarp) {
    const double value = static_cast<double>(x[k]);
    dot += value * static_cast<double>(m[k]);
    square += value * value;
  }
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    dot += __shfl_down_sync(0xffffffffu, dot, offset);
    square += __shfl_down_sync(0xffffffffu, square, offset);
  }
  if (lane == 0) {
    // Same guard as synfiqa.scoring.reference_cosine: a zero vector gives 0, not NaN.
    out[sample] = static_cast<T>(dot / fmax(sqrt(square) * mean_norms[row], 1e-12));
  }
}

template <typename T>
cudaError_t launch(const T* samples, const int64_t* row_of_sample, const T* means, const double* mean_norms, int64_t n,
                   int64_t d, T* out, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const int64_t threads = n * kWarp;
  const unsigned int blocks = static_cast<unsigned int>((threads + kThreads - 1) / kThreads);
  ref_cosine_kernel<T><<<blocks, kThreads, 0, stream>>>(samples, row_of_sample, means, mean_norms, n, d, out);
  return cudaGetLastError();
}

}  // namespace

cudaError_t ref_cosine_float(const float* samples, const int64_t* row_of_sample, const float* means,
                             const double* mean_norms, int64_t n, int64_t d, float* out, cudaStream_t stream) {
  return launch(samples, row_of_sample, means, mean_norms, n, d, out, stream);
}

cudaError_t ref_cosine_double(const double* samples, const int64_t* row_of_sample, const double* means,
                              const double* mean_norms, int64_t n, int64_t d, double* out, cudaStream_t stream) {
  return launch(samples, row_of_sample, means, mean_norms, n, d, out, stream);
}

}  // namespace synfiqa::cuda

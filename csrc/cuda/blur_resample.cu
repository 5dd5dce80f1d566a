// blur_resample on the GPU: the same two-step composition as the CPU kernel
// (see cpu/blur_resample.cpp), one thread per value:
//   composite  G[n][p][t][b] = sum_a k[n][a][b] Wy[n][p][t - a]
//   step 1     R[n][c][u][q][b] = sum_j Wx[n][q][j] xpad(n, c, u, first_x[q] + j + b)
//   step 2     S[n][c][p][q] = sum_t sum_b G[n][p][t][b] R[n][c][first_y[p] + t][q][b]
//   resize     out = bicubic(S), rounded half to even, clamped to [0, 255]
// The host processes the batch in chunks of samples so R stays bounded.
#include <cuda_runtime.h>

#include <cstdint>

#include "launchers.h"

namespace synfiqa::cuda {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ int64_t reflect(int64_t index, int64_t size) {
  if (size == 1) return 0;
  if (index < 0) return -index;
  if (index >= size) return 2 * (size - 1) - index;
  return index;
}

__global__ void composite_kernel(BlurResampleArgs a) {
  const int64_t rows = a.taps_y + a.k - 1;
  const int64_t total = a.n * a.small_h_max * rows * a.k;
  const int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (index >= total) return;
  const int64_t b = index % a.k;
  const int64_t t = (index / a.k) % rows;
  const int64_t p = (index / (a.k * rows)) % a.small_h_max;
  const int64_t n = index / (a.k * rows * a.small_h_max);
  float value = 0.0f;
  if (p < a.small_h[n]) {
    const int64_t count = a.count_y[n * a.small_h_max + p];
    const float* wy = a.weight_y + (n * a.small_h_max + p) * a.taps_y;
    const float* kernel = a.kernels + n * a.k * a.k;
    for (int64_t row = 0; row < a.k; ++row) {
      const int64_t i = t - row;
      if (i >= 0 && i < count) value += kernel[row * a.k + b] * wy[i];
    }
  }
  a.composite[index] = value;
}

__global__ void horizontal_kernel(BlurResampleArgs a, int64_t first, int64_t count, float* rows) {
  const int64_t padded_h = a.height + a.k - 1;
  const int64_t total = count * a.channels * padded_h * a.small_w_max * a.k;
  const int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (index >= total) return;
  const int64_t b = index % a.k;
  const int64_t q = (index / a.k) % a.small_w_max;
  const int64_t u = (index / (a.k * a.small_w_max)) % padded_h;
  const int64_t c = (index / (a.k * a.small_w_max * padded_h)) % a.channels;
  const int64_t n = first + index / (a.k * a.small_w_max * padded_h * a.channels);
  float value = 0.0f;
  if (q < a.small_w[n]) {
    const int64_t pad = a.k / 2;
    const uint8_t* row = a.images + ((n * a.channels + c) * a.height + reflect(u - pad, a.height)) * a.width;
    const int64_t start = a.first_x[n * a.small_w_max + q];
    const int64_t taps = a.count_x[n * a.small_w_max + q];
    const float* wx = a.weight_x + (n * a.small_w_max + q) * a.taps_x;
    for (int64_t j = 0; j < taps; ++j) value += wx[j] * static_cast<float>(row[reflect(start + j + b - pad, a.width)]);
  }
  rows[index] = value;
}

__global__ void contract_kernel(BlurResampleArgs a, int64_t first, int64_t count, const float* rows, float* small) {
  const int64_t total = count * a.channels * a.small_h_max * a.small_w_max;
  const int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (index >= total) return;
  const int64_t q = index % a.small_w_max;
  const int64_t p = (index / a.small_w_max) % a.small_h_max;
  const int64_t local = index / (a.small_w_max * a.small_h_max);  // (sample - first) * channels + c
  const int64_t n = first + local / a.channels;
  float value = 0.0f;
  if (p < a.small_h[n] && q < a.small_w[n]) {
    const int64_t padded_h = a.height + a.k - 1;
    const int64_t composite_rows = a.taps_y + a.k - 1;
    const int64_t start = a.first_y[n * a.small_h_max + p];
    const int64_t used = a.count_y[n * a.small_h_max + p] + a.k - 1;
    const float* g = a.composite + (n * a.small_h_max + p) * composite_rows * a.k;
    const float* r = rows + local * padded_h * a.small_w_max * a.k;
    for (int64_t t = 0; t < used; ++t) {
      const float* r_row = r + ((start + t) * a.small_w_max + q) * a.k;
      const float* g_row = g + t * a.k;
      for (int64_t b = 0; b < a.k; ++b) value += g_row[b] * r_row[b];
    }
  }
  small[index] = value;
}

__global__ void resize_kernel(BlurResampleArgs a, int64_t first, int64_t count, const float* small) {
  const int64_t total = count * a.channels * a.out_h * a.out_w;
  const int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (index >= total) return;
  const int64_t x = index % a.out_w;
  const int64_t y = (index / a.out_w) % a.out_h;
  const int64_t local = index / (a.out_w * a.out_h);
  const int64_t n = first + local / a.channels;
  const float* s = small + local * a.small_h_max * a.small_w_max;
  const int32_t* iy = a.up_y_index + (n * a.out_h + y) * 4;
  const float* wy = a.up_y_weight + (n * a.out_h + y) * 4;
  const int32_t* ix = a.up_x_index + (n * a.out_w + x) * 4;
  const float* wx = a.up_x_weight + (n * a.out_w + x) * 4;
  float value = 0.0f;
  for (int i = 0; i < 4; ++i) {
    const float* s_row = s + static_cast<int64_t>(iy[i]) * a.small_w_max;
    const float horizontal = s_row[ix[0]] * wx[0] + s_row[ix[1]] * wx[1] + s_row[ix[2]] * wx[2] + s_row[ix[3]] * wx[3];
    value += horizontal * wy[i];
  }
  value = rintf(value);
  value = fminf(fmaxf(value, 0.0f), 255.0f);
  a.out[(first * a.channels) * a.out_h * a.out_w + index] = static_cast<uint8_t>(value);
}

inline unsigned int blocks_for(int64_t total) { return static_cast<unsigned int>((total + kThreads - 1) / kThreads); }

}  // namespace

cudaError_t blur_resample_composite(const BlurResampleArgs& args, cudaStream_t stream) {
  const int64_t total = args.n * args.small_h_max * (args.taps_y + args.k - 1) * args.k;
  if (total == 0) return cudaSuccess;
  composite_kernel<<<blocks_for(total), kThreads, 0, stream>>>(args);
  return cudaGetLastError();
}

cudaError_t blur_resample_samples(const BlurResampleArgs& args, int64_t first, int64_t count, float* rows,
                                  float* small, cudaStream_t stream) {
  const int64_t padded_h = args.height + args.k - 1;
  const int64_t row_values = count * args.channels * padded_h * args.small_w_max * args.k;
  const int64_t small_values = count * args.channels * args.small_h_max * args.small_w_max;
  const int64_t out_values = count * args.channels * args.out_h * args.out_w;
  if (out_values == 0) return cudaSuccess;
  horizontal_kernel<<<blocks_for(row_values), kThreads, 0, stream>>>(args, first, count, rows);
  contract_kernel<<<blocks_for(small_values), kThreads, 0, stream>>>(args, first, count, rows, small);
  resize_kernel<<<blocks_for(out_values), kThreads, 0, stream>>>(args, first, count, small);
  return cudaGetLastError();
}

}  // namespace synfiqa::cuda

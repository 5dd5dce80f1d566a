// Launchers of the CUDA kernels. The .cu files that define them include no
// torch header (they compile in seconds); register_cuda.cpp turns tensors into
// these raw pointers and registers the ops for the CUDA dispatch key.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace synfiqa::cuda {

// Everything blur_resample needs, as device pointers. Per-sample tables are
// padded to the batch's largest size (small_h_max, ...); see resample_plan.h
// for what each table means.
struct BlurResampleArgs {
  const uint8_t* images;  // [n][channels][height][width]
  uint8_t* out;           // [n][channels][out_h][out_w]
  int64_t n, channels, height, width, k, out_h, out_w;
  int64_t small_h_max, small_w_max, taps_y, taps_x;
  const int32_t* small_h;       // [n]
  const int32_t* small_w;       // [n]
  const int32_t* first_y;       // [n][small_h_max]
  const int32_t* count_y;       // [n][small_h_max]
  const float* weight_y;        // [n][small_h_max][taps_y]
  const int32_t* first_x;       // [n][small_w_max]
  const int32_t* count_x;       // [n][small_w_max]
  const float* weight_x;        // [n][small_w_max][taps_x]
  const int32_t* up_y_index;    // [n][out_h][4]
  const float* up_y_weight;     // [n][out_h][4]
  const int32_t* up_x_index;    // [n][out_w][4]
  const float* up_x_weight;     // [n][out_w][4]
  const float* kernels;         // [n][k][k]
  float* composite;             // [n][small_h_max][taps_y + k - 1][k]
};

// G: the kernel composed with each output row's vertical downscale filter.
cudaError_t blur_resample_composite(const BlurResampleArgs& args, cudaStream_t stream);
// Samples [first, first + count): step 1 into `rows` ([count][channels][height+k-1][small_w_max][k]),
// step 2 into `small` ([count][channels][small_h_max][small_w_max]), then the final resize into args.out.
cudaError_t blur_resample_samples(const BlurResampleArgs& args, int64_t first, int64_t count, float* rows,
                                  float* small, cudaStream_t stream);

// One warp per sample: out[i] = dot(x_i, means[row_i]) / max(|x_i| mean_norms[row_i], 1e-12),
// NaN where row_of_sample[i] < 0.
cudaError_t ref_cosine_float(const float* samples, const int64_t* row_of_sample, const float* means,
                             const double* mean_norms, int64_t n, int64_t d, float* out, cudaStream_t stream);
cudaError_t ref_cosine_double(const double* samples, const int64_t* row_of_sample, const double* means,
                              const double* mean_norms, int64_t n, int64_t d, double* out, cudaStream_t stream);

// The in-block step of greedy_unique, for rows <= 1024: over[r][c] says cosine(r, c) > threshold;
// dropped[] holds the rows already dropped by earlier blocks and receives the final decision.
cudaError_t greedy_resolve_block(const bool* over, int64_t rows, bool* dropped, cudaStream_t stream);
constexpr int64_t kGreedyBlock = 1024;

// rasterize: pix_to_face, bary and zbuf come in filled with -1 (the background); keys
// ([n][height][width]) filled with kRasterizeNoKey, used as the per-pixel depth buffer.
struct RasterizeArgs {
  const float* verts;    // [n][v][3]
  const int64_t* faces;  // [f][3], indices checked by the caller
  int64_t n, v, f, height, width;
  unsigned long long* keys;
  int64_t* pix_to_face;  // [n][height][width]
  float* bary;           // [n][height][width][3]
  float* zbuf;           // [n][height][width]
};
constexpr unsigned long long kRasterizeNoKey = 0x7FFFFFFFFFFFFFFFull;  // INT64_MAX, above every key
cudaError_t rasterize(const RasterizeArgs& args, cudaStream_t stream);

}  // namespace synfiqa::cuda

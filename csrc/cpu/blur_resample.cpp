// blur_resample on the CPU: per-sample KxK blur (reflect padding), antialiased
// bicubic downscale by a per-sample factor, bicubic resize to out_size, in one
// pass per channel that never materialises the blurred image.
//
// With B the blurred image, Wy / Wx the downscale weights and xpad the
// reflect-padded input, the downscaled value at (p, q) is
//   S(p, q) = sum_i Wy(p, i) sum_j Wx(q, j) B(i, j)
//           = sum_u sum_b G_p(u, b) R(u, q, b)
// where
//   R(u, q, b) = sum_j Wx(q, j) xpad(u, j + b)          (step 1: horizontal
//                downscale of padded row u, once per kernel column b)
//   G_p(u, b)  = sum_a k(a, b) Wy(p, u - a)             (the kernel composed
//                with the vertical downscale filter of output row p)
// so the blur is evaluated only through the downscale's sample positions.
// Per input pixel this costs about K*L/f + K*(K+L)/f^2 multiply-adds
// (f = factor, L ~ 4f the downscale window) instead of K*K for a blur at
// every pixel. Both steps vectorise over the kernel column b (padded to a
// multiple of 8 lanes, with zero composite weights in the padding).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <vector>

#include "../resample_plan.h"
#include "simd.h"

namespace synfiqa {
namespace {

using simd::f32x8;
constexpr int64_t kLanes = 8;

// The row-level steps stay separate functions: profiles then show each step's share,
// and a call per row costs nothing next to the row's work.
#if defined(__GNUC__)
#define SYNFIQA_ROW_STEP __attribute__((noinline))
#else
#define SYNFIQA_ROW_STEP
#endif

struct SamplePlan {
  int64_t small_h = 0, small_w = 0;
  AntialiasAxis down_y, down_x;
  CubicAxis up_y, up_x;
  int64_t rows_max = 0;          // padded rows read by one output row: widest window + K - 1
  std::vector<float> composite;  // G: [small_h][rows_max][padded_k]
};

SYNFIQA_ROW_STEP void make_plan(const float* kernel, int64_t k, int64_t padded_k, int64_t height, int64_t width,
               double factor, int64_t out_h, int64_t out_w, SamplePlan& plan) {
  plan.small_h = downscaled_side(height, factor);
  plan.small_w = downscaled_side(width, factor);
  plan.down_y = antialiased_bicubic_axis(height, plan.small_h);
  plan.down_x = antialiased_bicubic_axis(width, plan.small_w);
  plan.up_y = bicubic_axis(plan.small_h, out_h);
  plan.up_x = bicubic_axis(plan.small_w, out_w);
  plan.rows_max = plan.down_y.taps + k - 1;
  const int64_t row_stride = plan.rows_max * padded_k;
  plan.composite.assign(plan.small_h * row_stride, 0.0f);
  for (int64_t p = 0; p < plan.small_h; ++p) {
    const float* wy = plan.down_y.weights.data() + p * plan.down_y.taps;
    float* g = plan.composite.data() + p * row_stride;
    for (int64_t a = 0; a < k; ++a) {
      const float* kernel_row = kernel + a * k;
      for (int64_t i = 0; i < plan.down_y.count[p]; ++i) {
        float* g_row = g + (i + a) * padded_k;
        const float weight = wy[i];
        for (int64_t b = 0; b < k; ++b) g_row[b] += weight * kernel_row[b];
      }
    }
  }
}

// Step 1 for one padded row and NV vectors of kernel columns starting at b0:
// out[q][b0 + lane] = sum_j Wx(q, j) row[first_q + j + b0 + lane].
template <int NV>
void horizontal_chunk(const float* row, const AntialiasAxis& axis, int64_t small_w, int64_t padded_k,
                      int64_t b0, float* out) {
  for (int64_t q = 0; q < small_w; ++q) {
    f32x8 acc[NV];
    for (int v = 0; v < NV; ++v) acc[v] = simd::zero();
    const float* src = row + axis.first[q] + b0;
    const float* weights = axis.weights.data() + q * axis.taps;
    const int64_t count = axis.count[q];
    for (int64_t j = 0; j < count; ++j) {
      const f32x8 weight = simd::splat(weights[j]);
      for (int v = 0; v < NV; ++v) acc[v] += weight * simd::load(src + j + v * kLanes);
    }
    for (int v = 0; v < NV; ++v) simd::store(out + q * padded_k + b0 + v * kLanes, acc[v]);
  }
}

// Step 2 for one output row and NV vectors of kernel columns starting at b0:
// s[q] += sum_t sum_lane G(t, b0 + lane) R(first + t, q, b0 + lane).
// QB output columns at a time keep QB*NV accumulators in registers.
template <int NV>
void contract_chunk(const float* g, const float* const* r_rows, int64_t rows, int64_t small_w,
                    int64_t padded_k, int64_t b0, float* s) {
  constexpr int QB = NV == 1 ? 8 : (NV == 2 ? 6 : (NV == 3 ? 4 : 3));
  int64_t q = 0;
  for (; q + QB <= small_w; q += QB) {
    f32x8 acc[QB][NV];
    for (int i = 0; i < QB; ++i)
      for (int v = 0; v < NV; ++v) acc[i][v] = simd::zero();
    for (int64_t t = 0; t < rows; ++t) {
      f32x8 gv[NV];
      for (int v = 0; v < NV; ++v) gv[v] = simd::load(g + t * padded_k + b0 + v * kLanes);
      const float* r = r_rows[t] + q * padded_k + b0;
      for (int i = 0; i < QB; ++i)
        for (int v = 0; v < NV; ++v) acc[i][v] += gv[v] * simd::load(r + i * padded_k + v * kLanes);
    }
    for (int i = 0; i < QB; ++i) {
      f32x8 total = acc[i][0];
      for (int v = 1; v < NV; ++v) total += acc[i][v];
      s[q + i] += simd::sum(total);
    }
  }
  for (; q < small_w; ++q) {
    f32x8 acc[NV];
    for (int v = 0; v < NV; ++v) acc[v] = simd::zero();
    for (int64_t t = 0; t < rows; ++t) {
      const float* r = r_rows[t] + q * padded_k + b0;
      for (int v = 0; v < NV; ++v)
        acc[v] += simd::load(g + t * padded_k + b0 + v * kLanes) * simd::load(r + v * kLanes);
    }
    f32x8 total = acc[0];
    for (int v = 1; v < NV; ++v) total += acc[v];
    s[q] += simd::sum(total);
  }
}

// Kernel columns are processed in chunks of at most 4 vectors (32 lanes), so
// any kernel size works with register-resident accumulators.
template <typename Visit>
void for_each_chunk(int64_t padded_k, Visit&& visit) {
  for (int64_t b0 = 0; b0 < padded_k; b0 += 4 * kLanes) {
    visit(b0, std::min<int64_t>(4, (padded_k - b0) / kLanes));
  }
}

SYNFIQA_ROW_STEP void horizontal_row(const float* row, const AntialiasAxis& axis, int64_t small_w, int64_t padded_k, float* out) {
  for_each_chunk(padded_k, [&](int64_t b0, int64_t nv) {
    switch (nv) {
      case 1: horizontal_chunk<1>(row, axis, small_w, padded_k, b0, out); break;
      case 2: horizontal_chunk<2>(row, axis, small_w, padded_k, b0, out); break;
      case 3: horizontal_chunk<3>(row, axis, small_w, padded_k, b0, out); break;
      default: horizontal_chunk<4>(row, axis, small_w, padded_k, b0, out); break;
    }
  });
}

SYNFIQA_ROW_STEP void contract_row(const float* g, const float* const* r_rows, int64_t rows, int64_t small_w, int64_t padded_k,
                  float* s) {
  for_each_chunk(padded_k, [&](int64_t b0, int64_t nv) {
    switch (nv) {
      case 1: contract_chunk<1>(g, r_rows, rows, small_w, padded_k, b0, s); break;
      case 2: contract_chunk<2>(g, r_rows, rows, small_w, padded_k, b0, s); break;
      case 3: contract_chunk<3>(g, r_rows, rows, small_w, padded_k, b0, s); break;
      default: contract_chunk<4>(g, r_rows, rows, small_w, padded_k, b0, s); break;
    }
  });
}

struct Scratch {
  std::vector<float> row;    // one reflect-padded input row (+ padded_k zeros)
  std::vector<float> ring;   // R for the last rows_max padded rows: [rows_max][small_w][padded_k]
  std::vector<const float*> ring_rows;
  std::vector<float> small;  // S: [small_h][small_w]
  std::vector<float> half;   // S resized horizontally: [small_h][out_w]
};

// The final bicubic resize (horizontal, then vertical as torch does), rounded
// half to even and clamped like the reference's round().clamp(0, 255).
SYNFIQA_ROW_STEP void resize_to_uint8(const SamplePlan& plan, int64_t out_h, int64_t out_w, Scratch& scratch, uint8_t* out) {
  const int64_t h = plan.small_h, w = plan.small_w;
  scratch.half.resize(h * out_w);
  for (int64_t p = 0; p < h; ++p) {
    const float* src = scratch.small.data() + p * w;
    float* dst = scratch.half.data() + p * out_w;
    for (int64_t x = 0; x < out_w; ++x) {
      const int64_t* index = plan.up_x.index.data() + 4 * x;
      const float* weight = plan.up_x.weights.data() + 4 * x;
      dst[x] = src[index[0]] * weight[0] + src[index[1]] * weight[1] + src[index[2]] * weight[2] +
               src[index[3]] * weight[3];
    }
  }
  for (int64_t y = 0; y < out_h; ++y) {
    const int64_t* index = plan.up_y.index.data() + 4 * y;
    const float* weight = plan.up_y.weights.data() + 4 * y;
    const float* r0 = scratch.half.data() + index[0] * out_w;
    const float* r1 = scratch.half.data() + index[1] * out_w;
    const float* r2 = scratch.half.data() + index[2] * out_w;
    const float* r3 = scratch.half.data() + index[3] * out_w;
    uint8_t* dst = out + y * out_w;
    for (int64_t x = 0; x < out_w; ++x) {
      float value = r0[x] * weight[0] + r1[x] * weight[1] + r2[x] * weight[2] + r3[x] * weight[3];
      value = std::rint(value);
      value = value < 0.0f ? 0.0f : (value > 255.0f ? 255.0f : value);
      dst[x] = static_cast<uint8_t>(value);
    }
  }
}

void blur_resample_channel(const uint8_t* image, int64_t height, int64_t width, int64_t k, int64_t padded_k,
                           const SamplePlan& plan, const std::vector<int64_t>& column_source, int64_t out_h,
                           int64_t out_w, Scratch& scratch, uint8_t* out) {
  const int64_t pad = k / 2;
  const int64_t padded_w = width + k - 1;
  const int64_t h = plan.small_h, w = plan.small_w;
  const int64_t capacity = plan.rows_max;
  const int64_t ring_row = w * padded_k;
  scratch.row.assign(padded_w + padded_k, 0.0f);
  scratch.ring.resize(capacity * ring_row);
  scratch.ring_rows.resize(capacity);
  scratch.small.assign(h * w, 0.0f);
  const int64_t row_stride = plan.rows_max * padded_k;

  int64_t next_row = 0;  // padded rows [0, next_row) have had step 1
  for (int64_t p = 0; p < h; ++p) {
    const int64_t first = plan.down_y.first[p];
    const int64_t rows = plan.down_y.count[p] + k - 1;
    // Windows only move down, so a ring of rows_max rows holds every row still needed.
    for (; next_row < first + rows; ++next_row) {
      const uint8_t* src = image + reflect_index(next_row - pad, height) * width;
      for (int64_t c = 0; c < padded_w; ++c) scratch.row[c] = static_cast<float>(src[column_source[c]]);
      horizontal_row(scratch.row.data(), plan.down_x, w, padded_k,
                     scratch.ring.data() + (next_row % capacity) * ring_row);
    }
    for (int64_t t = 0; t < rows; ++t) scratch.ring_rows[t] = scratch.ring.data() + ((first + t) % capacity) * ring_row;
    contract_row(plan.composite.data() + p * row_stride, scratch.ring_rows.data(), rows, w, padded_k,
                 scratch.small.data() + p * w);
  }
  resize_to_uint8(plan, out_h, out_w, scratch, out);
}

at::Tensor blur_resample_cpu(const at::Tensor& images, const at::Tensor& kernels, const at::Tensor& factors,
                             at::IntArrayRef out_size) {
  TORCH_CHECK(images.dim() == 4 && images.scalar_type() == at::kByte, "images must be uint8 [N, C, H, W]");
  TORCH_CHECK(kernels.dim() == 3 && kernels.size(0) == images.size(0) && kernels.size(1) == kernels.size(2),
              "kernels must be [N, K, K]");
  TORCH_CHECK(kernels.size(1) % 2 == 1, "kernel size must be odd");
  TORCH_CHECK(factors.dim() == 1 && factors.size(0) == images.size(0), "factors must be [N]");
  TORCH_CHECK(out_size.size() == 2 && out_size[0] > 0 && out_size[1] > 0, "out_size must be two positive ints");
  const int64_t n = images.size(0), channels = images.size(1), height = images.size(2), width = images.size(3);
  const int64_t k = kernels.size(1);
  TORCH_CHECK(height > k / 2 && width > k / 2, "images must be larger than kernel_size // 2 for reflect padding");
  const int64_t out_h = out_size[0], out_w = out_size[1];
  const int64_t padded_k = (k + kLanes - 1) / kLanes * kLanes;

  const at::Tensor image_data = images.contiguous();
  const at::Tensor kernel_data = kernels.to(at::kFloat).contiguous();
  const at::Tensor factor_data = factors.to(at::kDouble).contiguous();
  at::Tensor out = at::empty({n, channels, out_h, out_w}, images.options());
  if (n == 0 || channels == 0) return out;
  const double* factor_ptr = factor_data.data_ptr<double>();
  for (int64_t i = 0; i < n; ++i) TORCH_CHECK(std::isfinite(factor_ptr[i]) && factor_ptr[i] >= 1.0, "factors must be >= 1");

  std::vector<int64_t> column_source(width + k - 1);
  for (int64_t c = 0; c < width + k - 1; ++c) column_source[c] = reflect_index(c - k / 2, width);

  const uint8_t* image_ptr = image_data.data_ptr<uint8_t>();
  const float* kernel_ptr = kernel_data.data_ptr<float>();
  uint8_t* out_ptr = out.data_ptr<uint8_t>();
  const int64_t threads = at::get_num_threads();
  // Whole samples per task share one plan; with fewer samples than threads,
  // split by channel so a batch of one still uses every core.
  const bool per_channel = n < threads;
  const int64_t tasks = per_channel ? n * channels : n;
  const int64_t workers = std::max<int64_t>(1, std::min(threads, tasks));
  std::atomic<int64_t> next_task{0};
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    Scratch scratch;
    SamplePlan plan;
    int64_t planned = -1;
    for (int64_t task = next_task++; task < tasks; task = next_task++) {
      const int64_t sample = per_channel ? task / channels : task;
      const int64_t c_begin = per_channel ? task % channels : 0;
      const int64_t c_end = per_channel ? c_begin + 1 : channels;
      if (planned != sample) {
        make_plan(kernel_ptr + sample * k * k, k, padded_k, height, width, factor_ptr[sample], out_h, out_w, plan);
        planned = sample;
      }
      for (int64_t c = c_begin; c < c_end; ++c) {
        blur_resample_channel(image_ptr + (sample * channels + c) * height * width, height, width, k, padded_k, plan,
                              column_source, out_h, out_w, scratch,
                              out_ptr + (sample * channels + c) * out_h * out_w);
      }
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(synfiqa, CPU, m) { m.impl("blur_resample", &blur_resample_cpu); }

}  // namespace synfiqa

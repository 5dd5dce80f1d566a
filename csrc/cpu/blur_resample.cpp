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
#include <limits>
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

// Horizontal downscale weights regrouped for step 1: for each group of four
// output columns, tap j's four weights side by side ([group][taps][4], zeros past
// each column's count), so one pointer serves all four columns.
constexpr int kColumnGroup = 4;

std::vector<float> grouped_weights(const AntialiasAxis& axis, int64_t small_w) {
  const int64_t groups = small_w / kColumnGroup;
  std::vector<float> grouped(groups * axis.taps * kColumnGroup, 0.0f);
  for (int64_t g = 0; g < groups; ++g)
    for (int64_t i = 0; i < kColumnGroup; ++i)
      for (int64_t j = 0; j < axis.taps; ++j)
        grouped[(g * axis.taps + j) * kColumnGroup + i] = axis.weights[(g * kColumnGroup + i) * axis.taps + j];
  return grouped;
}

struct SamplePlan {
  int64_t small_h = 0, small_w = 0;
  AntialiasAxis down_y, down_x;
  CubicAxis up_y, up_x;
  int64_t top = 0, left = 0;       // first kernel row / column kept
  int64_t k_h = 1, k_w = 1;        // kernel rows / columns kept
  int64_t padded_k = kLanes;       // k_w rounded up to whole vectors
  int64_t rows_max = 0;            // padded rows read by one output row: widest window + k_h - 1
  std::vector<float> composite;    // G: [small_h][rows_max][padded_k]
  std::vector<float> grouped_x;    // down_x weights regrouped for step 1 (see grouped_weights)
};

// Drops border rows and columns of the kernel, lightest first, while their total
// absolute weight stays within 2^-24 of the kernel's.
void trim_kernel(const float* kernel, int64_t k, SamplePlan& plan) {
  auto row_mass = [&](int64_t a, int64_t b0, int64_t b1) {
    double mass = 0.0;
    for (int64_t b = b0; b <= b1; ++b) mass += std::abs(static_cast<double>(kernel[a * k + b]));
    return mass;
  };
  auto column_mass = [&](int64_t b, int64_t a0, int64_t a1) {
    double mass = 0.0;
    for (int64_t a = a0; a <= a1; ++a) mass += std::abs(static_cast<double>(kernel[a * k + b]));
    return mass;
  };
  double total = 0.0;
  for (int64_t i = 0; i < k * k; ++i) total += std::abs(static_cast<double>(kernel[i]));
  const double budget = total * 0x1p-24;
  double used = 0.0;
  int64_t top = 0, bottom = k - 1, left = 0, right = k - 1;
  while (top < bottom || left < right) {
    double lightest = std::numeric_limits<double>::infinity();
    int side = -1;
    if (top < bottom) {
      const double t = row_mass(top, left, right), b = row_mass(bottom, left, right);
      if (t < lightest) lightest = t, side = 0;
      if (b < lightest) lightest = b, side = 1;
    }
    if (left < right) {
      const double l = column_mass(left, top, bottom), r = column_mass(right, top, bottom);
      if (l < lightest) lightest = l, side = 2;
      if (r < lightest) lightest = r, side = 3;
    }
    if (used + lightest > budget) break;
    used += lightest;
    if (side == 0) ++top;
    else if (side == 1) --bottom;
    else if (side == 2) ++left;
    else --right;
  }
  plan.top = top;
  plan.left = left;
  plan.k_h = bottom - top + 1;
  plan.k_w = right - left + 1;
  plan.padded_k = (plan.k_w + kLanes - 1) / kLanes * kLanes;
}

SYNFIQA_ROW_STEP void make_plan(const float* kernel, int64_t k, int64_t height, int64_t width, double factor,
                                int64_t out_h, int64_t out_w, SamplePlan& plan) {
  plan.small_h = downscaled_side(height, factor);
  plan.small_w = downscaled_side(width, factor);
  plan.down_y = antialiased_bicubic_axis(height, plan.small_h);
  plan.down_x = antialiased_bicubic_axis(width, plan.small_w);
  plan.up_y = bicubic_axis(plan.small_h, out_h);
  plan.up_x = bicubic_axis(plan.small_w, out_w);
  trim_kernel(kernel, k, plan);
  plan.grouped_x = grouped_weights(plan.down_x, plan.small_w);
  const int64_t padded_k = plan.padded_k;
  plan.rows_max = plan.down_y.taps + plan.k_h - 1;
  const int64_t row_stride = plan.rows_max * padded_k;
  plan.composite.assign(plan.small_h * row_stride, 0.0f);
  for (int64_t p = 0; p < plan.small_h; ++p) {
    const float* wy = plan.down_y.weights.data() + p * plan.down_y.taps;
    float* g = plan.composite.data() + p * row_stride;
    for (int64_t a = 0; a < plan.k_h; ++a) {
      const float* kernel_row = kernel + (plan.top + a) * k + plan.left;
      for (int64_t i = 0; i < plan.down_y.count[p]; ++i) {
        float* g_row = g + (i + a) * padded_k;
        const float weight = wy[i];
        for (int64_t b = 0; b < plan.k_w; ++b) g_row[b] += weight * kernel_row[b];
      }
    }
  }
}

// Step 1 for one padded row and NV vectors of kernel columns starting at b0:
// out[q][b0 + lane] = sum_j Wx(q, j) row[first_q + j + b0 + lane].
// Four output columns at a time give 4*NV independent accumulator chains (one
// chain would wait on each FMA's latency); every column runs over the axis's
// full `taps`, whose weights past the column's own count are zero.
template <int NV>
void horizontal_chunk(const float* row, const AntialiasAxis& axis, const float* grouped, int64_t small_w,
                      int64_t padded_k, int64_t b0, float* out) {
  const int64_t taps = axis.taps;
  int64_t q = 0;
  for (; q + kColumnGroup <= small_w; q += kColumnGroup) {
    f32x8 acc[kColumnGroup][NV];
    for (int i = 0; i < kColumnGroup; ++i)
      for (int v = 0; v < NV; ++v) acc[i][v] = simd::zero();
    const float* s0 = row + axis.first[q] + b0;
    const float* s1 = row + axis.first[q + 1] + b0;
    const float* s2 = row + axis.first[q + 2] + b0;
    const float* s3 = row + axis.first[q + 3] + b0;
    const float* w = grouped + (q / kColumnGroup) * taps * kColumnGroup;
    for (int64_t j = 0; j < taps; ++j, w += kColumnGroup) {
      const f32x8 w0 = simd::splat(w[0]), w1 = simd::splat(w[1]), w2 = simd::splat(w[2]), w3 = simd::splat(w[3]);
      for (int v = 0; v < NV; ++v) {
        acc[0][v] += w0 * simd::load(s0 + j + v * kLanes);
        acc[1][v] += w1 * simd::load(s1 + j + v * kLanes);
        acc[2][v] += w2 * simd::load(s2 + j + v * kLanes);
        acc[3][v] += w3 * simd::load(s3 + j + v * kLanes);
      }
    }
    for (int i = 0; i < kColumnGroup; ++i)
      for (int v = 0; v < NV; ++v) simd::store(out + (q + i) * padded_k + b0 + v * kLanes, acc[i][v]);
  }
  for (; q < small_w; ++q) {
    f32x8 acc[NV];
    for (int v = 0; v < NV; ++v) acc[v] = simd::zero();
    const float* src = row + axis.first[q] + b0;
    const float* weights = axis.weights.data() + q * taps;
    for (int64_t j = 0; j < axis.count[q]; ++j) {
      const f32x8 weight = simd::splat(weights[j]);
      for (int v = 0; v < NV; ++v) acc[v] += weight * simd::load(src + j + v * kLanes);
    }
    for (int v = 0; v < NV; ++v) simd::store(out + q * padded_k + b0 + v * kLanes, acc[v]);
  }
}

// Step 2 for one output row and NV vectors of kernel columns starting at b0:
// s[q] += sum_t sum_lane G(t, b0 + lane) R(first + t, q, b0 + lane).
// QB output columns at a time keep QB*NV accumulators in registers. STRIDE is
// padded_k when known at compile time (one chunk), so every address is a base
// register plus a constant; 0 means "use the runtime padded_k".
template <int NV, int STRIDE>
void contract_chunk(const float* g, const float* const* r_rows, int64_t rows, int64_t small_w,
                    int64_t runtime_stride, int64_t b0, float* s, int64_t s_stride) {
  constexpr int QB = NV == 1 ? 8 : (NV == 2 ? 6 : (NV == 3 ? 4 : 3));
  const int64_t stride = STRIDE > 0 ? STRIDE : runtime_stride;
  int64_t q = 0;
  for (; q + QB <= small_w; q += QB) {
    f32x8 acc[QB][NV];
    for (int i = 0; i < QB; ++i)
      for (int v = 0; v < NV; ++v) acc[i][v] = simd::zero();
    for (int64_t t = 0; t < rows; ++t) {
      f32x8 gv[NV];
      for (int v = 0; v < NV; ++v) gv[v] = simd::load(g + t * stride + b0 + v * kLanes);
      const float* r = r_rows[t] + q * stride + b0;
      for (int i = 0; i < QB; ++i)
        for (int v = 0; v < NV; ++v) acc[i][v] += gv[v] * simd::load(r + i * stride + v * kLanes);
    }
    for (int i = 0; i < QB; ++i) {
      f32x8 total = acc[i][0];
      for (int v = 1; v < NV; ++v) total += acc[i][v];
      s[(q + i) * s_stride] += simd::sum(total);
    }
  }
  for (; q < small_w; ++q) {
    f32x8 acc[NV];
    for (int v = 0; v < NV; ++v) acc[v] = simd::zero();
    for (int64_t t = 0; t < rows; ++t) {
      const float* r = r_rows[t] + q * stride + b0;
      for (int v = 0; v < NV; ++v)
        acc[v] += simd::load(g + t * stride + b0 + v * kLanes) * simd::load(r + v * kLanes);
    }
    f32x8 total = acc[0];
    for (int v = 1; v < NV; ++v) total += acc[v];
    s[q * s_stride] += simd::sum(total);
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

SYNFIQA_ROW_STEP void horizontal_row(const float* row, const AntialiasAxis& axis, const float* grouped,
                                     int64_t small_w, int64_t padded_k, float* out) {
  for_each_chunk(padded_k, [&](int64_t b0, int64_t nv) {
    switch (nv) {
      case 1: horizontal_chunk<1>(row, axis, grouped, small_w, padded_k, b0, out); break;
      case 2: horizontal_chunk<2>(row, axis, grouped, small_w, padded_k, b0, out); break;
      case 3: horizontal_chunk<3>(row, axis, grouped, small_w, padded_k, b0, out); break;
      default: horizontal_chunk<4>(row, axis, grouped, small_w, padded_k, b0, out); break;
    }
  });
}

// s[q * s_stride] = S(p, q) for one output row p.
SYNFIQA_ROW_STEP void contract_row(const float* g, const float* const* r_rows, int64_t rows, int64_t small_w,
                                   int64_t padded_k, float* s, int64_t s_stride) {
  switch (padded_k) {  // one chunk: the stride is a compile-time constant
    case 8: return contract_chunk<1, 8>(g, r_rows, rows, small_w, padded_k, 0, s, s_stride);
    case 16: return contract_chunk<2, 16>(g, r_rows, rows, small_w, padded_k, 0, s, s_stride);
    case 24: return contract_chunk<3, 24>(g, r_rows, rows, small_w, padded_k, 0, s, s_stride);
    case 32: return contract_chunk<4, 32>(g, r_rows, rows, small_w, padded_k, 0, s, s_stride);
    default: break;
  }
  for_each_chunk(padded_k, [&](int64_t b0, int64_t nv) {
    switch (nv) {
      case 1: contract_chunk<1, 0>(g, r_rows, rows, small_w, padded_k, b0, s, s_stride); break;
      case 2: contract_chunk<2, 0>(g, r_rows, rows, small_w, padded_k, b0, s, s_stride); break;
      case 3: contract_chunk<3, 0>(g, r_rows, rows, small_w, padded_k, b0, s, s_stride); break;
      default: contract_chunk<4, 0>(g, r_rows, rows, small_w, padded_k, b0, s, s_stride); break;
    }
  });
}

struct Scratch {
  std::vector<float> row;    // one reflect-padded input row (+ padded_k zeros)
  std::vector<float> ring;   // R for the last rows_max padded rows: [rows_max][small_w][padded_k]
  std::vector<const float*> ring_rows;
  std::vector<float> small;   // S, transposed: [small_w][small_h]
  std::vector<float> half_t;  // S resized horizontally, transposed: [out_w][small_h]
  std::vector<float> half;    // the same, [small_h][out_w]
};

// The final bicubic resize (horizontal, then vertical as torch does), rounded
// half to even and clamped like the reference's round().clamp(0, 255).
SYNFIQA_ROW_STEP void resize_to_uint8(const SamplePlan& plan, int64_t out_h, int64_t out_w, Scratch& scratch,
                                      uint8_t* out) {
  const int64_t h = plan.small_h;
  // Horizontal taps on the transposed S (small[q][p]): whole columns at a time, no gathers.
  scratch.half_t.resize(out_w * h);
  for (int64_t x = 0; x < out_w; ++x) {
    const int64_t* index = plan.up_x.index.data() + 4 * x;
    const float* weight = plan.up_x.weights.data() + 4 * x;
    const float* c0 = scratch.small.data() + index[0] * h;
    const float* c1 = scratch.small.data() + index[1] * h;
    const float* c2 = scratch.small.data() + index[2] * h;
    const float* c3 = scratch.small.data() + index[3] * h;
    float* dst = scratch.half_t.data() + x * h;
    for (int64_t p = 0; p < h; ++p) dst[p] = c0[p] * weight[0] + c1[p] * weight[1] + c2[p] * weight[2] + c3[p] * weight[3];
  }
  scratch.half.resize(h * out_w);
  for (int64_t x = 0; x < out_w; ++x)
    for (int64_t p = 0; p < h; ++p) scratch.half[p * out_w + x] = scratch.half_t[x * h + p];
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

void blur_resample_channel(const uint8_t* image, int64_t height, int64_t width, int64_t k, const SamplePlan& plan,
                           const std::vector<int64_t>& column_source, int64_t out_h, int64_t out_w, Scratch& scratch,
                           uint8_t* out) {
  const int64_t pad = k / 2;
  const int64_t padded_w = width + k - 1;
  const int64_t h = plan.small_h, w = plan.small_w, padded_k = plan.padded_k;
  const int64_t capacity = plan.rows_max;
  const int64_t ring_row = w * padded_k;
  // Step 1 reads up to taps + padded_k lanes past a window's start, beyond the row's end
  // at the right border: keep them finite (zeros; their weights are zero).
  scratch.row.assign(padded_w + plan.down_x.taps + padded_k + kLanes, 0.0f);
  scratch.ring.resize(capacity * ring_row);
  scratch.ring_rows.resize(capacity);
  scratch.small.assign(h * w, 0.0f);
  const int64_t row_stride = plan.rows_max * padded_k;

  int64_t next_row = 0;  // padded rows [0, next_row) have had step 1 (or are never read)
  for (int64_t p = 0; p < h; ++p) {
    const int64_t first = plan.down_y.first[p] + plan.top;  // first padded row the kept kernel rows read
    const int64_t rows = plan.down_y.count[p] + plan.k_h - 1;
    next_row = std::max(next_row, first);
    // Windows only move down, so a ring of rows_max rows holds every row still needed.
    for (; next_row < first + rows; ++next_row) {
      const uint8_t* src = image + reflect_index(next_row - pad, height) * width;
      float* dst = scratch.row.data();
      for (int64_t c = 0; c < pad; ++c) dst[c] = static_cast<float>(src[column_source[c]]);
      for (int64_t c = 0; c < width; ++c) dst[pad + c] = static_cast<float>(src[c]);  // vectorises
      for (int64_t c = pad + width; c < padded_w; ++c) dst[c] = static_cast<float>(src[column_source[c]]);
      horizontal_row(scratch.row.data() + plan.left, plan.down_x, plan.grouped_x.data(), w, padded_k,
                     scratch.ring.data() + (next_row % capacity) * ring_row);
    }
    for (int64_t t = 0; t < rows; ++t) scratch.ring_rows[t] = scratch.ring.data() + ((first + t) % capacity) * ring_row;
    contract_row(plan.composite.data() + p * row_stride, scratch.ring_rows.data(), rows, w, padded_k,
                 scratch.small.data() + p, h);  // stored transposed: small[q][p]
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
        make_plan(kernel_ptr + sample * k * k, k, height, width, factor_ptr[sample], out_h, out_w, plan);
        planned = sample;
      }
      for (int64_t c = c_begin; c < c_end; ++c) {
        blur_resample_channel(image_ptr + (sample * channels + c) * height * width, height, width, k, plan,
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

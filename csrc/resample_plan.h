// Resampling weights of blur_resample, shared by the CPU kernel and the CUDA
// host code. Torch-free on purpose: the CUDA side includes it without pulling
// in the torch headers.
//
// The op reproduces torch's own resizes, so the pure-torch reference
// (synfiqa/ops/reference.py) can stay three plain calls:
//   * downscale: F.interpolate(mode="bicubic", antialias=True,
//     align_corners=False) -- the PIL-style antialiased Keys cubic (a = -0.5)
//     stretched by the scale, window clipped to the image, weights
//     renormalised;
//   * upscale: F.interpolate(mode="bicubic", antialias=False,
//     align_corners=False) -- 4 taps of the Keys cubic (a = -0.75), source
//     indices clamped to the image.
// The arithmetic below follows torch's float32 evaluation order so that the
// weights agree to the last bit or two.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace synfiqa {

// round(side / factor) the way Python's round() does it (half to even), at
// least 1: the size of the downscaled image in the reference.
inline int64_t downscaled_side(int64_t side, double factor) {
  const double rounded = std::nearbyint(static_cast<double>(side) / factor);
  return std::max<int64_t>(1, static_cast<int64_t>(rounded));
}

// Reflect padding without repeating the edge (torch's "reflect"), for an
// index at most one image length outside.
inline int64_t reflect_index(int64_t index, int64_t size) {
  if (size == 1) return 0;
  if (index < 0) return -index;
  if (index >= size) return 2 * (size - 1) - index;
  return index;
}

// One axis of the antialiased downscale: output index o reads `count[o]`
// inputs starting at `first[o]` with weights `weights[o * taps + j]`.
struct AntialiasAxis {
  int64_t taps = 0;  // row stride of `weights`: the widest window
  std::vector<int64_t> first;
  std::vector<int64_t> count;
  std::vector<float> weights;
};

inline float keys_cubic(float x, float a) {
  x = std::abs(x);
  if (x < 1.0f) return ((a + 2.0f) * x - (a + 3.0f)) * x * x + 1.0f;
  if (x < 2.0f) return ((a * x - 5.0f * a) * x + 8.0f * a) * x - 4.0f * a;
  return 0.0f;
}

inline AntialiasAxis antialiased_bicubic_axis(int64_t in_size, int64_t out_size) {
  AntialiasAxis axis;
  const float scale = static_cast<float>(in_size) / static_cast<float>(out_size);
  const float support = scale >= 1.0f ? 2.0f * scale : 2.0f;
  const float inverse_scale = scale >= 1.0f ? static_cast<float>(1.0 / scale) : 1.0f;
  axis.taps = static_cast<int64_t>(std::ceil(support)) * 2 + 1;
  axis.first.resize(out_size);
  axis.count.resize(out_size);
  axis.weights.assign(out_size * axis.taps, 0.0f);
  for (int64_t o = 0; o < out_size; ++o) {
    const float centre = static_cast<float>(scale * (o + 0.5));
    const int64_t first = std::max<int64_t>(static_cast<int64_t>(centre - support + 0.5), 0);
    int64_t count = std::min<int64_t>(static_cast<int64_t>(centre + support + 0.5), in_size) - first;
    count = std::clamp<int64_t>(count, 0, axis.taps);
    float* w = axis.weights.data() + o * axis.taps;
    float total = 0.0f;
    for (int64_t j = 0; j < count; ++j) {
      const float offset = static_cast<float>(j + first) - centre;
      w[j] = keys_cubic(static_cast<float>((offset + 0.5) * inverse_scale), -0.5f);
      total += w[j];
    }
    if (total != 0.0f) {
      for (int64_t j = 0; j < count; ++j) w[j] /= total;
    }
    axis.first[o] = first;
    axis.count[o] = count;
  }
  return axis;
}

// One axis of the plain bicubic resize: output index o reads inputs
// `index[4 o + j]` (already clamped) with weights `weights[4 o + j]`.
struct CubicAxis {
  std::vector<int64_t> index;
  std::vector<float> weights;
};

inline CubicAxis bicubic_axis(int64_t in_size, int64_t out_size) {
  CubicAxis axis;
  axis.index.resize(4 * out_size);
  axis.weights.resize(4 * out_size);
  const float scale = static_cast<float>(in_size) / static_cast<float>(out_size);
  constexpr float a = -0.75f;
  for (int64_t o = 0; o < out_size; ++o) {
    const float real = static_cast<float>(scale * (o + 0.5) - 0.5);
    const int64_t base = std::min<int64_t>(static_cast<int64_t>(std::floor(real)), in_size - 1);
    const float t = std::min(std::max(real - static_cast<float>(base), 0.0f), 1.0f);
    const float w[4] = {keys_cubic(t + 1.0f, a), keys_cubic(t, a), keys_cubic(1.0f - t, a),
                        keys_cubic(2.0f - t, a)};
    for (int j = 0; j < 4; ++j) {
      axis.index[4 * o + j] = std::clamp<int64_t>(base - 1 + j, 0, in_size - 1);
      axis.weights[4 * o + j] = w[j];
    }
  }
  return axis;
}

}  // namespace synfiqa

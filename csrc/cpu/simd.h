// Eight-float vectors for the CPU kernels. GCC and Clang lower these vector
// extensions to whatever the target offers (AVX2 + FMA under -march=native,
// two SSE registers otherwise); other compilers get a plain array whose loops
// they may vectorise themselves.
#pragma once

#include <cstring>

namespace synfiqa::simd {

#if defined(__GNUC__)
typedef float f32x8 __attribute__((vector_size(32)));
typedef float f32x8_unaligned __attribute__((vector_size(32), aligned(4)));

inline f32x8 load(const float* p) { return *reinterpret_cast<const f32x8_unaligned*>(p); }
inline void store(float* p, f32x8 v) { *reinterpret_cast<f32x8_unaligned*>(p) = v; }
inline f32x8 splat(float s) { return f32x8{s, s, s, s, s, s, s, s}; }
inline f32x8 zero() { return f32x8{}; }
inline float sum(f32x8 v) {
  return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]));
}
#else
struct f32x8 {
  float lane[8];
  f32x8& operator+=(const f32x8& o) {
    for (int i = 0; i < 8; ++i) lane[i] += o.lane[i];
    return *this;
  }
  friend f32x8 operator*(const f32x8& a, const f32x8& b) {
    f32x8 r;
    for (int i = 0; i < 8; ++i) r.lane[i] = a.lane[i] * b.lane[i];
    return r;
  }
};
inline f32x8 load(const float* p) {
  f32x8 v;
  std::memcpy(v.lane, p, sizeof(v.lane));
  return v;
}
inline void store(float* p, f32x8 v) { std::memcpy(p, v.lane, sizeof(v.lane)); }
inline f32x8 splat(float s) {
  f32x8 v;
  for (float& x : v.lane) x = s;
  return v;
}
inline f32x8 zero() { return splat(0.0f); }
inline float sum(f32x8 v) {
  return ((v.lane[0] + v.lane[4]) + (v.lane[1] + v.lane[5])) + ((v.lane[2] + v.lane[6]) + (v.lane[3] + v.lane[7]));
}
#endif

}  // namespace synfiqa::simd

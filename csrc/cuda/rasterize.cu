// rasterize on the GPU, bit for bit the CPU kernel's and the twin's result (see
// synfiqa/ops/reference.py: rasterize_reference for the definition). Every float32
// operation is an explicitly rounded intrinsic (__fmul_rn, __fadd_rn, ...), which
// nvcc never fuses into an FMA, in the CPU kernel's order.
//
// Pass 1: one warp per (mesh, face); its lanes walk the face's pixel bounding box
// and atomicMin a 64-bit key (float bits of pz << 32 | face) per pixel. pz >= 0, so
// the float bits order like the floats (-0.0 is keyed as +0.0), and the minimum is
// the nearest face, ties to the lowest index, whatever the scheduling.
// Pass 2: one thread per pixel unpacks the winning face and recomputes its
// barycentrics and pz with the same operations.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "launchers.h"

namespace synfiqa::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarp = 32;
constexpr float kAreaEpsilon = 1e-8f;

__device__ inline float ndc(int64_t i, int64_t s1, int64_t s2) {
  float range = 2.0f;
  if (s1 > s2) range = __fdiv_rn(__fmul_rn(static_cast<float>(s1), 2.0f), static_cast<float>(s2));
  const float offset = __fdiv_rn(range, 2.0f);
  return __fadd_rn(-offset, __fdiv_rn(__fadd_rn(__fmul_rn(range, static_cast<float>(i)), offset),
                                      static_cast<float>(s1)));
}

__device__ inline void pixel_span(float lo, float hi, int64_t size, int64_t other, int64_t& first, int64_t& last) {
  const double range = size > other ? 2.0 * size / other : 2.0;
  const double offset = range / 2.0;
  double i_lo = floor((static_cast<double>(lo) + offset) * size / range - 0.5) - 1.0;
  double i_hi = ceil((static_cast<double>(hi) + offset) * size / range - 0.5) + 1.0;
  i_lo = fmax(i_lo, 0.0);
  i_hi = fmin(i_hi, static_cast<double>(size - 1));
  if (!(i_lo <= i_hi)) {
    first = 1;
    last = 0;
    return;
  }
  first = size - 1 - static_cast<int64_t>(i_hi);
  last = size - 1 - static_cast<int64_t>(i_lo);
}

struct Face {
  float ax[3], ay[3], dx[3], dy[3], s[3];
  bool accept_zero[3];
  float area_eps, z[3];
  int64_t r0, r1, c0, c1;
};

__device__ bool setup_face(const float* mesh, const int64_t* idx, int64_t height, int64_t width, Face& f) {
  const float* v0 = mesh + idx[0] * 3;
  const float* v1 = mesh + idx[1] * 3;
  const float* v2 = mesh + idx[2] * 3;
  const float area = __fsub_rn(__fmul_rn(__fsub_rn(v2[0], v0[0]), __fsub_rn(v1[1], v0[1])),
                               __fmul_rn(__fsub_rn(v2[1], v0[1]), __fsub_rn(v1[0], v0[0])));
  if (area <= kAreaEpsilon && area >= -kAreaEpsilon) return false;
  if (fmaxf(v0[2], fmaxf(v1[2], v2[2])) < 0.0f) return false;
  const float* ends[3][2] = {{v1, v2}, {v2, v0}, {v0, v1}};
  const bool positive = area > 0.0f;
  for (int k = 0; k < 3; ++k) {
    const float* a = ends[k][0];
    const float* b = ends[k][1];
    float sign = 1.0f;
    if (a[1] > b[1] || (a[1] == b[1] && a[0] > b[0])) {
      const float* t = a;
      a = b;
      b = t;
      sign = -1.0f;
    }
    f.ax[k] = a[0];
    f.ay[k] = a[1];
    f.dx[k] = __fsub_rn(b[0], a[0]);
    f.dy[k] = __fsub_rn(b[1], a[1]);
    f.s[k] = sign;
    f.accept_zero[k] = (sign > 0.0f) == positive;
  }
  f.area_eps = __fadd_rn(area, kAreaEpsilon);
  f.z[0] = v0[2];
  f.z[1] = v1[2];
  f.z[2] = v2[2];
  const float xmin = fminf(v0[0], fminf(v1[0], v2[0])), xmax = fmaxf(v0[0], fmaxf(v1[0], v2[0]));
  const float ymin = fminf(v0[1], fminf(v1[1], v2[1])), ymax = fmaxf(v0[1], fmaxf(v1[1], v2[1]));
  pixel_span(xmin, xmax, width, height, f.c0, f.c1);
  pixel_span(ymin, ymax, height, width, f.r0, f.r1);
  return f.r0 <= f.r1 && f.c0 <= f.c1;
}

// Inside test, barycentrics and pz of a face at a pixel centre; true when the face
// covers the pixel with 0 <= pz < inf.
__device__ inline bool evaluate(const Face& f, float px, float py, float b[3], float& pz) {
  float e[3];
  bool inside = true;
  for (int k = 0; k < 3; ++k) {
    e[k] = __fsub_rn(__fmul_rn(__fsub_rn(px, f.ax[k]), f.dy[k]), __fmul_rn(__fsub_rn(py, f.ay[k]), f.dx[k]));
    inside &= f.accept_zero[k] ? e[k] >= 0.0f : e[k] < 0.0f;
  }
  if (!inside) return false;
  for (int k = 0; k < 3; ++k) b[k] = __fdiv_rn(__fmul_rn(e[k], f.s[k]), f.area_eps);
  pz = __fadd_rn(__fadd_rn(__fmul_rn(b[0], f.z[0]), __fmul_rn(b[1], f.z[1])), __fmul_rn(b[2], f.z[2]));
  return pz >= 0.0f && pz < INFINITY;
}

__global__ void rasterize_keys(RasterizeArgs a) {
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (warp >= a.n * a.f) return;
  const int64_t m = warp / a.f, face_index = warp % a.f;
  Face face;
  if (!setup_face(a.verts + m * a.v * 3, a.faces + face_index * 3, a.height, a.width, face)) return;
  const int64_t cols = face.c1 - face.c0 + 1;
  const int64_t count = (face.r1 - face.r0 + 1) * cols;
  unsigned long long* keys = a.keys + m * a.height * a.width;
  for (int64_t j = lane; j < count; j += kWarp) {
    const int64_t r = face.r0 + j / cols, c = face.c0 + j % cols;
    float b[3], pz;
    if (!evaluate(face, ndc(a.width - 1 - c, a.width, a.height), ndc(a.height - 1 - r, a.height, a.width), b, pz))
      continue;
    const unsigned int bits = pz == 0.0f ? 0u : __float_as_uint(pz);
    const unsigned long long key = (static_cast<unsigned long long>(bits) << 32) |
                                   static_cast<unsigned long long>(face_index);
    atomicMin(keys + r * a.width + c, key);
  }
}

__global__ void rasterize_resolve(RasterizeArgs a) {
  const int64_t pixel = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t plane = a.height * a.width;
  if (pixel >= a.n * plane) return;
  const unsigned long long key = a.keys[pixel];
  if (key == kRasterizeNoKey) return;
  const int64_t m = pixel / plane, r = (pixel % plane) / a.width, c = pixel % a.width;
  const int64_t face_index = static_cast<int64_t>(key & 0xFFFFFFFFull);
  Face face;
  setup_face(a.verts + m * a.v * 3, a.faces + face_index * 3, a.height, a.width, face);
  float b[3], pz;
  evaluate(face, ndc(a.width - 1 - c, a.width, a.height), ndc(a.height - 1 - r, a.height, a.width), b, pz);
  a.pix_to_face[pixel] = m * a.f + face_index;
  a.zbuf[pixel] = pz;
  a.bary[pixel * 3 + 0] = b[0];
  a.bary[pixel * 3 + 1] = b[1];
  a.bary[pixel * 3 + 2] = b[2];
}

}  // namespace

cudaError_t rasterize(const RasterizeArgs& args, cudaStream_t stream) {
  if (args.n == 0 || args.f == 0) return cudaSuccess;
  const int64_t warps = args.n * args.f;
  const unsigned int blocks = static_cast<unsigned int>((warps * kWarp + kThreads - 1) / kThreads);
  rasterize_keys<<<blocks, kThreads, 0, stream>>>(args);
  cudaError_t status = cudaGetLastError();
  if (status != cudaSuccess) return status;
  const int64_t pixels = args.n * args.height * args.width;
  rasterize_resolve<<<static_cast<unsigned int>((pixels + kThreads - 1) / kThreads), kThreads, 0, stream>>>(args);
  return cudaGetLastError();
}

}  // namespace synfiqa::cuda

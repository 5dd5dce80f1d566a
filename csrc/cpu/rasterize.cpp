// rasterize on the CPU: pytorch3d's rasterize_meshes as DECA calls it
// (faces_per_pixel 1, blur_radius 0, perspective_correct False, no culling),
// with a deterministic tie rule. The definition, every convention and every
// float32 operation is spelled out in synfiqa/ops/reference.py
// (rasterize_reference), the pure-torch twin this kernel equals bit for bit.
//
// Summary of the arithmetic (all float32, each product rounded on its own):
//   pixel centres   xs[c] = ndc(W-1-c, W, H), ys[r] = ndc(H-1-r, H, W),
//                   ndc(i, S1, S2) = -o + (R*i + o) / S1, R = S1 > S2 ? (S1*2)/S2 : 2, o = R/2
//   edge k of face  (a, b) = its endpoints ordered by (y, x), s_k = +1 if that kept
//                   pytorch3d's order (v1v2, v2v0, v0v1), else -1;
//                   E_k = (px - a.x) * (b.y - a.y) - (py - a.y) * (b.x - a.x)
//   area            (v2.x - v0.x) * (v1.y - v0.y) - (v2.y - v0.y) * (v1.x - v0.x); |area| <= 1e-8: skipped
//   inside          for each k with q_k = s_k * sign(area): q_k > 0 ? E_k >= 0 : E_k < 0
//   barycentrics    b_k = (E_k * s_k) / (area + 1e-8)
//   depth           pz = (b0 * z0 + b1 * z1) + b2 * z2; kept iff 0 <= pz < inf
//   winner          smallest pz, then lowest face index.
//
// Faces are binned by the 32x32 pixel tiles their (conservative) pixel
// bounding boxes touch, in face order; each (mesh, tile) task then owns its
// tile's depth buffer, so no atomics and the result does not depend on the
// thread count.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace synfiqa {
namespace {

constexpr int64_t kTile = 32;
constexpr float kAreaEpsilon = 1e-8f;

// A float32 product rounded on its own: with -march=native GCC would otherwise
// fuse a * b - c * d into an FMA, and the twin (separate torch ops) could not
// follow. The empty asm pins the rounded value in a register at no cost.
inline float rounded(float value) {
#if defined(__x86_64__) || defined(__i386__)
  asm("" : "+x"(value));
#elif defined(__aarch64__)
  asm("" : "+w"(value));
#else
  volatile float pinned = value;
  value = pinned;
#endif
  return value;
}

inline float mul(float a, float b) { return rounded(a * b); }

// pytorch3d's PixToNonSquareNdc: the NDC coordinate of pixel index i along a side of
// S1 pixels when the other side has S2 (the shorter side spans [-1, 1]).
inline float ndc(int64_t i, int64_t s1, int64_t s2) {
  float range = 2.0f;
  if (s1 > s2) range = rounded(static_cast<float>(s1) * 2.0f) / static_cast<float>(s2);
  const float offset = rounded(range / 2.0f);  // exact; pinned so that no FMA is formed with it
  return -offset + (mul(range, static_cast<float>(i)) + offset) / static_cast<float>(s1);
}

// First and last pixel index (of a side of `size` pixels, NDC coordinate decreasing
// with the image index) whose centre can lie in [lo, hi]; a margin of one pixel makes
// it conservative, the exact test is per pixel. Empty when first > last.
inline void pixel_span(float lo, float hi, int64_t size, int64_t other, int64_t& first, int64_t& last) {
  const double range = size > other ? 2.0 * size / other : 2.0;
  const double offset = range / 2.0;
  // ndc index i (increasing with the coordinate) of a coordinate v: (v + offset) * size / range - 0.5
  double i_lo = std::floor((static_cast<double>(lo) + offset) * size / range - 0.5) - 1.0;
  double i_hi = std::ceil((static_cast<double>(hi) + offset) * size / range - 0.5) + 1.0;
  i_lo = std::max(i_lo, 0.0);
  i_hi = std::min(i_hi, static_cast<double>(size - 1));
  if (!(i_lo <= i_hi)) {
    first = 1;
    last = 0;
    return;
  }
  // image index = size - 1 - ndc index
  first = size - 1 - static_cast<int64_t>(i_hi);
  last = size - 1 - static_cast<int64_t>(i_lo);
}

struct Face {
  float ax[3], ay[3], dx[3], dy[3], s[3];
  bool accept_zero[3];  // q_k > 0: a pixel centre exactly on edge k counts as inside
  float area_eps, z[3];
  int64_t r0, r1, c0, c1;  // pixel bounding box (inclusive), empty when r0 > r1
};

// Face setup; false when the face covers nothing (zero area, all z < 0, off screen).
bool setup_face(const float* v0, const float* v1, const float* v2, int64_t height, int64_t width, Face& f) {
  const float area = mul(v2[0] - v0[0], v1[1] - v0[1]) - mul(v2[1] - v0[1], v1[0] - v0[0]);
  if (area <= kAreaEpsilon && area >= -kAreaEpsilon) return false;
  if (std::max(v0[2], std::max(v1[2], v2[2])) < 0.0f) return false;  // every pz < 0
  const float* ends[3][2] = {{v1, v2}, {v2, v0}, {v0, v1}};
  const bool positive = area > 0.0f;
  for (int k = 0; k < 3; ++k) {
    const float* a = ends[k][0];
    const float* b = ends[k][1];
    float sign = 1.0f;
    if (a[1] > b[1] || (a[1] == b[1] && a[0] > b[0])) {
      std::swap(a, b);
      sign = -1.0f;
    }
    f.ax[k] = a[0];
    f.ay[k] = a[1];
    f.dx[k] = b[0] - a[0];
    f.dy[k] = b[1] - a[1];
    f.s[k] = sign;
    f.accept_zero[k] = (sign > 0.0f) == positive;
  }
  f.area_eps = area + kAreaEpsilon;
  f.z[0] = v0[2];
  f.z[1] = v1[2];
  f.z[2] = v2[2];
  const float xmin = std::min(v0[0], std::min(v1[0], v2[0])), xmax = std::max(v0[0], std::max(v1[0], v2[0]));
  const float ymin = std::min(v0[1], std::min(v1[1], v2[1])), ymax = std::max(v0[1], std::max(v1[1], v2[1]));
  pixel_span(xmin, xmax, width, height, f.c0, f.c1);
  pixel_span(ymin, ymax, height, width, f.r0, f.r1);
  return f.r0 <= f.r1 && f.c0 <= f.c1;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> rasterize_cpu(const at::Tensor& verts, const at::Tensor& faces,
                                                             int64_t height, int64_t width) {
  TORCH_CHECK(verts.dim() == 3 && verts.size(2) == 3 && verts.scalar_type() == at::kFloat,
              "verts must be float32 [N, V, 3]");
  TORCH_CHECK(faces.dim() == 2 && faces.size(1) == 3 && faces.scalar_type() == at::kLong, "faces must be int64 [F, 3]");
  TORCH_CHECK(height > 0 && width > 0, "height and width must be positive");
  TORCH_CHECK(faces.size(0) < (int64_t{1} << 31), "at most 2^31 - 1 faces");
  const int64_t n = verts.size(0), v = verts.size(1), f_count = faces.size(0);
  const auto float_options = verts.options();
  at::Tensor pix_to_face = at::full({n, height, width}, -1, float_options.dtype(at::kLong));
  at::Tensor bary = at::full({n, height, width, 3}, -1.0f, float_options);
  at::Tensor zbuf = at::full({n, height, width}, -1.0f, float_options);
  if (n == 0 || f_count == 0) return {pix_to_face, bary, zbuf};
  const at::Tensor vd = verts.contiguous();
  const at::Tensor fd = faces.contiguous();
  const float* vp = vd.data_ptr<float>();
  const int64_t* fp = fd.data_ptr<int64_t>();
  for (int64_t i = 0; i < f_count * 3; ++i) {
    TORCH_CHECK(fp[i] >= 0 && fp[i] < v, "faces index a vertex out of range [0, ", v, ")");
  }

  std::vector<float> xs(width), ys(height);
  for (int64_t c = 0; c < width; ++c) xs[c] = ndc(width - 1 - c, width, height);
  for (int64_t r = 0; r < height; ++r) ys[r] = ndc(height - 1 - r, height, width);

  const int64_t tiles_y = (height + kTile - 1) / kTile, tiles_x = (width + kTile - 1) / kTile;
  const int64_t tiles = tiles_y * tiles_x;
  // Per mesh: the set-up faces, and per tile the indices (ascending) of the faces touching it.
  std::vector<std::vector<Face>> face_data(n);
  std::vector<std::vector<int32_t>> face_ids(n), bin_faces(n);
  std::vector<std::vector<int64_t>> bin_start(n);
  at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) {
      const float* mesh = vp + m * v * 3;
      std::vector<Face>& data = face_data[m];
      std::vector<int32_t>& ids = face_ids[m];
      std::vector<int64_t>& start = bin_start[m];
      start.assign(tiles + 1, 0);
      for (int64_t f = 0; f < f_count; ++f) {
        Face face;
        const int64_t* idx = fp + f * 3;
        if (!setup_face(mesh + idx[0] * 3, mesh + idx[1] * 3, mesh + idx[2] * 3, height, width, face)) continue;
        data.push_back(face);
        ids.push_back(static_cast<int32_t>(f));
        for (int64_t ty = face.r0 / kTile; ty <= face.r1 / kTile; ++ty)
          for (int64_t tx = face.c0 / kTile; tx <= face.c1 / kTile; ++tx) ++start[ty * tiles_x + tx + 1];
      }
      for (int64_t t = 0; t < tiles; ++t) start[t + 1] += start[t];
      std::vector<int64_t> fill(start.begin(), start.end() - 1);
      bin_faces[m].resize(start[tiles]);
      for (int64_t j = 0; j < static_cast<int64_t>(data.size()); ++j) {
        const Face& face = data[j];
        for (int64_t ty = face.r0 / kTile; ty <= face.r1 / kTile; ++ty)
          for (int64_t tx = face.c0 / kTile; tx <= face.c1 / kTile; ++tx)
            bin_faces[m][fill[ty * tiles_x + tx]++] = static_cast<int32_t>(j);
      }
    }
  });

  int64_t* out_face = pix_to_face.data_ptr<int64_t>();
  float* out_bary = bary.data_ptr<float>();
  float* out_z = zbuf.data_ptr<float>();
  constexpr float kInf = std::numeric_limits<float>::infinity();
  at::parallel_for(0, n * tiles, 1, [&](int64_t begin, int64_t end) {
    float best_z[kTile * kTile], best_b[kTile * kTile][3];
    int32_t best_f[kTile * kTile];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t m = task / tiles, tile = task % tiles;
      const int64_t tr0 = (tile / tiles_x) * kTile, tc0 = (tile % tiles_x) * kTile;
      const int64_t tr1 = std::min(tr0 + kTile, height) - 1, tc1 = std::min(tc0 + kTile, width) - 1;
      const int64_t first = bin_start[m][tile], last = bin_start[m][tile + 1];
      if (first == last) continue;
      std::fill(best_z, best_z + kTile * kTile, kInf);
      std::fill(best_f, best_f + kTile * kTile, -1);
      for (int64_t j = first; j < last; ++j) {
        const int32_t local = bin_faces[m][j];
        const Face& face = face_data[m][local];
        const int64_t r_lo = std::max(face.r0, tr0), r_hi = std::min(face.r1, tr1);
        const int64_t c_lo = std::max(face.c0, tc0), c_hi = std::min(face.c1, tc1);
        for (int64_t r = r_lo; r <= r_hi; ++r) {
          const float py = ys[r];
          float row_term[3];
          for (int k = 0; k < 3; ++k) row_term[k] = mul(py - face.ay[k], face.dx[k]);
          for (int64_t c = c_lo; c <= c_hi; ++c) {
            const float px = xs[c];
            float e[3];
            bool inside = true;
            for (int k = 0; k < 3; ++k) {
              e[k] = mul(px - face.ax[k], face.dy[k]) - row_term[k];
              inside &= face.accept_zero[k] ? e[k] >= 0.0f : e[k] < 0.0f;
            }
            if (!inside) continue;
            float b[3];
            for (int k = 0; k < 3; ++k) b[k] = mul(e[k], face.s[k]) / face.area_eps;
            const float pz = (mul(b[0], face.z[0]) + mul(b[1], face.z[1])) + mul(b[2], face.z[2]);
            const int64_t p = (r - tr0) * kTile + (c - tc0);
            if (pz >= 0.0f && pz < best_z[p]) {  // faces come in ascending order: ties keep the lowest
              best_z[p] = pz;
              best_f[p] = local;
              best_b[p][0] = b[0];
              best_b[p][1] = b[1];
              best_b[p][2] = b[2];
            }
          }
        }
      }
      for (int64_t r = tr0; r <= tr1; ++r) {
        for (int64_t c = tc0; c <= tc1; ++c) {
          const int64_t p = (r - tr0) * kTile + (c - tc0);
          if (best_f[p] < 0) continue;
          const int64_t out = (m * height + r) * width + c;
          out_face[out] = m * f_count + face_ids[m][best_f[p]];
          out_z[out] = best_z[p];
          out_bary[out * 3 + 0] = best_b[p][0];
          out_bary[out * 3 + 1] = best_b[p][1];
          out_bary[out * 3 + 2] = best_b[p][2];
        }
      }
    }
  });
  return {pix_to_face, bary, zbuf};
}

}  // namespace

TORCH_LIBRARY_IMPL(synfiqa, CPU, m) { m.impl("rasterize", &rasterize_cpu); }

}  // namespace synfiqa

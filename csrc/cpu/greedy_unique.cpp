// greedy_unique on the CPU: the Stage-1 identity-uniqueness rule. Rows are
// taken in order; row j is kept unless some kept earlier row i has
// cosine(i, j) > threshold. The kept set equals the plain greedy loop's.
//
// Rows are decided a block at a time (extra memory O(N*D), never N x N):
//   1. the block against every kept row of earlier blocks: any one pair over
//      the threshold drops a row, so pairs are settled as they are found and
//      a dropped row stops being compared;
//   2. the block against itself (pairs c < r), settled in row order, since only
//      a kept earlier row can drop a row.
//
// The comparisons run on 8-bit integer copies of the unit vectors. Each row
// has two: an unsigned one (components in [-63, 63], stored +64, so in
// [1, 127]) for the row being decided, and a signed one for the row it is
// compared with. AVX2 vpmaddubsw multiplies 32 such byte pairs per
// instruction, twice the rate of 16-bit vpmaddwd; two of its 16-bit results
// are added before they are widened to 32 bits, which is where most of the
// speed comes from. That 16-bit sum holds 4 products, at most
// 127 * (sum of the 4 signed components), so each signed row is scaled so that
// no such group of 4 exceeds 258 in absolute sum (127 * 258 = 32766): nothing
// saturates or wraps, and the 32-bit dot product is exact. The +64 offset
// contributes 64 * (sum of the signed row), subtracted afterwards.
//
// With e_i the exact norm of the quantisation error of row i's copy, the true
// cosine differs from the integer estimate by at most e_i + e_j + 3 e_i e_j
// (~0.02 for random 512-d rows). A pair whose estimate plus that bound is
// <= threshold is settled by the screen. Any other pair is settled by the
// bound when it is decisive, else by the same test on 16-bit copies (bound
// ~1e-3), else by the float64 cosine of the original rows.
//
// That float64 cosine is the *ordered cosine* of synfiqa/ops/reference.py, the pure-torch
// twin's: norms and dot products with every product rounded on its own (no fused
// multiply-add) and summed left to right in index order. With -march=native GCC fuses
// `sum += a * b` into an FMA where the CPU has one (in some loops only in their scalar
// remainder), which made a cosine at the threshold depend on the machine and disagree with
// the twin (measured: ~1 pair in 20 within a few ulp of it, at D = 3); rounded_product()
// forbids it, so the twin agrees bit for bit.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <vector>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace synfiqa {
namespace {

constexpr int64_t kPanel = 16;    // kept rows per packed panel: two vectors of 8 int32 results
constexpr int64_t kTileRows = 4;  // rows per register tile (4 x 16 int32 accumulators)
constexpr int64_t kBlock = 960;   // rows decided per step; a multiple of kPanel and kTileRows
constexpr int64_t kStep = 8;      // components per kernel step: two 4-byte quads, summed in 16 bits
constexpr int64_t kStepBytes = kStep * kPanel;  // one step of a panel
constexpr int32_t kOffset = 64;   // added to the unsigned copy's components, in [-63, 63]
constexpr double kUnsignedMax = 63.0;
constexpr double kSignedMax = 127.0;
// 127 * 258 = 32766: a 16-bit lane (4 products) can neither saturate nor wrap.
constexpr int32_t kGroupLimit = 258;
// |32-bit lane| <= 127 * (sum |signed components|) must stay below INT32_MAX.
constexpr int64_t kTotalLimit = INT32_MAX / 127;
constexpr float kScreenSlack = 1e-5f;   // covers float rounding in the screening test
// Covers float64 rounding in the bound itself; the slack of a pair is this plus 4 D 2^-53,
// more than the ordered cosine's own rounding (< D 2^-53 from the exact value), so a pair
// the bounds settle is one that the ordered cosine puts on the same side, for any D.
constexpr double kBoundSlack = 1e-12;

// a * b rounded to float64 on its own. Read back through a volatile, the product cannot be
// fused with the addition it feeds (C++ lets a compiler contract `s + a * b` into one FMA,
// rounded once, and GCC does so by default): the ordered cosine must round every product.
// Only the norms (once per row) and the rare pairs the bounds cannot settle pay for it.
inline double rounded_product(double a, double b) {
  volatile double product = a * b;
  return product;
}

struct Candidate {
  int32_t row;     // row within the block
  int32_t column;  // earlier row within the block
  int32_t dot;     // integer dot product of the 8-bit copies
};

// Signed 8-bit rows packed in panels of kPanel rows: step t of a panel holds,
// for each of its two quads h, components 8t + 4h .. 8t + 4h + 3 of rows
// 0..15, 4 bytes each, so one 32-byte load feeds vpmaddubsw for 8 rows.
struct PanelStore {
  int64_t steps = 0;
  int64_t count = 0;
  std::vector<int8_t> data;
  std::vector<float> inverse_scale, error;  // padded to whole panels with zeros
  std::vector<int32_t> offset_sum;          // kOffset * sum of the row's components
  std::vector<int64_t> source_row;

  void clear() {
    count = 0;
    data.clear();
    inverse_scale.clear();
    error.clear();
    offset_sum.clear();
    source_row.clear();
  }
  void reserve(int64_t rows) {
    const int64_t slots = (rows + kPanel - 1) / kPanel * kPanel;
    data.reserve(slots / kPanel * steps * kStepBytes);
    inverse_scale.reserve(slots);
    error.reserve(slots);
    offset_sum.reserve(slots);
    source_row.reserve(rows);
  }
  int64_t panels() const { return (count + kPanel - 1) / kPanel; }
  const int8_t* panel(int64_t p) const { return data.data() + p * steps * kStepBytes; }
  void append(const int8_t* row, float inv, float err, int32_t sum, int64_t source) {
    const int64_t slot = count % kPanel;
    if (slot == 0) {
      data.resize(data.size() + steps * kStepBytes, 0);
      inverse_scale.resize(inverse_scale.size() + kPanel, 0.0f);
      error.resize(error.size() + kPanel, 0.0f);
      offset_sum.resize(offset_sum.size() + kPanel, 0);
    }
    int8_t* panel_data = data.data() + (count / kPanel) * steps * kStepBytes;
    for (int64_t t = 0; t < steps; ++t) {
      std::memcpy(panel_data + t * kStepBytes + slot * 4, row + t * kStep, 4);
      std::memcpy(panel_data + t * kStepBytes + 4 * kPanel + slot * 4, row + t * kStep + 4, 4);
    }
    inverse_scale[count] = inv;
    error[count] = err;
    offset_sum[count] = sum;
    source_row.push_back(source);
    ++count;
  }
};

#if defined(__AVX2__)
alignas(32) constexpr int16_t kOnes[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};

// dots[r][c] = integer dot product of row r's unsigned copy with panel row c's
// signed copy, less the offset's share, for 4 rows x 16 panel rows.
//
// Written in assembly because GCC, left to schedule intrinsics, interleaves
// the rows, runs out of the 16 vector registers and spills accumulators.
// Here the 8 accumulators and the step's 4 panel vectors stay in registers
// (re-reading the panel for each row, or a fifth row's accumulators, made the
// 256-bit loads the bottleneck instead of the multiplies); the constant ones
// come from memory. Two quads are summed in 16 bits (safe by kGroupLimit)
// before the one widening vpmaddwd, which would otherwise cost as much as the
// products. Out of line, so that the loops around it cannot crowd it.
__attribute__((noinline)) void tile_dots(const uint8_t* const rows[kTileRows], const int8_t* panel, int64_t steps,
                                         const int32_t* offset_sum, int32_t dots[kTileRows][kPanel]) {
  static_assert(kTileRows == 4, "the assembly holds 4 rows");
  __m256i c00 = _mm256_setzero_si256(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
  __m256i c30 = c00, c31 = c00;
  const uint8_t *a0 = rows[0], *a1 = rows[1], *a2 = rows[2], *a3 = rows[3];
  for (int64_t t = 0; t < steps; ++t) {
    const auto& step = *reinterpret_cast<const int8_t(*)[kStepBytes]>(panel + t * kStepBytes);
    __m256i b0, b1, b2, b3, q0, q1, p0, p1;
    asm("vmovdqu %[step], %[b0]\n\t"
        "vmovdqu 32%[step], %[b1]\n\t"
        "vmovdqu 64%[step], %[b2]\n\t"
        "vmovdqu 96%[step], %[b3]"
        : [b0] "=x"(b0), [b1] "=x"(b1), [b2] "=x"(b2), [b3] "=x"(b3)
        : [step] "m"(step));
#define SYNFIQA_ROW(A, C0, C1)                                                                     \
    asm("vpbroadcastd %[first], %[q0]\n\t"                                                        \
        "vpbroadcastd %[second], %[q1]\n\t"                                                       \
        "vpmaddubsw %[b0], %[q0], %[p0]\n\t"                                                      \
        "vpmaddubsw %[b2], %[q1], %[p1]\n\t"                                                      \
        "vpmaddubsw %[b1], %[q0], %[q0]\n\t"                                                      \
        "vpmaddubsw %[b3], %[q1], %[q1]\n\t"                                                      \
        "vpaddw %[p1], %[p0], %[p0]\n\t"                                                          \
        "vpaddw %[q1], %[q0], %[q0]\n\t"                                                          \
        "vpmaddwd %[ones], %[p0], %[p0]\n\t"                                                      \
        "vpmaddwd %[ones], %[q0], %[q0]\n\t"                                                      \
        "vpaddd %[p0], %[acc0], %[acc0]\n\t"                                                      \
        "vpaddd %[q0], %[acc1], %[acc1]"                                                          \
        : [acc0] "+x"(C0), [acc1] "+x"(C1), [q0] "=&x"(q0), [q1] "=&x"(q1), [p0] "=&x"(p0), [p1] "=&x"(p1) \
        : [b0] "x"(b0), [b1] "x"(b1), [b2] "x"(b2), [b3] "x"(b3), [ones] "m"(kOnes),                 \
          [first] "m"(*reinterpret_cast<const int32_t*>(A + t * kStep)),                            \
          [second] "m"(*reinterpret_cast<const int32_t*>(A + t * kStep + 4)));
    SYNFIQA_ROW(a0, c00, c01)
    SYNFIQA_ROW(a1, c10, c11)
    SYNFIQA_ROW(a2, c20, c21)
    SYNFIQA_ROW(a3, c30, c31)
#undef SYNFIQA_ROW
  }
  const __m256i o0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(offset_sum));
  const __m256i o1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(offset_sum + 8));
  __m256i* out = reinterpret_cast<__m256i*>(&dots[0][0]);
  _mm256_storeu_si256(out + 0, _mm256_sub_epi32(c00, o0));
  _mm256_storeu_si256(out + 1, _mm256_sub_epi32(c01, o1));
  _mm256_storeu_si256(out + 2, _mm256_sub_epi32(c10, o0));
  _mm256_storeu_si256(out + 3, _mm256_sub_epi32(c11, o1));
  _mm256_storeu_si256(out + 4, _mm256_sub_epi32(c20, o0));
  _mm256_storeu_si256(out + 5, _mm256_sub_epi32(c21, o1));
  _mm256_storeu_si256(out + 6, _mm256_sub_epi32(c30, o0));
  _mm256_storeu_si256(out + 7, _mm256_sub_epi32(c31, o1));
}

inline int32_t fine_dot(const int16_t* a, const int16_t* b, int64_t n) {
  __m256i acc0 = _mm256_setzero_si256(), acc1 = acc0;
  int64_t k = 0;
  for (; k + 32 <= n; k += 32) {
    acc0 = _mm256_add_epi32(acc0, _mm256_madd_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + k)),
                                                    _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + k))));
    acc1 = _mm256_add_epi32(acc1, _mm256_madd_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + k + 16)),
                                                    _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + k + 16))));
  }
  alignas(32) int32_t lanes[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), _mm256_add_epi32(acc0, acc1));
  int32_t total = 0;
  for (int v = 0; v < 8; ++v) total += lanes[v];
  for (; k < n; ++k) total += static_cast<int32_t>(a[k]) * b[k];
  return total;
}
#else
inline void tile_dots(const uint8_t* const rows[kTileRows], const int8_t* panel, int64_t steps,
                      const int32_t* offset_sum, int32_t dots[kTileRows][kPanel]) {
  for (int r = 0; r < kTileRows; ++r)
    for (int c = 0; c < kPanel; ++c) dots[r][c] = -offset_sum[c];
  for (int64_t t = 0; t < steps; ++t) {
    const int8_t* b = panel + t * kStepBytes;
    for (int r = 0; r < kTileRows; ++r) {
      const uint8_t* a = rows[r] + t * kStep;
      for (int h = 0; h < 2; ++h)
        for (int c = 0; c < kPanel; ++c)
          for (int k = 0; k < 4; ++k)
            dots[r][c] += static_cast<int32_t>(a[4 * h + k]) * b[h * 4 * kPanel + 4 * c + k];
    }
  }
}

inline int32_t fine_dot(const int16_t* a, const int16_t* b, int64_t n) {
  int32_t total = 0;
  for (int64_t k = 0; k < n; ++k) total += static_cast<int32_t>(a[k]) * b[k];
  return total;
}
#endif

// The integer dot products of up to 4 rows against one panel, then the
// screening test on each; `emit(r, c, dot)` receives the pairs that pass.
// Rows beyond `rows_valid` repeat a valid row and are ignored.
template <typename Emit>
void screen_tile(const uint8_t* const rows[kTileRows], int rows_valid, const float* row_inverse,
                 const float* row_error, const int8_t* panel, int64_t steps, const float* column_inverse,
                 const float* column_error, const int32_t* column_offset, int columns_valid, float threshold,
                 Emit&& emit) {
  alignas(32) int32_t dots[kTileRows][kPanel];
  tile_dots(rows, panel, steps, column_offset, dots);
#if defined(__AVX2__)
  // Almost no tile has a pair that passes: test the whole tile with one branch.
  const __m256 column_inverse0 = _mm256_loadu_ps(column_inverse), column_inverse1 = _mm256_loadu_ps(column_inverse + 8);
  const __m256 column_error0 = _mm256_loadu_ps(column_error), column_error1 = _mm256_loadu_ps(column_error + 8);
  __m256 pass[kTileRows][2];
  __m256 any = _mm256_setzero_ps();
  for (int r = 0; r < kTileRows; ++r) {  // rows past rows_valid repeat a valid row: harmless here
    const __m256 inverse_r = _mm256_set1_ps(row_inverse[r]);
    const __m256 limit = _mm256_set1_ps(threshold - row_error[r] - kScreenSlack);
    const __m256 spread = _mm256_set1_ps(1.0f + 3.0f * row_error[r]);
    // estimate + e_r + e_c (1 + 3 e_r) > threshold  <=>  estimate + e_c * spread > limit
    const __m256 estimate0 =
        _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(&dots[r][0]))),
                      _mm256_mul_ps(column_inverse0, inverse_r));
    const __m256 estimate1 =
        _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(&dots[r][8]))),
                      _mm256_mul_ps(column_inverse1, inverse_r));
    pass[r][0] = _mm256_cmp_ps(_mm256_fmadd_ps(column_error0, spread, estimate0), limit, _CMP_GT_OQ);
    pass[r][1] = _mm256_cmp_ps(_mm256_fmadd_ps(column_error1, spread, estimate1), limit, _CMP_GT_OQ);
    any = _mm256_or_ps(any, _mm256_or_ps(pass[r][0], pass[r][1]));
  }
  if (_mm256_movemask_ps(any) == 0) return;
  const int valid_mask = columns_valid >= kPanel ? 0xffff : (1 << columns_valid) - 1;
  for (int r = 0; r < rows_valid; ++r) {
    int mask = (_mm256_movemask_ps(pass[r][0]) | (_mm256_movemask_ps(pass[r][1]) << 8)) & valid_mask;
    while (mask) {
      const int c = __builtin_ctz(mask);
      emit(r, c, dots[r][c]);
      mask &= mask - 1;
    }
  }
#else
  for (int r = 0; r < rows_valid; ++r) {
    const float limit = threshold - row_error[r] - kScreenSlack;
    const float spread = 1.0f + 3.0f * row_error[r];
    for (int c = 0; c < columns_valid; ++c) {
      const float estimate = static_cast<float>(dots[r][c]) * (column_inverse[c] * row_inverse[r]);
      if (estimate + column_error[c] * spread > limit) emit(r, c, dots[r][c]);
    }
  }
#endif
}

// Every row quantised once, up front (one parallel pass; N * D * 4 bytes in all).
struct QuantisedRows {
  int64_t width8 = 0;   // D rounded up to whole kernel steps (padding: unsigned 64, signed 0)
  int64_t width16 = 0;  // D rounded up to even
  std::vector<uint8_t> unsigned8;  // [n][width8], components + kOffset
  std::vector<int8_t> signed8;     // [n][width8]
  std::vector<int16_t> fine;       // [n][width16]
  std::vector<float> unsigned_inverse, unsigned_error, signed_inverse, signed_error;
  std::vector<double> unsigned_inverse_exact, unsigned_error_exact, signed_inverse_exact, signed_error_exact;
  std::vector<double> fine_inverse, fine_error;
  std::vector<int32_t> offset_sum;

  const uint8_t* unsigned_row(int64_t i) const { return unsigned8.data() + i * width8; }
  const int8_t* signed_row(int64_t i) const { return signed8.data() + i * width8; }
  const int16_t* fine_row(int64_t i) const { return fine.data() + i * width16; }
};

template <typename scalar_t>
class GreedyUnique {
 public:
  GreedyUnique(const scalar_t* x, int64_t n, int64_t d, double threshold)
      : x_(x), n_(n), d_(d), threshold_(threshold),
        bound_slack_(kBoundSlack + 4.0 * static_cast<double>(d) * std::ldexp(1.0, -53)) {
    q_.width8 = (d + kStep - 1) / kStep * kStep;
    q_.width16 = (d + 1) / 2 * 2;
    // |16-bit dot| <= width16 * Q^2 (every partial sum too) must fit in int32.
    const double largest = std::floor(std::sqrt(static_cast<double>(INT32_MAX) / static_cast<double>(q_.width16)));
    fine_max_ = std::min(32767.0, largest);
    norms_.resize(n);
    at::parallel_for(0, n, 1024, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        double square = 0.0;
        for (int64_t k = 0; k < d; ++k) {
          const double value = static_cast<double>(x[i * d + k]);
          square += rounded_product(value, value);
        }
        norms_[i] = std::sqrt(square);
      }
    });
    for (int64_t i = 0; i < n; ++i) TORCH_CHECK(std::isfinite(norms_[i]), "embeddings must be finite (row ", i, ")");
    kept_store_.steps = q_.width8 / kStep;
    block_store_.steps = q_.width8 / kStep;
  }

  void run(bool* kept) {
    q_.unsigned8.resize(n_ * q_.width8);
    q_.signed8.resize(n_ * q_.width8);
    q_.fine.resize(n_ * q_.width16);
    for (auto* v : {&q_.unsigned_inverse, &q_.unsigned_error, &q_.signed_inverse, &q_.signed_error}) v->resize(n_);
    for (auto* v : {&q_.unsigned_inverse_exact, &q_.unsigned_error_exact, &q_.signed_inverse_exact,
                    &q_.signed_error_exact, &q_.fine_inverse, &q_.fine_error})
      v->resize(n_);
    q_.offset_sum.resize(n_);
    // Reserved up front: growing would copy the kept panels and briefly hold them twice.
    kept_store_.reserve(n_);
    at::parallel_for(0, n_, 64, [&](int64_t begin, int64_t end) {
      std::vector<double> unit(q_.width8, 0.0);
      for (int64_t i = begin; i < end; ++i) quantise(i, unit);
    });
    for (int64_t start = 0; start < n_; start += kBlock) {
      const int64_t rows = std::min(kBlock, n_ - start);
      std::vector<char> dropped(rows, 0);
      resolve_against_kept(start, rows, dropped);
      resolve_within_block(start, rows, dropped);
      for (int64_t r = 0; r < rows; ++r) {
        kept[start + r] = !dropped[r];
        if (!dropped[r]) append(kept_store_, start + r);
      }
    }
  }

 private:
  // Rounds unit * scale into [-limit, limit]; returns the norm of the error against the
  // rows the estimates use (q / scale), rounded up a hair: the bound must never be smaller
  // than the true one. Four partial sums let the loop run at vector speed.
  template <typename out_t>
  static double round_row(const double* unit, int64_t d, double scale, double limit, out_t* out, int32_t add) {
    const double inverse = 1.0 / scale;
    double square[4] = {0.0, 0.0, 0.0, 0.0};
    int64_t k = 0;
    for (; k + 4 <= d; k += 4) {
      for (int l = 0; l < 4; ++l) {
        const double q = std::min(std::max(std::nearbyint(unit[k + l] * scale), -limit), limit);
        out[k + l] = static_cast<out_t>(static_cast<int32_t>(q) + add);
        const double residual = unit[k + l] - q * inverse;
        square[l] += residual * residual;
      }
    }
    for (; k < d; ++k) {
      const double q = std::min(std::max(std::nearbyint(unit[k] * scale), -limit), limit);
      out[k] = static_cast<out_t>(static_cast<int32_t>(q) + add);
      const double residual = unit[k] - q * inverse;
      square[0] += residual * residual;
    }
    return std::sqrt((square[0] + square[1]) + (square[2] + square[3])) * (1.0 + 1e-12) + 1e-300;
  }

  // Row i as the reference sees it, x / max(|x|, 1e-12) in float64, in its three integer
  // copies. `unit` holds width8 values, zero past D.
  void quantise(int64_t i, std::vector<double>& unit) {
    const scalar_t* row = x_ + i * d_;
    const double norm = std::max(norms_[i], 1e-12);
    for (int64_t k = 0; k < d_; ++k) unit[k] = static_cast<double>(row[k]) / norm;
    double largest = 0.0;
    for (int64_t k = 0; k < d_; ++k) largest = std::max(largest, std::abs(unit[k]));
    uint8_t* u = q_.unsigned8.data() + i * q_.width8;
    int8_t* s = q_.signed8.data() + i * q_.width8;
    int16_t* f = q_.fine.data() + i * q_.width16;
    std::fill(u, u + q_.width8, static_cast<uint8_t>(kOffset));
    std::fill(s, s + q_.width8, int8_t{0});
    std::fill(f, f + q_.width16, int16_t{0});
    if (largest == 0.0) {  // the zero vector: its cosine with anything is exactly 0
      q_.unsigned_inverse[i] = q_.unsigned_error[i] = q_.signed_inverse[i] = q_.signed_error[i] = 0.0f;
      q_.unsigned_inverse_exact[i] = q_.unsigned_error_exact[i] = 0.0;
      q_.signed_inverse_exact[i] = q_.signed_error_exact[i] = 0.0;
      q_.fine_inverse[i] = q_.fine_error[i] = 0.0;
      q_.offset_sum[i] = 0;
      return;
    }
    auto store = [&](double scale, double error, float& inverse_f, float& error_f, double& inverse_exact,
                     double& error_exact) {
      inverse_exact = 1.0 / scale;
      error_exact = error;
      inverse_f = static_cast<float>(inverse_exact);
      error_f = static_cast<float>(error) * (1.0f + 1e-6f);
    };

    double scale = kUnsignedMax / largest;
    store(scale, round_row(unit.data(), d_, scale, kUnsignedMax, u, kOffset), q_.unsigned_inverse[i], q_.unsigned_error[i],
          q_.unsigned_inverse_exact[i], q_.unsigned_error_exact[i]);

    // The signed copy: as fine as kSignedMax allows, but no group of 4 components that
    // share a 16-bit lane in the kernel may sum (in absolute value) past kGroupLimit.
    // Rounding adds at most 0.5 per component, hence the 2 below; the integer check
    // afterwards is what guarantees it.
    double group_largest = 0.0;
    for (int64_t base = 0; base < q_.width8; base += kStep) {
      for (int64_t lane = 0; lane < 2; ++lane) {
        double sum = 0.0;
        for (int64_t k : {base + 2 * lane, base + 2 * lane + 1, base + 2 * lane + 4, base + 2 * lane + 5})
          sum += std::abs(unit[k]);
        group_largest = std::max(group_largest, sum);
      }
    }
    scale = std::min(kSignedMax / largest, (kGroupLimit - 2) / group_largest);
    for (;;) {
      const double error = round_row(unit.data(), d_, scale, kSignedMax, s, 0);
      int32_t worst_group = 0;
      int64_t total = 0, sum = 0;
      for (int64_t base = 0; base < q_.width8; base += kStep) {
        for (int64_t lane = 0; lane < 2; ++lane) {
          const int64_t k = base + 2 * lane;
          const int32_t group = std::abs(s[k]) + std::abs(s[k + 1]) + std::abs(s[k + 4]) + std::abs(s[k + 5]);
          worst_group = std::max(worst_group, group);
          total += group;
          sum += s[k] + s[k + 1] + s[k + 4] + s[k + 5];
        }
      }
      if (worst_group <= kGroupLimit && total <= kTotalLimit) {
        store(scale, error, q_.signed_inverse[i], q_.signed_error[i], q_.signed_inverse_exact[i],
              q_.signed_error_exact[i]);
        q_.offset_sum[i] = static_cast<int32_t>(kOffset * sum);
        break;
      }
      scale *= 0.98;  // only for extreme D (the total) or float rounding at a group's edge
    }

    scale = fine_max_ / largest;
    q_.fine_error[i] = round_row(unit.data(), d_, scale, fine_max_, f, 0);
    q_.fine_inverse[i] = 1.0 / scale;
  }

  void append(PanelStore& store, int64_t i) const {
    store.append(q_.signed_row(i), q_.signed_inverse[i], q_.signed_error[i], q_.offset_sum[i], i);
  }

  // The ordered cosine (see the top of this file and synfiqa/ops/reference.py).
  double exact_cosine(int64_t i, int64_t j) const {
    const scalar_t* a = x_ + i * d_;
    const scalar_t* b = x_ + j * d_;
    const double norm_i = std::max(norms_[i], 1e-12), norm_j = std::max(norms_[j], 1e-12);
    double total = 0.0;
    for (int64_t k = 0; k < d_; ++k)
      total += rounded_product(static_cast<double>(a[k]) / norm_i, static_cast<double>(b[k]) / norm_j);
    return total;
  }

  // Does a screened pair (row i's unsigned copy against row j's signed copy) really have
  // cosine > threshold? The 8-bit bound settles it unless the estimate lies within the
  // bound of the threshold; then the 16-bit copies, ~20x tighter; then float64.
  bool exceeds(int32_t dot, int64_t i, int64_t j) const {
    const double error_i = q_.unsigned_error_exact[i], error_j = q_.signed_error_exact[j];
    const double estimate = static_cast<double>(dot) * q_.unsigned_inverse_exact[i] * q_.signed_inverse_exact[j];
    const double bound = error_i + error_j + 3.0 * error_i * error_j + bound_slack_;
    if (estimate - bound > threshold_) return true;
    if (estimate + bound <= threshold_) return false;
    const double fine_i = q_.fine_error[i], fine_j = q_.fine_error[j];
    const double fine_estimate = static_cast<double>(fine_dot(q_.fine_row(i), q_.fine_row(j), q_.width16)) *
                                 q_.fine_inverse[i] * q_.fine_inverse[j];
    const double fine_bound = fine_i + fine_j + 3.0 * fine_i * fine_j + bound_slack_;
    if (fine_estimate - fine_bound > threshold_) return true;
    if (fine_estimate + fine_bound <= threshold_) return false;
    return exact_cosine(i, j) > threshold_;
  }

  // Block rows `rows[0..count)` (block-relative, block starting at `start`) against panels
  // [first, last) of `store`; `emit(row, column, dot)` gets the pairs the screen cannot rule
  // out. Each tile of rows meets all the panels in turn, so it is gathered once and stays
  // in L1.
  template <typename Emit>
  void screen_panels(const PanelStore& store, int64_t first, int64_t last, int64_t start, const int32_t* rows,
                     int64_t count, Emit&& emit) const {
    const float threshold = static_cast<float>(threshold_);
    for (int64_t r0 = 0; r0 < count; r0 += kTileRows) {
      const int valid = static_cast<int>(std::min(kTileRows, count - r0));
      const uint8_t* tile_rows[kTileRows];
      float inverse[kTileRows], error[kTileRows];
      for (int r = 0; r < kTileRows; ++r) {
        const int64_t row = start + rows[r0 + std::min(r, valid - 1)];
        tile_rows[r] = q_.unsigned_row(row);
        inverse[r] = q_.unsigned_inverse[row];
        error[r] = q_.unsigned_error[row];
      }
      for (int64_t p = first; p < last; ++p) {
        const int columns = static_cast<int>(std::min(kPanel, store.count - p * kPanel));
        screen_tile(tile_rows, valid, inverse, error, store.panel(p), store.steps,
                    store.inverse_scale.data() + p * kPanel, store.error.data() + p * kPanel,
                    store.offset_sum.data() + p * kPanel, columns, threshold,
                    [&](int r, int c, int32_t dot) { emit(rows[r0 + r], p * kPanel + c, dot); });
      }
    }
  }

  // Block rows against every kept row of earlier blocks. Any one kept row above the
  // threshold drops a row, so pairs are settled as the screen finds them, in any order,
  // nothing is stored, and a dropped row leaves the screen at the next panel grab.
  void resolve_against_kept(int64_t start, int64_t block_rows, std::vector<char>& dropped) const {
    const int64_t panels = kept_store_.panels();
    if (panels == 0) return;
    // Threads take the kept panels a few at a time from a shared counter (a thread that
    // shares its core with another process then simply takes fewer).
    const int64_t workers = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), panels));
    std::atomic<int64_t> next_panel{0};
    constexpr int64_t kPanelsPerGrab = 4;
    std::unique_ptr<std::atomic<uint8_t>[]> hit(new std::atomic<uint8_t>[block_rows]);
    for (int64_t r = 0; r < block_rows; ++r) hit[r].store(0, std::memory_order_relaxed);
    at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
      std::vector<int32_t> active;
      auto settle = [&](int64_t row, int64_t column, int32_t dot) {
        if (!hit[row].load(std::memory_order_relaxed) && exceeds(dot, start + row, kept_store_.source_row[column])) {
          hit[row].store(1, std::memory_order_relaxed);
        }
      };
      for (int64_t first = next_panel.fetch_add(kPanelsPerGrab); first < panels;
           first = next_panel.fetch_add(kPanelsPerGrab)) {
        active.clear();
        for (int32_t r = 0; r < block_rows; ++r)
          if (!hit[r].load(std::memory_order_relaxed)) active.push_back(r);
        const int64_t last = std::min(panels, first + kPanelsPerGrab);
        screen_panels(kept_store_, first, last, start, active.data(), static_cast<int64_t>(active.size()), settle);
      }
    });
    for (int64_t r = 0; r < block_rows; ++r) dropped[r] = hit[r].load(std::memory_order_relaxed);
  }

  // Block rows against earlier rows of the same block: here order matters (only a kept
  // earlier row can drop a row), so the pairs are collected and settled in row order.
  void resolve_within_block(int64_t start, int64_t block_rows, std::vector<char>& dropped) {
    block_store_.clear();
    for (int64_t r = 0; r < block_rows; ++r) append(block_store_, start + r);
    std::vector<int32_t> rows;  // the rows not dropped by earlier blocks
    for (int32_t r = 0; r < block_rows; ++r)
      if (!dropped[r]) rows.push_back(r);
    // The screen runs on all threads (panels taken one at a time: early panels have the
    // most partners); only the settling below needs row order.
    const int64_t panels = block_store_.panels();
    const int64_t workers = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), panels));
    std::atomic<int64_t> next_panel{0};
    std::mutex merge;
    std::vector<Candidate> candidates;
    at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
      std::vector<Candidate> found;
      for (int64_t p = next_panel.fetch_add(1); p < panels; p = next_panel.fetch_add(1)) {
        // Rows up to the panel's first row have no earlier partner in it.
        const auto later = std::upper_bound(rows.begin(), rows.end(), static_cast<int32_t>(p * kPanel));
        screen_panels(block_store_, p, p + 1, start, rows.data() + (later - rows.begin()), rows.end() - later,
                      [&](int64_t row, int64_t column, int32_t dot) {
                        if (column < row) found.push_back({static_cast<int32_t>(row), static_cast<int32_t>(column), dot});
                      });
      }
      const std::lock_guard<std::mutex> lock(merge);
      candidates.insert(candidates.end(), found.begin(), found.end());
    });
    std::sort(candidates.begin(), candidates.end(), [](const Candidate& a, const Candidate& b) {
      return a.row != b.row ? a.row < b.row : a.column < b.column;
    });
    for (const Candidate& cand : candidates) {
      if (dropped[cand.row] || dropped[cand.column]) continue;
      if (exceeds(cand.dot, start + cand.row, start + cand.column)) dropped[cand.row] = 1;
    }
  }

  const scalar_t* x_;
  int64_t n_, d_;
  double threshold_;
  double bound_slack_;
  double fine_max_ = 0.0;
  std::vector<double> norms_;
  QuantisedRows q_;
  PanelStore kept_store_;
  PanelStore block_store_;
};

at::Tensor greedy_unique_cpu(const at::Tensor& embeddings, double threshold) {
  TORCH_CHECK(embeddings.dim() == 2, "embeddings must be [N, D]");
  TORCH_CHECK(embeddings.scalar_type() == at::kFloat || embeddings.scalar_type() == at::kDouble,
              "embeddings must be float32 or float64");
  TORCH_CHECK(std::isfinite(threshold), "threshold must be finite");
  const at::Tensor x = embeddings.contiguous();
  at::Tensor kept = at::empty({x.size(0)}, x.options().dtype(at::kBool));
  if (x.size(0) == 0) return kept;
  TORCH_CHECK(x.size(1) > 0, "embeddings must have at least one column");
  if (x.scalar_type() == at::kFloat) {
    GreedyUnique<float>(x.data_ptr<float>(), x.size(0), x.size(1), threshold).run(kept.data_ptr<bool>());
  } else {
    GreedyUnique<double>(x.data_ptr<double>(), x.size(0), x.size(1), threshold).run(kept.data_ptr<bool>());
  }
  return kept;
}

}  // namespace

TORCH_LIBRARY_IMPL(synfiqa, CPU, m) { m.impl("greedy_unique", &greedy_unique_cpu); }

}  // namespace synfiqa

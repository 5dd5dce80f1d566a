// greedy_unique on the CPU: the Stage-1 identity-uniqueness rule. Rows are
// taken in order; row j is kept unless some kept earlier row i has
// cosine(i, j) > threshold. The kept set equals the plain greedy loop's.
//
// Rows are decided a block at a time (extra memory O(N*D): two 16-bit copies
// of the rows, never an N x N matrix):
//   1. the block against every kept row of earlier blocks: any one pair over
//      the threshold drops a row, so pairs are settled as they are found and
//      a dropped row stops being compared;
//   2. the block against itself (pairs c < r), settled in row order, since only
//      a kept earlier row can drop a row.
// Comparisons run on 16-bit integer copies of the unit vectors (each row scaled
// so its largest component is Q; Q chosen so a D-long int32 dot product cannot
// overflow). With e_i the exact quantisation-error norm of row i, the true
// cosine differs from the integer estimate by at most e_i + e_j + 3 e_i e_j.
// A pair whose estimate plus that bound is <= threshold is settled at once;
// any other pair is settled from the bound when the bound is decisive, else
// from the float64 cosine of the original rows. Integer multiply-adds (AVX2
// vpmaddwd: 16 per instruction) outrun float32 FMAs, and the bound is tight
// (~1e-3 for D = 512), so almost no pair needs the float64 check.
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
constexpr int64_t kTileRows = 5;  // block rows per register tile (5 x 16 int32 accumulators)
constexpr int64_t kBlock = 960;   // rows decided per step; a multiple of kPanel and kTileRows
constexpr float kScreenSlack = 1e-5f;   // covers float rounding in the screening test
constexpr double kBoundSlack = 1e-12;   // covers float64 rounding in the bound itself

struct Candidate {
  int32_t row;     // row within the block
  int32_t column;  // earlier row within the block
  int32_t dot;     // integer dot product of the quantised rows
};

// Quantised rows with their scales, packed in panels of kPanel rows:
// panel[p][pair][c][2] holds components 2*pair and 2*pair+1 of row c, the
// layout one vpmaddwd consumes for 8 rows at once.
struct PanelStore {
  int64_t pairs = 0;
  int64_t count = 0;
  std::vector<int16_t> data;
  std::vector<float> inverse_scale, error;  // padded to whole panels with zeros
  std::vector<double> inverse_scale_exact, error_exact;
  std::vector<int64_t> source_row;

  void clear() {
    count = 0;
    data.clear();
    inverse_scale.clear();
    error.clear();
    inverse_scale_exact.clear();
    error_exact.clear();
    source_row.clear();
  }
  int64_t panels() const { return (count + kPanel - 1) / kPanel; }
  const int16_t* panel(int64_t p) const { return data.data() + p * pairs * 2 * kPanel; }
  void append(const int16_t* row, float inv, float err, double inv_exact, double err_exact, int64_t source) {
    const int64_t slot = count % kPanel;
    if (slot == 0) {
      data.resize(data.size() + pairs * 2 * kPanel, 0);
      inverse_scale.resize(inverse_scale.size() + kPanel, 0.0f);
      error.resize(error.size() + kPanel, 0.0f);
    }
    int16_t* panel_data = data.data() + (count / kPanel) * pairs * 2 * kPanel;
    for (int64_t p = 0; p < pairs; ++p) {
      panel_data[p * 2 * kPanel + slot * 2] = row[2 * p];
      panel_data[p * 2 * kPanel + slot * 2 + 1] = row[2 * p + 1];
    }
    inverse_scale[count] = inv;
    error[count] = err;
    inverse_scale_exact.push_back(inv_exact);
    error_exact.push_back(err_exact);
    source_row.push_back(source);
    ++count;
  }
};

#if defined(__AVX2__)
// dots[r][c] = integer dot product of row r with panel row c, for 5 rows x 16
// panel rows: ten accumulators, two panel vectors, the broadcast row pair and
// one product fit the 16 vector registers, so nothing spills and each panel
// vector is loaded once per pair of components.
inline void tile_dots(const int16_t* const rows[kTileRows], const int16_t* panel, int64_t pairs,
                      int32_t dots[kTileRows][kPanel]) {
  __m256i c00 = _mm256_setzero_si256(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
  __m256i c30 = c00, c31 = c00, c40 = c00, c41 = c00;
  const int16_t *a0 = rows[0], *a1 = rows[1], *a2 = rows[2], *a3 = rows[3], *a4 = rows[4];
  for (int64_t p = 0; p < pairs; ++p) {
    const int16_t* b = panel + p * 2 * kPanel;
    const __m256i b0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b));
    const __m256i b1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 16));
    int32_t both;
#define SYNFIQA_ROW(a_ptr, acc0, acc1)                         \
    std::memcpy(&both, a_ptr + 2 * p, sizeof(both));           \
    {                                                          \
      const __m256i a = _mm256_set1_epi32(both);               \
      acc0 = _mm256_add_epi32(acc0, _mm256_madd_epi16(a, b0)); \
      acc1 = _mm256_add_epi32(acc1, _mm256_madd_epi16(a, b1)); \
    }
    SYNFIQA_ROW(a0, c00, c01)
    SYNFIQA_ROW(a1, c10, c11)
    SYNFIQA_ROW(a2, c20, c21)
    SYNFIQA_ROW(a3, c30, c31)
    SYNFIQA_ROW(a4, c40, c41)
#undef SYNFIQA_ROW
  }
  __m256i* out = reinterpret_cast<__m256i*>(&dots[0][0]);
  _mm256_storeu_si256(out + 0, c00);
  _mm256_storeu_si256(out + 1, c01);
  _mm256_storeu_si256(out + 2, c10);
  _mm256_storeu_si256(out + 3, c11);
  _mm256_storeu_si256(out + 4, c20);
  _mm256_storeu_si256(out + 5, c21);
  _mm256_storeu_si256(out + 6, c30);
  _mm256_storeu_si256(out + 7, c31);
  _mm256_storeu_si256(out + 8, c40);
  _mm256_storeu_si256(out + 9, c41);
}
#else
inline void tile_dots(const int16_t* const rows[kTileRows], const int16_t* panel, int64_t pairs,
                      int32_t dots[kTileRows][kPanel]) {
  for (int r = 0; r < kTileRows; ++r)
    for (int c = 0; c < kPanel; ++c) dots[r][c] = 0;
  for (int64_t p = 0; p < pairs; ++p) {
    const int16_t* b = panel + p * 2 * kPanel;
    for (int r = 0; r < kTileRows; ++r) {
      const int32_t a0 = rows[r][2 * p], a1 = rows[r][2 * p + 1];
      for (int c = 0; c < kPanel; ++c) dots[r][c] += a0 * b[2 * c] + a1 * b[2 * c + 1];
    }
  }
}
#endif

// The integer dot products of up to 4 rows against one panel, then the
// screening test on each; `emit(r, c, dot)` receives the pairs that pass.
// Rows beyond `rows_valid` repeat a valid row and are ignored.
template <typename Emit>
void screen_tile(const int16_t* const rows[kTileRows], int rows_valid, const float* row_inverse,
                 const float* row_error, const int16_t* panel, int64_t pairs, const float* column_inverse,
                 const float* column_error, int columns_valid, float threshold, Emit&& emit) {
  alignas(32) int32_t dots[kTileRows][kPanel];
  tile_dots(rows, panel, pairs, dots);
#if defined(__AVX2__)
  for (int r = 0; r < rows_valid; ++r) {
    const __m256 inverse_r = _mm256_set1_ps(row_inverse[r]);
    const __m256 limit = _mm256_set1_ps(threshold - row_error[r] - kScreenSlack);
    const __m256 spread = _mm256_set1_ps(1.0f + 3.0f * row_error[r]);
    for (int v = 0; v < kPanel / 8 && v * 8 < columns_valid; ++v) {
      // estimate + e_r + e_c (1 + 3 e_r) > threshold  <=>  estimate + e_c * spread > limit
      const __m256i dot = _mm256_load_si256(reinterpret_cast<const __m256i*>(&dots[r][8 * v]));
      const __m256 estimate = _mm256_mul_ps(_mm256_cvtepi32_ps(dot),
                                            _mm256_mul_ps(_mm256_loadu_ps(column_inverse + 8 * v), inverse_r));
      const __m256 upper = _mm256_fmadd_ps(_mm256_loadu_ps(column_error + 8 * v), spread, estimate);
      int mask = _mm256_movemask_ps(_mm256_cmp_ps(upper, limit, _CMP_GT_OQ));
      const int lanes = columns_valid - 8 * v;
      if (lanes < 8) mask &= (1 << lanes) - 1;
      while (mask) {
        const int lane = __builtin_ctz(mask);
        emit(r, 8 * v + lane, dots[r][8 * v + lane]);
        mask &= mask - 1;
      }
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

// Every row quantised once, up front (one parallel pass; N * D * 2 bytes).
struct QuantisedRows {
  std::vector<int16_t> data;  // [n][2 * pairs], row-major
  std::vector<float> inverse_scale, error;
  std::vector<double> inverse_scale_exact, error_exact;
};

// The block of rows being decided: a view into QuantisedRows.
struct QuantisedBlock {
  int64_t rows = 0;
  const int16_t* data = nullptr;
  const float* inverse_scale = nullptr;
  const float* error = nullptr;
  const double* inverse_scale_exact = nullptr;
  const double* error_exact = nullptr;
  const int16_t* row(int64_t r, int64_t pairs) const { return data + r * 2 * pairs; }
};

template <typename scalar_t>
class GreedyUnique {
 public:
  GreedyUnique(const scalar_t* x, int64_t n, int64_t d, double threshold)
      : x_(x), n_(n), d_(d), threshold_(threshold), pairs_((d + 1) / 2) {
    // |dot| <= 2 * pairs * Q^2 must fit in int32.
    const double largest = std::floor(std::sqrt(static_cast<double>(INT32_MAX) / static_cast<double>(2 * pairs_)));
    q_max_ = std::min(32767.0, largest);
    norms_.resize(n);
    at::parallel_for(0, n, 1024, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        double square = 0.0;
        for (int64_t k = 0; k < d; ++k) square += static_cast<double>(x[i * d + k]) * x[i * d + k];
        norms_[i] = std::sqrt(square);
      }
    });
    for (int64_t i = 0; i < n; ++i) TORCH_CHECK(std::isfinite(norms_[i]), "embeddings must be finite (row ", i, ")");
    kept_store_.pairs = pairs_;
    block_store_.pairs = pairs_;
  }

  void run(bool* kept) {
    QuantisedRows all;
    all.data.resize(n_ * 2 * pairs_);
    all.inverse_scale.resize(n_);
    all.error.resize(n_);
    all.inverse_scale_exact.resize(n_);
    all.error_exact.resize(n_);
    at::parallel_for(0, n_, 64, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) quantise(i, all);
    });
    for (int64_t start = 0; start < n_; start += kBlock) {
      QuantisedBlock block;
      block.rows = std::min(kBlock, n_ - start);
      block.data = all.data.data() + start * 2 * pairs_;
      block.inverse_scale = all.inverse_scale.data() + start;
      block.error = all.error.data() + start;
      block.inverse_scale_exact = all.inverse_scale_exact.data() + start;
      block.error_exact = all.error_exact.data() + start;
      std::vector<char> dropped(block.rows, 0);
      resolve_against_kept(start, block, dropped);
      resolve_within_block(start, block, dropped);
      for (int64_t r = 0; r < block.rows; ++r) {
        kept[start + r] = !dropped[r];
        if (!dropped[r]) {
          kept_store_.append(block.row(r, pairs_), block.inverse_scale[r], block.error[r],
                             block.inverse_scale_exact[r], block.error_exact[r], start + r);
        }
      }
    }
  }

 private:
  // Row i as the reference sees it, x / max(|x|, 1e-12) in float64, rounded to
  // integers with its largest component at +-Q.
  void quantise(int64_t i, QuantisedRows& block) const {
    const int64_t r = i;
    const scalar_t* row = x_ + i * d_;
    int16_t* out = block.data.data() + r * 2 * pairs_;
    const double norm = std::max(norms_[i], 1e-12);
    double largest = 0.0;
    for (int64_t k = 0; k < d_; ++k) largest = std::max(largest, std::abs(static_cast<double>(row[k]) / norm));
    std::fill(out, out + 2 * pairs_, int16_t{0});
    if (largest == 0.0) {  // the zero vector: its cosine with anything is exactly 0
      block.inverse_scale[r] = 0.0f;
      block.error[r] = 0.0f;
      block.inverse_scale_exact[r] = 0.0;
      block.error_exact[r] = 0.0;
      return;
    }
    const double scale = q_max_ / largest;
    double square = 0.0;
    for (int64_t k = 0; k < d_; ++k) {
      const double unit = static_cast<double>(row[k]) / norm;
      const double q = std::clamp(std::nearbyint(unit * scale), -q_max_, q_max_);
      out[k] = static_cast<int16_t>(q);
      const double residual = unit - q / scale;
      square += residual * residual;
    }
    // Rounded up a hair: the bound must never be smaller than the true error norm.
    block.inverse_scale_exact[r] = 1.0 / scale;
    block.error_exact[r] = std::sqrt(square) * (1.0 + 1e-12) + 1e-300;
    block.inverse_scale[r] = static_cast<float>(block.inverse_scale_exact[r]);
    block.error[r] = static_cast<float>(block.error_exact[r]) * (1.0f + 1e-6f);
  }

  double exact_cosine(int64_t i, int64_t j) const {
    const scalar_t* a = x_ + i * d_;
    const scalar_t* b = x_ + j * d_;
    const double norm_i = std::max(norms_[i], 1e-12), norm_j = std::max(norms_[j], 1e-12);
    double total = 0.0;
    for (int64_t k = 0; k < d_; ++k) total += (static_cast<double>(a[k]) / norm_i) * (static_cast<double>(b[k]) / norm_j);
    return total;
  }

  // Does a screened pair really have cosine > threshold? The bound settles it
  // unless the integer estimate lies within the bound of the threshold.
  bool exceeds(int32_t dot, double inverse_i, double error_i, double inverse_j, double error_j, int64_t i,
               int64_t j) const {
    const double estimate = static_cast<double>(dot) * inverse_i * inverse_j;
    const double bound = error_i + error_j + 3.0 * error_i * error_j + kBoundSlack;
    if (estimate - bound > threshold_) return true;
    if (estimate + bound <= threshold_) return false;
    return exact_cosine(i, j) > threshold_;
  }

  // Block rows `rows[0..count)` against panel `p` of `store`; `emit(row, column, dot)` gets
  // the pairs the screen cannot rule out.
  template <typename Emit>
  void screen_panel(const PanelStore& store, int64_t p, const QuantisedBlock& block, const int32_t* rows,
                    int64_t count, Emit&& emit) const {
    const int columns = static_cast<int>(std::min(kPanel, store.count - p * kPanel));
    const float threshold = static_cast<float>(threshold_);
    for (int64_t r0 = 0; r0 < count; r0 += kTileRows) {
      const int valid = static_cast<int>(std::min(kTileRows, count - r0));
      const int16_t* tile_rows[kTileRows];
      float inverse[kTileRows], error[kTileRows];
      for (int r = 0; r < kTileRows; ++r) {
        const int32_t row = rows[r0 + std::min(r, valid - 1)];
        tile_rows[r] = block.row(row, pairs_);
        inverse[r] = block.inverse_scale[row];
        error[r] = block.error[row];
      }
      screen_tile(tile_rows, valid, inverse, error, store.panel(p), pairs_, store.inverse_scale.data() + p * kPanel,
                  store.error.data() + p * kPanel, columns, threshold,
                  [&](int r, int c, int32_t dot) { emit(rows[r0 + r], p * kPanel + c, dot); });
    }
  }

  // Block rows against every kept row of earlier blocks. Any one kept row above the
  // threshold drops a row, so pairs are settled as the screen finds them, in any order,
  // nothing is stored, and a dropped row leaves the screen at the next panel grab.
  void resolve_against_kept(int64_t start, const QuantisedBlock& block, std::vector<char>& dropped) const {
    const int64_t panels = kept_store_.panels();
    if (panels == 0) return;
    // Threads take the kept panels a few at a time from a shared counter (a thread that
    // shares its core with another process then simply takes fewer); each panel stays in
    // L1 while the block's rows pass over it.
    const int64_t workers = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), panels));
    std::atomic<int64_t> next_panel{0};
    constexpr int64_t kPanelsPerGrab = 4;
    std::unique_ptr<std::atomic<uint8_t>[]> hit(new std::atomic<uint8_t>[block.rows]);
    for (int64_t r = 0; r < block.rows; ++r) hit[r].store(0, std::memory_order_relaxed);
    at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
      std::vector<int32_t> active;
      auto settle = [&](int64_t row, int64_t column, int32_t dot) {
        if (!hit[row].load(std::memory_order_relaxed) &&
            exceeds(dot, block.inverse_scale_exact[row], block.error_exact[row],
                    kept_store_.inverse_scale_exact[column], kept_store_.error_exact[column], start + row,
                    kept_store_.source_row[column])) {
          hit[row].store(1, std::memory_order_relaxed);
        }
      };
      for (int64_t first = next_panel.fetch_add(kPanelsPerGrab); first < panels;
           first = next_panel.fetch_add(kPanelsPerGrab)) {
        active.clear();
        for (int32_t r = 0; r < block.rows; ++r)
          if (!hit[r].load(std::memory_order_relaxed)) active.push_back(r);
        const int64_t last = std::min(panels, first + kPanelsPerGrab);
        for (int64_t p = first; p < last; ++p)
          screen_panel(kept_store_, p, block, active.data(), static_cast<int64_t>(active.size()), settle);
      }
    });
    for (int64_t r = 0; r < block.rows; ++r) dropped[r] = hit[r].load(std::memory_order_relaxed);
  }

  // Block rows against earlier rows of the same block: here order matters (only a kept
  // earlier row can drop a row), so the pairs are collected and settled in row order.
  void resolve_within_block(int64_t start, const QuantisedBlock& block, std::vector<char>& dropped) {
    block_store_.clear();
    for (int64_t r = 0; r < block.rows; ++r) {
      block_store_.append(block.row(r, pairs_), block.inverse_scale[r], block.error[r], block.inverse_scale_exact[r],
                          block.error_exact[r], start + r);
    }
    std::vector<Candidate> candidates;
    std::vector<int32_t> rows;  // the rows not dropped by earlier blocks
    for (int32_t r = 0; r < block.rows; ++r)
      if (!dropped[r]) rows.push_back(r);
    for (int64_t p = 0; p < block_store_.panels(); ++p) {
      // Rows up to the panel's first row have no earlier partner in it.
      const auto later = std::upper_bound(rows.begin(), rows.end(), static_cast<int32_t>(p * kPanel));
      screen_panel(block_store_, p, block, rows.data() + (later - rows.begin()), rows.end() - later,
                   [&](int64_t row, int64_t column, int32_t dot) {
                     if (column < row) {
                       candidates.push_back({static_cast<int32_t>(row), static_cast<int32_t>(column), dot});
                     }
                   });
    }
    std::sort(candidates.begin(), candidates.end(), [](const Candidate& a, const Candidate& b) {
      return a.row != b.row ? a.row < b.row : a.column < b.column;
    });
    for (const Candidate& cand : candidates) {
      if (dropped[cand.row] || dropped[cand.column]) continue;
      if (exceeds(cand.dot, block.inverse_scale_exact[cand.row], block.error_exact[cand.row],
                  block.inverse_scale_exact[cand.column], block.error_exact[cand.column], start + cand.row,
                  start + cand.column)) {
        dropped[cand.row] = 1;
      }
    }
  }

  const scalar_t* x_;
  int64_t n_, d_;
  double threshold_;
  int64_t pairs_;
  double q_max_ = 0.0;
  std::vector<double> norms_;
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

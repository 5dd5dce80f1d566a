// ref_cosine on the CPU: each sample's cosine to the plain (not re-normalised)
// mean of its identity's reference embeddings.
//
// The references are small (a few per identity) and are averaged first, in
// float64; the samples are then read exactly once, in parallel, each row
// producing its dot product with its identity's mean and its own norm. That
// pass is bound by memory bandwidth, so the means are kept in the samples'
// precision to halve the bytes touched per multiply-add.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "simd.h"

namespace synfiqa {
namespace {

// identity -> row of the means table, or -1. Dense when the identities are
// small integers (the usual 0..C-1), a sorted list otherwise.
class IdentityRows {
 public:
  explicit IdentityRows(const int64_t* ids, int64_t count) {
    int64_t largest = -1;
    for (int64_t i = 0; i < count; ++i) largest = std::max(largest, ids[i]);
    dense_ = largest < 8 * count + 65536;
    if (dense_) {
      table_.assign(largest + 1, -1);
      for (int64_t i = 0; i < count; ++i) {
        if (table_[ids[i]] < 0) table_[ids[i]] = rows_++;
      }
    } else {
      sorted_.assign(ids, ids + count);
      std::sort(sorted_.begin(), sorted_.end());
      sorted_.erase(std::unique(sorted_.begin(), sorted_.end()), sorted_.end());
      rows_ = static_cast<int64_t>(sorted_.size());
    }
  }
  int64_t rows() const { return rows_; }
  int64_t row(int64_t id) const {
    if (id < 0) return -1;
    if (dense_) return id < static_cast<int64_t>(table_.size()) ? table_[id] : -1;
    auto it = std::lower_bound(sorted_.begin(), sorted_.end(), id);
    return (it != sorted_.end() && *it == id) ? static_cast<int64_t>(it - sorted_.begin()) : -1;
  }

 private:
  bool dense_ = true;
  int64_t rows_ = 0;
  std::vector<int64_t> table_;
  std::vector<int64_t> sorted_;
};

// dot(a, b) and |a|^2 of one row, in float with 4 x 8 partial sums.
inline void dot_and_square(const float* a, const float* b, int64_t d, double& dot, double& square) {
  using simd::f32x8;
  f32x8 dots[4] = {simd::zero(), simd::zero(), simd::zero(), simd::zero()};
  f32x8 squares[4] = {simd::zero(), simd::zero(), simd::zero(), simd::zero()};
  int64_t k = 0;
  for (; k + 32 <= d; k += 32) {
    for (int v = 0; v < 4; ++v) {
      const f32x8 x = simd::load(a + k + 8 * v);
      dots[v] += x * simd::load(b + k + 8 * v);
      squares[v] += x * x;
    }
  }
  for (; k + 8 <= d; k += 8) {
    const f32x8 x = simd::load(a + k);
    dots[0] += x * simd::load(b + k);
    squares[0] += x * x;
  }
  double dot_total = simd::sum((dots[0] + dots[1]) + (dots[2] + dots[3]));
  double square_total = simd::sum((squares[0] + squares[1]) + (squares[2] + squares[3]));
  for (; k < d; ++k) {
    dot_total += static_cast<double>(a[k]) * b[k];
    square_total += static_cast<double>(a[k]) * a[k];
  }
  dot = dot_total;
  square = square_total;
}

inline void dot_and_square(const double* a, const double* b, int64_t d, double& dot, double& square) {
  double dots[4] = {0, 0, 0, 0}, squares[4] = {0, 0, 0, 0};
  int64_t k = 0;
  for (; k + 4 <= d; k += 4) {
    for (int v = 0; v < 4; ++v) {
      dots[v] += a[k + v] * b[k + v];
      squares[v] += a[k + v] * a[k + v];
    }
  }
  for (; k < d; ++k) {
    dots[0] += a[k] * b[k];
    squares[0] += a[k] * a[k];
  }
  dot = (dots[0] + dots[1]) + (dots[2] + dots[3]);
  square = (squares[0] + squares[1]) + (squares[2] + squares[3]);
}

template <typename scalar_t>
void ref_cosine_kernel(const at::Tensor& samples, const int64_t* sample_ids, const at::Tensor& references,
                       const int64_t* reference_ids, at::Tensor& out) {
  const int64_t n = samples.size(0), m = references.size(0), d = samples.size(1);
  const IdentityRows identities(reference_ids, m);
  const int64_t rows = identities.rows();

  // Means in float64, one identity per task: the references are first ordered by
  // identity (a counting sort), so each task sums its own rows and writes its own mean.
  std::vector<int64_t> offsets(rows + 1, 0);
  std::vector<int64_t> row_of_reference(m);
  for (int64_t r = 0; r < m; ++r) {
    row_of_reference[r] = identities.row(reference_ids[r]);
    ++offsets[row_of_reference[r] + 1];
  }
  for (int64_t row = 0; row < rows; ++row) offsets[row + 1] += offsets[row];
  std::vector<int64_t> order(m);
  {
    std::vector<int64_t> fill(offsets.begin(), offsets.end() - 1);
    for (int64_t r = 0; r < m; ++r) order[fill[row_of_reference[r]]++] = r;
  }
  const scalar_t* ref = references.data_ptr<scalar_t>();
  std::vector<scalar_t> means(rows * d);
  std::vector<double> mean_norms(rows);
  at::parallel_for(0, rows, 64, [&](int64_t begin, int64_t end) {
    std::vector<double> sum(d);
    for (int64_t row = begin; row < end; ++row) {
      std::fill(sum.begin(), sum.end(), 0.0);
      for (int64_t i = offsets[row]; i < offsets[row + 1]; ++i) {
        const scalar_t* __restrict__ x = ref + order[i] * d;
        double* __restrict__ acc = sum.data();
        for (int64_t k = 0; k < d; ++k) acc[k] += static_cast<double>(x[k]);
      }
      const double count = static_cast<double>(offsets[row + 1] - offsets[row]);
      double square = 0.0;
      for (int64_t k = 0; k < d; ++k) {
        const double mean = sum[k] / count;
        means[row * d + k] = static_cast<scalar_t>(mean);
        square += mean * mean;
      }
      mean_norms[row] = std::sqrt(square);
    }
  });

  const scalar_t* x = samples.data_ptr<scalar_t>();
  scalar_t* result = out.data_ptr<scalar_t>();
  at::parallel_for(0, n, 2048, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t row = identities.row(sample_ids[i]);
      if (row < 0) {
        result[i] = std::numeric_limits<scalar_t>::quiet_NaN();
        continue;
      }
      double dot, square;
      dot_and_square(x + i * d, means.data() + row * d, d, dot, square);
      // Same guard as synfiqa.scoring.reference_cosine: a zero vector gives 0, not NaN.
      result[i] = static_cast<scalar_t>(dot / std::max(std::sqrt(square) * mean_norms[row], 1e-12));
    }
  });
}

at::Tensor ref_cosine_cpu(const at::Tensor& samples, const at::Tensor& sample_ids, const at::Tensor& references,
                          const at::Tensor& reference_ids) {
  TORCH_CHECK(samples.dim() == 2 && references.dim() == 2 && samples.size(1) == references.size(1),
              "samples [N, D] and references [M, D] must share D");
  TORCH_CHECK(samples.scalar_type() == references.scalar_type() &&
                  (samples.scalar_type() == at::kFloat || samples.scalar_type() == at::kDouble),
              "samples and references must both be float32 or both float64");
  TORCH_CHECK(sample_ids.dim() == 1 && sample_ids.size(0) == samples.size(0) &&
                  sample_ids.scalar_type() == at::kLong,
              "sample_ids must be int64 [N]");
  TORCH_CHECK(reference_ids.dim() == 1 && reference_ids.size(0) == references.size(0) &&
                  reference_ids.scalar_type() == at::kLong,
              "reference_ids must be int64 [M]");
  const at::Tensor x = samples.contiguous(), r = references.contiguous();
  const at::Tensor sid = sample_ids.contiguous(), rid = reference_ids.contiguous();
  const int64_t* rid_ptr = rid.data_ptr<int64_t>();
  for (int64_t i = 0; i < rid.numel(); ++i) TORCH_CHECK(rid_ptr[i] >= 0, "reference_ids must be >= 0");
  at::Tensor out = at::empty({x.size(0)}, x.options());
  if (x.size(0) == 0) return out;
  if (x.scalar_type() == at::kFloat) {
    ref_cosine_kernel<float>(x, sid.data_ptr<int64_t>(), r, rid_ptr, out);
  } else {
    ref_cosine_kernel<double>(x, sid.data_ptr<int64_t>(), r, rid_ptr, out);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(synfiqa, CPU, m) { m.impl("ref_cosine", &ref_cosine_cpu); }

}  // namespace synfiqa

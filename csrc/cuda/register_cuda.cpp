// CUDA kernels of the synfiqa ops: tensors in, raw pointers to the torch-free
// kernels in this folder (launchers.h), tensors out. Compiled by the host
// compiler; only the .cu files go through nvcc.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <tuple>
#include <vector>

#include "../resample_plan.h"
#include "launchers.h"

namespace synfiqa {
namespace {

void check_launch(cudaError_t status, const char* what) {
  TORCH_CHECK(status == cudaSuccess, what, " failed: ", cudaGetErrorString(status));
}

// Per-sample resampling tables, padded to the batch's largest sizes, built on
// the host with the CPU kernel's own code and copied to the device.
struct DeviceTables {
  at::Tensor ints, floats;  // keep the storage alive
  cuda::BlurResampleArgs args{};
};

DeviceTables blur_tables(const at::Tensor& factors, int64_t n, int64_t height, int64_t width, int64_t out_h,
                         int64_t out_w, const at::Device& device) {
  const at::Tensor f = factors.to(at::kCPU, at::kDouble).contiguous();
  const double* factor = f.data_ptr<double>();
  std::vector<AntialiasAxis> down_y(n), down_x(n);
  std::vector<CubicAxis> up_y(n), up_x(n);
  int64_t small_h_max = 1, small_w_max = 1, taps_y = 1, taps_x = 1;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t h = downscaled_side(height, factor[i]), w = downscaled_side(width, factor[i]);
    down_y[i] = antialiased_bicubic_axis(height, h);
    down_x[i] = antialiased_bicubic_axis(width, w);
    up_y[i] = bicubic_axis(h, out_h);
    up_x[i] = bicubic_axis(w, out_w);
    small_h_max = std::max(small_h_max, h);
    small_w_max = std::max(small_w_max, w);
    taps_y = std::max(taps_y, down_y[i].taps);
    taps_x = std::max(taps_x, down_x[i].taps);
  }
  // int32 tables: small_h, small_w, first_y, count_y, first_x, count_x, up_y_index, up_x_index
  const int64_t int_sizes[] = {n, n, n * small_h_max, n * small_h_max, n * small_w_max, n * small_w_max,
                               n * out_h * 4, n * out_w * 4};
  // float tables: weight_y, weight_x, up_y_weight, up_x_weight
  const int64_t float_sizes[] = {n * small_h_max * taps_y, n * small_w_max * taps_x, n * out_h * 4, n * out_w * 4};
  int64_t int_total = 0, float_total = 0;
  for (int64_t s : int_sizes) int_total += s;
  for (int64_t s : float_sizes) float_total += s;
  at::Tensor ints = at::zeros({int_total}, at::kInt);
  at::Tensor floats = at::zeros({float_total}, at::kFloat);
  int32_t* ip[8];
  float* fp[4];
  ip[0] = ints.data_ptr<int32_t>();
  for (int i = 1; i < 8; ++i) ip[i] = ip[i - 1] + int_sizes[i - 1];
  fp[0] = floats.data_ptr<float>();
  for (int i = 1; i < 4; ++i) fp[i] = fp[i - 1] + float_sizes[i - 1];
  for (int64_t i = 0; i < n; ++i) {
    const int64_t h = static_cast<int64_t>(down_y[i].first.size()), w = static_cast<int64_t>(down_x[i].first.size());
    ip[0][i] = static_cast<int32_t>(h);
    ip[1][i] = static_cast<int32_t>(w);
    for (int64_t p = 0; p < h; ++p) {
      ip[2][i * small_h_max + p] = static_cast<int32_t>(down_y[i].first[p]);
      ip[3][i * small_h_max + p] = static_cast<int32_t>(down_y[i].count[p]);
      for (int64_t j = 0; j < down_y[i].count[p]; ++j)
        fp[0][(i * small_h_max + p) * taps_y + j] = down_y[i].weights[p * down_y[i].taps + j];
    }
    for (int64_t q = 0; q < w; ++q) {
      ip[4][i * small_w_max + q] = static_cast<int32_t>(down_x[i].first[q]);
      ip[5][i * small_w_max + q] = static_cast<int32_t>(down_x[i].count[q]);
      for (int64_t j = 0; j < down_x[i].count[q]; ++j)
        fp[1][(i * small_w_max + q) * taps_x + j] = down_x[i].weights[q * down_x[i].taps + j];
    }
    for (int64_t k = 0; k < out_h * 4; ++k) {
      ip[6][i * out_h * 4 + k] = static_cast<int32_t>(up_y[i].index[k]);
      fp[2][i * out_h * 4 + k] = up_y[i].weights[k];
    }
    for (int64_t k = 0; k < out_w * 4; ++k) {
      ip[7][i * out_w * 4 + k] = static_cast<int32_t>(up_x[i].index[k]);
      fp[3][i * out_w * 4 + k] = up_x[i].weights[k];
    }
  }
  DeviceTables tables;
  tables.ints = ints.to(device);
  tables.floats = floats.to(device);
  const int32_t* di = tables.ints.data_ptr<int32_t>();
  const float* df = tables.floats.data_ptr<float>();
  cuda::BlurResampleArgs& a = tables.args;
  a.small_h_max = small_h_max;
  a.small_w_max = small_w_max;
  a.taps_y = taps_y;
  a.taps_x = taps_x;
  const int32_t* ipd[8];
  const float* fpd[4];
  ipd[0] = di;
  for (int i = 1; i < 8; ++i) ipd[i] = ipd[i - 1] + int_sizes[i - 1];
  fpd[0] = df;
  for (int i = 1; i < 4; ++i) fpd[i] = fpd[i - 1] + float_sizes[i - 1];
  a.small_h = ipd[0];
  a.small_w = ipd[1];
  a.first_y = ipd[2];
  a.count_y = ipd[3];
  a.first_x = ipd[4];
  a.count_x = ipd[5];
  a.up_y_index = ipd[6];
  a.up_x_index = ipd[7];
  a.weight_y = fpd[0];
  a.weight_x = fpd[1];
  a.up_y_weight = fpd[2];
  a.up_x_weight = fpd[3];
  return tables;
}

at::Tensor blur_resample_cuda(const at::Tensor& images, const at::Tensor& kernels, const at::Tensor& factors,
                              at::IntArrayRef out_size) {
  TORCH_CHECK(images.dim() == 4 && images.scalar_type() == at::kByte, "images must be uint8 [N, C, H, W]");
  TORCH_CHECK(kernels.dim() == 3 && kernels.size(0) == images.size(0) && kernels.size(1) == kernels.size(2),
              "kernels must be [N, K, K]");
  TORCH_CHECK(kernels.size(1) % 2 == 1, "kernel size must be odd");
  TORCH_CHECK(factors.dim() == 1 && factors.size(0) == images.size(0), "factors must be [N]");
  TORCH_CHECK(out_size.size() == 2 && out_size[0] > 0 && out_size[1] > 0, "out_size must be two positive ints");
  const c10::cuda::CUDAGuard guard(images.device());
  const int64_t n = images.size(0), channels = images.size(1), height = images.size(2), width = images.size(3);
  const int64_t k = kernels.size(1);
  TORCH_CHECK(height > k / 2 && width > k / 2, "images must be larger than kernel_size // 2 for reflect padding");
  const int64_t out_h = out_size[0], out_w = out_size[1];
  at::Tensor out = at::empty({n, channels, out_h, out_w}, images.options());
  if (n == 0 || channels == 0) return out;
  const at::Tensor f = factors.to(at::kCPU, at::kDouble);
  TORCH_CHECK(at::isfinite(f).all().item<bool>() && (f >= 1.0).all().item<bool>(), "factors must be >= 1");

  const at::Tensor image_data = images.contiguous();
  const at::Tensor kernel_data = kernels.to(images.device(), at::kFloat).contiguous();
  DeviceTables tables = blur_tables(f, n, height, width, out_h, out_w, images.device());
  cuda::BlurResampleArgs& a = tables.args;
  a.images = image_data.data_ptr<uint8_t>();
  a.out = out.data_ptr<uint8_t>();
  a.n = n;
  a.channels = channels;
  a.height = height;
  a.width = width;
  a.k = k;
  a.out_h = out_h;
  a.out_w = out_w;
  a.kernels = kernel_data.data_ptr<float>();
  at::Tensor composite = at::empty({n * a.small_h_max * (a.taps_y + k - 1) * k}, images.options().dtype(at::kFloat));
  a.composite = composite.data_ptr<float>();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  check_launch(cuda::blur_resample_composite(a, stream), "blur_resample composite kernel");

  // Step-1 values per sample; chunks keep them under ~256 MB.
  const int64_t row_values = channels * (height + k - 1) * a.small_w_max * k;
  const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(n, (int64_t{64} << 20) / std::max<int64_t>(1, row_values)));
  at::Tensor rows = at::empty({chunk * row_values}, composite.options());
  at::Tensor small = at::empty({chunk * channels * a.small_h_max * a.small_w_max}, composite.options());
  for (int64_t first = 0; first < n; first += chunk) {
    const int64_t count = std::min(chunk, n - first);
    check_launch(cuda::blur_resample_samples(a, first, count, rows.data_ptr<float>(), small.data_ptr<float>(), stream),
                 "blur_resample kernels");
  }
  return out;
}

at::Tensor ref_cosine_cuda(const at::Tensor& samples, const at::Tensor& sample_ids, const at::Tensor& references,
                           const at::Tensor& reference_ids) {
  TORCH_CHECK(samples.dim() == 2 && references.dim() == 2 && samples.size(1) == references.size(1),
              "samples [N, D] and references [M, D] must share D");
  TORCH_CHECK(samples.scalar_type() == references.scalar_type() &&
                  (samples.scalar_type() == at::kFloat || samples.scalar_type() == at::kDouble),
              "samples and references must both be float32 or both float64");
  TORCH_CHECK(sample_ids.dim() == 1 && sample_ids.size(0) == samples.size(0) &&
                  sample_ids.scalar_type() == at::kLong && reference_ids.dim() == 1 &&
                  reference_ids.size(0) == references.size(0) && reference_ids.scalar_type() == at::kLong,
              "sample_ids [N] and reference_ids [M] must be int64");
  const c10::cuda::CUDAGuard guard(samples.device());
  const int64_t n = samples.size(0), d = samples.size(1);
  at::Tensor out = at::full({n}, std::numeric_limits<double>::quiet_NaN(), samples.options());
  if (n == 0 || references.size(0) == 0) return out;
  TORCH_CHECK(reference_ids.min().item<int64_t>() >= 0, "reference_ids must be >= 0");

  // Means of each identity's references in float64 (ATen reductions), then one pass over the samples.
  auto [identities, row_of_reference, counts] = at::_unique2(reference_ids, /*sorted=*/true,
                                                              /*return_inverse=*/true, /*return_counts=*/true);
  const int64_t rows = identities.size(0);
  at::Tensor sums = at::zeros({rows, d}, samples.options().dtype(at::kDouble));
  sums.index_add_(0, row_of_reference.reshape({-1}), references.to(at::kDouble));
  const at::Tensor means = sums / counts.to(at::kDouble).unsqueeze(1);
  const at::Tensor mean_norms = means.norm(2, {1}).contiguous();
  at::Tensor row = at::searchsorted(identities, sample_ids.contiguous()).clamp_max(rows - 1);
  row = at::where(identities.index_select(0, row) == sample_ids, row, at::full_like(row, -1)).contiguous();
  const at::Tensor x = samples.contiguous();
  const at::Tensor m = means.to(samples.scalar_type()).contiguous();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  if (x.scalar_type() == at::kFloat) {
    check_launch(cuda::ref_cosine_float(x.data_ptr<float>(), row.data_ptr<int64_t>(), m.data_ptr<float>(),
                                        mean_norms.data_ptr<double>(), n, d, out.data_ptr<float>(), stream),
                 "ref_cosine kernel");
  } else {
    check_launch(cuda::ref_cosine_double(x.data_ptr<double>(), row.data_ptr<int64_t>(), m.data_ptr<double>(),
                                         mean_norms.data_ptr<double>(), n, d, out.data_ptr<double>(), stream),
                 "ref_cosine kernel");
  }
  return out;
}

// Blocks of rows against the kept rows of earlier blocks with float64 GEMMs (the
// reference's own arithmetic; a GPU has the float64 throughput for it), then the
// block's own rows in order on the device.
at::Tensor greedy_unique_cuda(const at::Tensor& embeddings, double threshold) {
  TORCH_CHECK(embeddings.dim() == 2, "embeddings must be [N, D]");
  TORCH_CHECK(embeddings.scalar_type() == at::kFloat || embeddings.scalar_type() == at::kDouble,
              "embeddings must be float32 or float64");
  const c10::cuda::CUDAGuard guard(embeddings.device());
  const int64_t n = embeddings.size(0);
  at::Tensor kept = at::zeros({n}, embeddings.options().dtype(at::kBool));
  if (n == 0) return kept;
  const at::Tensor x = embeddings.to(at::kDouble);
  const at::Tensor unit = x / x.norm(2, {1}, /*keepdim=*/true).clamp_min(1e-12);
  at::Tensor kept_rows = at::empty_like(unit);
  int64_t kept_count = 0;
  constexpr int64_t kChunk = 16384;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  for (int64_t start = 0; start < n; start += cuda::kGreedyBlock) {
    const int64_t rows = std::min(cuda::kGreedyBlock, n - start);
    const at::Tensor block = unit.narrow(0, start, rows);
    at::Tensor dropped = at::zeros({rows}, kept.options());
    for (int64_t first = 0; first < kept_count; first += kChunk) {
      const at::Tensor earlier = kept_rows.narrow(0, first, std::min(kChunk, kept_count - first));
      dropped.logical_or_(at::mm(block, earlier.t()).gt(threshold).any(1));
    }
    const at::Tensor over = at::mm(block, block.t()).gt(threshold).contiguous();
    check_launch(cuda::greedy_resolve_block(over.data_ptr<bool>(), rows, dropped.data_ptr<bool>(), stream),
                 "greedy_unique block kernel");
    const at::Tensor keep = dropped.logical_not();
    kept.narrow(0, start, rows).copy_(keep);
    const at::Tensor new_rows = block.index({keep});
    kept_rows.narrow(0, kept_count, new_rows.size(0)).copy_(new_rows);
    kept_count += new_rows.size(0);
  }
  return kept;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> rasterize_cuda(const at::Tensor& verts, const at::Tensor& faces,
                                                              int64_t height, int64_t width) {
  TORCH_CHECK(verts.dim() == 3 && verts.size(2) == 3 && verts.scalar_type() == at::kFloat,
              "verts must be float32 [N, V, 3]");
  TORCH_CHECK(faces.dim() == 2 && faces.size(1) == 3 && faces.scalar_type() == at::kLong, "faces must be int64 [F, 3]");
  TORCH_CHECK(height > 0 && width > 0, "height and width must be positive");
  TORCH_CHECK(faces.size(0) < (int64_t{1} << 31), "at most 2^31 - 1 faces");
  TORCH_CHECK(faces.device() == verts.device(), "faces must be on the device of verts");
  const c10::cuda::CUDAGuard guard(verts.device());
  const int64_t n = verts.size(0), v = verts.size(1), f = faces.size(0);
  at::Tensor pix_to_face = at::full({n, height, width}, -1, verts.options().dtype(at::kLong));
  at::Tensor bary = at::full({n, height, width, 3}, -1.0, verts.options());
  at::Tensor zbuf = at::full({n, height, width}, -1.0, verts.options());
  if (n == 0 || f == 0) return {pix_to_face, bary, zbuf};
  TORCH_CHECK(faces.min().item<int64_t>() >= 0 && faces.max().item<int64_t>() < v,
              "faces index a vertex out of range [0, ", v, ")");
  const at::Tensor vd = verts.contiguous();
  const at::Tensor fd = faces.contiguous();
  at::Tensor keys = at::full({n * height * width}, std::numeric_limits<int64_t>::max(), pix_to_face.options());
  static_assert(cuda::kRasterizeNoKey == static_cast<unsigned long long>(std::numeric_limits<int64_t>::max()));
  cuda::RasterizeArgs args{};
  args.verts = vd.data_ptr<float>();
  args.faces = fd.data_ptr<int64_t>();
  args.n = n;
  args.v = v;
  args.f = f;
  args.height = height;
  args.width = width;
  args.keys = reinterpret_cast<unsigned long long*>(keys.data_ptr<int64_t>());
  args.pix_to_face = pix_to_face.data_ptr<int64_t>();
  args.bary = bary.data_ptr<float>();
  args.zbuf = zbuf.data_ptr<float>();
  check_launch(cuda::rasterize(args, c10::cuda::getCurrentCUDAStream()), "rasterize kernels");
  return {pix_to_face, bary, zbuf};
}

}  // namespace

TORCH_LIBRARY_IMPL(synfiqa, CUDA, m) {
  m.impl("blur_resample", &blur_resample_cuda);
  m.impl("ref_cosine", &ref_cosine_cuda);
  m.impl("greedy_unique", &greedy_unique_cuda);
  m.impl("rasterize", &rasterize_cuda);
}

}  // namespace synfiqa

// The in-block step of greedy_unique on the GPU. The host code compares each
// block of rows with every kept row of earlier blocks (float64 GEMMs, exact
// like the reference) and hands this kernel the block's own over-threshold
// matrix; the rows are then settled in order by one thread block, each row's
// "any kept earlier row above the threshold" being one block-wide OR.
#include <cuda_runtime.h>

#include <cstdint>

#include "launchers.h"

namespace synfiqa::cuda {
namespace {

__global__ void resolve_block_kernel(const bool* over, int64_t rows, bool* dropped) {
  __shared__ bool gone[kGreedyBlock];
  for (int64_t r = threadIdx.x; r < rows; r += blockDim.x) gone[r] = dropped[r];
  __syncthreads();
  for (int64_t r = 1; r < rows; ++r) {
    if (gone[r]) continue;  // every thread reads the same shared flag: uniform branch
    int hit = 0;
    for (int64_t c = threadIdx.x; c < r; c += blockDim.x) hit |= over[r * rows + c] && !gone[c];
    hit = __syncthreads_or(hit);
    if (hit && threadIdx.x == 0) gone[r] = true;
    __syncthreads();
  }
  for (int64_t r = threadIdx.x; r < rows; r += blockDim.x) dropped[r] = gone[r];
}

}  // namespace

cudaError_t greedy_resolve_block(const bool* over, int64_t rows, bool* dropped, cudaStream_t stream) {
  if (rows <= 0) return cudaSuccess;
  if (rows > kGreedyBlock) return cudaErrorInvalidValue;
  resolve_block_kernel<<<1, 256, 0, stream>>>(over, rows, dropped);
  return cudaGetLastError();
}

}  // namespace synfiqa::cuda

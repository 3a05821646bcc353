// Causal GQA attention over a device KV cache. One block per (query head, query position): the block takes the
// visible keys kAttentionThreads at a time, one score per thread, and keeps the online-softmax state (running
// maximum, denominator, the weighted sum of V rows) as kernels::Attention does, so any context length runs in
// fixed shared memory. Plain and readable rather than flash-fast: decode launches num_heads blocks, each
// walking the whole context; split-K over the context is the first thing to add when it is measured.
#include <cmath>
#include <limits>

#include "compute/cuda/cuda_common.cuh"

namespace es::cuda {
namespace {

constexpr int kAttentionThreads = 128;
// Output elements per thread: head_dim is at most kMaxHeadDim.
constexpr int kDimsPerThread = static_cast<int>(kernels::kMaxHeadDim) / kAttentionThreads;

__global__ void AttentionKernel(const float* q, size_t num_queries, const float* k, const float* v, size_t num_keys,
                                int num_heads, int num_kv_heads, int head_dim, float scale, float* out) {
  __shared__ float q_row[kernels::kMaxHeadDim];
  __shared__ float probs[kAttentionThreads];
  __shared__ float reduce[internal::kMaxWarpsPerBlock];
  const int head = blockIdx.x;
  const size_t query = blockIdx.y;
  const int kv_head = head / (num_heads / num_kv_heads);
  const size_t kv_stride = static_cast<size_t>(num_kv_heads) * head_dim;
  const size_t visible = num_keys - num_queries + query + 1;
  const int tid = threadIdx.x;

  const float* q_in = q + (query * num_heads + head) * head_dim;
  for (int d = tid; d < head_dim; d += kAttentionThreads) q_row[d] = q_in[d];
  __syncthreads();

  float acc[kDimsPerThread];
  for (int m = 0; m < kDimsPerThread; ++m) acc[m] = 0.0f;
  float running_max = -std::numeric_limits<float>::infinity();
  float denominator = 0.0f;
  for (size_t j0 = 0; j0 < visible; j0 += kAttentionThreads) {
    const size_t count = min(static_cast<size_t>(kAttentionThreads), visible - j0);
    float score = -std::numeric_limits<float>::infinity();
    if (static_cast<size_t>(tid) < count) {
      const float* key = k + (j0 + tid) * kv_stride + static_cast<size_t>(kv_head) * head_dim;
      float dot = 0.0f;
      for (int d = 0; d < head_dim; ++d) dot += q_row[d] * key[d];
      score = dot * scale;
    }
    const float new_max = fmaxf(running_max, internal::BlockMax(score, reduce));
    // Rescales what was summed under the old maximum; exp(-inf) = 0 before the first block.
    const float correction = expf(running_max - new_max);
    running_max = new_max;
    const float p = static_cast<size_t>(tid) < count ? expf(score - new_max) : 0.0f;
    probs[tid] = p;
    denominator = denominator * correction + internal::BlockSum(p, reduce);  // BlockSum also publishes probs
    for (int m = 0; m < kDimsPerThread; ++m) {
      const int d = tid + m * kAttentionThreads;
      if (d >= head_dim) break;
      const float* value = v + j0 * kv_stride + static_cast<size_t>(kv_head) * head_dim + d;
      float a = acc[m] * correction;
      for (size_t j = 0; j < count; ++j) a += probs[j] * value[j * kv_stride];
      acc[m] = a;
    }
    __syncthreads();  // probs is rewritten by the next block of keys
  }
  float* out_row = out + (query * num_heads + head) * head_dim;
  for (int m = 0; m < kDimsPerThread; ++m) {
    const int d = tid + m * kAttentionThreads;
    if (d < head_dim) out_row[d] = acc[m] / denominator;
  }
}

}  // namespace

Status Attention(const CudaStream& stream, const kernels::AttentionShape& shape, const float* q, size_t num_queries,
                 const float* k, const float* v, size_t num_keys, float* out) {
  ES_RETURN_IF_ERROR(internal::CheckStream(stream, "Attention"));
  if (shape.num_heads == 0 || shape.num_kv_heads == 0 || shape.num_heads % shape.num_kv_heads != 0) {
    return Status::InvalidArgument("Attention: num_kv_heads must be > 0 and divide num_heads");
  }
  if (shape.head_dim == 0 || shape.head_dim > kernels::kMaxHeadDim) {
    return Status::InvalidArgument("Attention: head_dim must be in [1, kMaxHeadDim]");
  }
  if (num_queries > num_keys) return Status::InvalidArgument("Attention: more queries than keys");
  constexpr size_t kMaxGridY = 65535;
  if (num_queries > kMaxGridY) return Status::InvalidArgument("Attention: more than 65535 queries in one call");
  if (num_queries == 0) return Status::Ok();
  if (q == nullptr || k == nullptr || v == nullptr || out == nullptr) {
    return Status::InvalidArgument("Attention: null q, k, v or out");
  }
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(shape.head_dim)));
  const dim3 grid(static_cast<unsigned>(shape.num_heads), static_cast<unsigned>(num_queries));
  AttentionKernel<<<grid, kAttentionThreads, 0, internal::Native(stream)>>>(
      q, num_queries, k, v, num_keys, static_cast<int>(shape.num_heads), static_cast<int>(shape.num_kv_heads),
      static_cast<int>(shape.head_dim), scale, out);
  return internal::LaunchStatus("Attention");
}

}  // namespace es::cuda

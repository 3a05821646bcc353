// The MoE router's softmax + top-k on the device: one block per token row. The row's probabilities live in
// shared memory (num_experts <= kMaxRouterExperts: 16 KiB), then top_k rounds of a block-wide argmax, ties to
// the lower index and NaN never preferred, the order kernels::RouterTopK's scan gives. The renormalising sum
// runs in slot order on one thread, as on the CPU.
#include <string>

#include "compute/cuda/cuda_common.cuh"

namespace es::cuda {
namespace {

constexpr int kRouterThreads = 256;

__global__ void RouterTopKKernel(const float* logits, int num_experts, int top_k, bool normalize, int32_t* experts,
                                 float* weights) {
  extern __shared__ float probs[];  // [num_experts], then the `taken` flags
  unsigned char* taken = reinterpret_cast<unsigned char*>(probs + num_experts);
  __shared__ float reduce[internal::kMaxWarpsPerBlock];
  __shared__ int reduce_index[internal::kMaxWarpsPerBlock];
  const float* row = logits + static_cast<size_t>(blockIdx.x) * num_experts;
  int32_t* row_experts = experts + static_cast<size_t>(blockIdx.x) * top_k;
  float* row_weights = weights + static_cast<size_t>(blockIdx.x) * top_k;

  float local_max = row[0];
  for (int e = threadIdx.x; e < num_experts; e += blockDim.x) local_max = fmaxf(local_max, row[e]);
  const float max_logit = internal::BlockMax(local_max, reduce);
  float local_sum = 0.0f;
  for (int e = threadIdx.x; e < num_experts; e += blockDim.x) {
    const float p = expf(row[e] - max_logit);
    probs[e] = p;
    taken[e] = 0;
    local_sum += p;
  }
  const float sum = internal::BlockSum(local_sum, reduce);
  for (int e = threadIdx.x; e < num_experts; e += blockDim.x) probs[e] /= sum;
  __syncthreads();

  float top_sum = 0.0f;  // meaningful on thread 0
  for (int slot = 0; slot < top_k; ++slot) {
    float best = 0.0f;
    int best_index = -1;
    for (int e = threadIdx.x; e < num_experts; e += blockDim.x) {
      if (!taken[e] && internal::Better(probs[e], e, best, best_index)) {
        best = probs[e];
        best_index = e;
      }
    }
    internal::BlockBest(best, best_index, reduce, reduce_index);
    if (threadIdx.x == 0) {
      taken[best_index] = 1;
      row_experts[slot] = best_index;
      row_weights[slot] = best;
      top_sum += best;
    }
    __syncthreads();  // `taken` is read by every thread in the next round
  }
  if (threadIdx.x == 0 && normalize) {
    for (int slot = 0; slot < top_k; ++slot) row_weights[slot] /= top_sum;
  }
}

}  // namespace

Status RouterTopK(const CudaStream& stream, const float* logits, size_t batch, size_t num_experts, size_t top_k,
                  bool normalize, int32_t* experts, float* weights) {
  ES_RETURN_IF_ERROR(internal::CheckStream(stream, "RouterTopK"));
  if (num_experts == 0 || num_experts > kernels::kMaxRouterExperts) {
    return Status::InvalidArgument("RouterTopK: num_experts must be in [1, " +
                                   std::to_string(kernels::kMaxRouterExperts) + "]");
  }
  if (top_k == 0 || top_k > num_experts) return Status::InvalidArgument("RouterTopK: top_k must be in [1, experts]");
  if (batch == 0) return Status::Ok();
  if (logits == nullptr || experts == nullptr || weights == nullptr) {
    return Status::InvalidArgument("RouterTopK: null logits, experts or weights");
  }
  const size_t shared = num_experts * (sizeof(float) + 1);
  RouterTopKKernel<<<static_cast<unsigned>(batch), kRouterThreads, shared, internal::Native(stream)>>>(
      logits, static_cast<int>(num_experts), static_cast<int>(top_k), normalize, experts, weights);
  return internal::LaunchStatus("RouterTopK");
}

}  // namespace es::cuda

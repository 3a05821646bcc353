// RMSNorm and Qwen3's per-head q/k RMSNorm + RoPE: one block per row (per head), the sum of squares reduced
// across the block, the arithmetic of kernels::RmsNorm and kernels::ApplyRope element for element.
#include <cmath>
#include <string>

#include "compute/cuda/cuda_common.cuh"

namespace es::cuda {
namespace {

using internal::WeightKind;

constexpr int kNormThreads = 256;
constexpr size_t kMaxHalfDim = kernels::kMaxHeadDim / 2;

// The RoPE inverse frequencies, computed on the host by kernels::RopeInverseFrequencies (the very fp32 pow the
// CPU uses) and passed by value: 1 KiB of kernel parameters.
struct InvFreq {
  float values[kMaxHalfDim];
};

template <WeightKind kKind>
__global__ void RmsNormKernel(const float* x, const void* weight, size_t dim, float eps, float* y) {
  __shared__ float reduce[internal::kMaxWarpsPerBlock];
  const float* xr = x + blockIdx.x * dim;
  float* yr = y + blockIdx.x * dim;
  float sum_squares = 0.0f;
  for (size_t i = threadIdx.x; i < dim; i += blockDim.x) sum_squares += xr[i] * xr[i];
  sum_squares = internal::BlockSum(sum_squares, reduce);
  // After BlockSum every thread has read its x; each writes only the elements it read, so x may be y.
  const float inv_rms = 1.0f / sqrtf(sum_squares / static_cast<float>(dim) + eps);
  for (size_t i = threadIdx.x; i < dim; i += blockDim.x) {
    yr[i] = internal::LoadWeight<kKind>(weight, i) * (xr[i] * inv_rms);
  }
}

// One block per (token, head) of q followed by those of k; blockDim.x = head_dim rounded up to a warp.
// Thread i normalises element i, then thread i < half rotates the pair (i, i + half).
template <WeightKind kQKind, WeightKind kKKind>
__global__ void QkNormRopeKernel(float* q, float* k, int num_heads, int num_kv_heads, int head_dim,
                                 const void* q_norm, const void* k_norm, float eps, const int32_t* positions,
                                 InvFreq inv_freq) {
  __shared__ float reduce[internal::kMaxWarpsPerBlock];
  __shared__ float normed[kernels::kMaxHeadDim];
  const int heads_per_token = num_heads + num_kv_heads;
  const size_t token = blockIdx.x / heads_per_token;
  const int head = static_cast<int>(blockIdx.x % heads_per_token);
  const bool is_q = head < num_heads;
  float* v = is_q ? q + (token * num_heads + head) * head_dim
                  : k + (token * num_kv_heads + (head - num_heads)) * head_dim;
  const void* norm = is_q ? q_norm : k_norm;
  const int i = threadIdx.x;
  const float value = i < head_dim ? v[i] : 0.0f;
  float out = value;
  if (norm != nullptr) {
    const float sum_squares = internal::BlockSum(value * value, reduce);
    const float inv_rms = 1.0f / sqrtf(sum_squares / static_cast<float>(head_dim) + eps);
    if (i < head_dim) {
      const float w = is_q ? internal::LoadWeight<kQKind>(norm, i) : internal::LoadWeight<kKKind>(norm, i);
      out = w * (value * inv_rms);
    }
  }
  if (i < head_dim) normed[i] = out;
  __syncthreads();
  const int half = head_dim / 2;
  if (i < half) {
    const float angle = static_cast<float>(positions[token]) * inv_freq.values[i];
    const float c = static_cast<float>(cos(static_cast<double>(angle)));
    const float s = static_cast<float>(sin(static_cast<double>(angle)));
    const float x1 = normed[i];
    const float x2 = normed[i + half];
    v[i] = x1 * c - x2 * s;
    v[i + half] = x2 * c + x1 * s;
  }
}

Status CheckVector(const kernels::WeightVector& w, size_t size, const char* kernel, const char* role) {
  WeightKind kind;
  if (!internal::ToWeightKind(w.dtype, &kind) || w.size != size) {
    return Status::InvalidArgument(std::string(kernel) + ": " + role + " must be an F32, F16 or BF16 vector of " +
                                   std::to_string(size));
  }
  return Status::Ok();
}

template <WeightKind kQKind>
void LaunchQkNormRope(WeightKind k_kind, unsigned blocks, unsigned threads, cudaStream_t stream, float* q, float* k,
                      int heads, int kv_heads, int head_dim, const void* qn, const void* kn, float eps,
                      const int32_t* positions, const InvFreq& inv_freq) {
  switch (k_kind) {
    case WeightKind::kF32:
      QkNormRopeKernel<kQKind, WeightKind::kF32><<<blocks, threads, 0, stream>>>(q, k, heads, kv_heads, head_dim, qn,
                                                                                   kn, eps, positions, inv_freq);
      break;
    case WeightKind::kF16:
      QkNormRopeKernel<kQKind, WeightKind::kF16><<<blocks, threads, 0, stream>>>(q, k, heads, kv_heads, head_dim, qn,
                                                                                   kn, eps, positions, inv_freq);
      break;
    case WeightKind::kBF16:
      QkNormRopeKernel<kQKind, WeightKind::kBF16><<<blocks, threads, 0, stream>>>(q, k, heads, kv_heads, head_dim,
                                                                                    qn, kn, eps, positions, inv_freq);
      break;
    default: break;  // weight vectors are F32, F16 or BF16 (ToWeightKind of a DType)
  }
}

}  // namespace

Status RmsNorm(const CudaStream& stream, const float* x, size_t rows, const kernels::WeightVector& weight, float eps,
               float* y) {
  ES_RETURN_IF_ERROR(internal::CheckStream(stream, "RmsNorm"));
  WeightKind kind;
  if (!internal::ToWeightKind(weight.dtype, &kind) || weight.size == 0 || weight.data == nullptr) {
    return Status::InvalidArgument("RmsNorm: weight must be a non-empty F32, F16 or BF16 vector");
  }
  if (!(eps >= 0.0f)) return Status::InvalidArgument("RmsNorm: eps must be >= 0");
  if (rows == 0) return Status::Ok();
  if (x == nullptr || y == nullptr) return Status::InvalidArgument("RmsNorm: null x or y");
  const unsigned blocks = static_cast<unsigned>(rows);
  switch (kind) {
    case WeightKind::kF32:
      RmsNormKernel<WeightKind::kF32><<<blocks, kNormThreads, 0, internal::Native(stream)>>>(x, weight.data,
                                                                                              weight.size, eps, y);
      break;
    case WeightKind::kF16:
      RmsNormKernel<WeightKind::kF16><<<blocks, kNormThreads, 0, internal::Native(stream)>>>(x, weight.data,
                                                                                              weight.size, eps, y);
      break;
    case WeightKind::kBF16:
      RmsNormKernel<WeightKind::kBF16><<<blocks, kNormThreads, 0, internal::Native(stream)>>>(x, weight.data,
                                                                                               weight.size, eps, y);
      break;
    default: break;  // weight vectors are F32, F16 or BF16 (ToWeightKind of a DType)
  }
  return internal::LaunchStatus("RmsNorm");
}

Status QkNormRope(const CudaStream& stream, const kernels::AttentionShape& shape, float* q, float* k, size_t tokens,
                  const kernels::WeightVector& q_norm, const kernels::WeightVector& k_norm, float eps,
                  const int32_t* positions, float theta) {
  ES_RETURN_IF_ERROR(internal::CheckStream(stream, "QkNormRope"));
  const size_t head_dim = shape.head_dim;
  if (shape.num_heads == 0 || shape.num_kv_heads == 0) return Status::InvalidArgument("QkNormRope: no heads");
  if (head_dim > kernels::kMaxHeadDim) return Status::InvalidArgument("QkNormRope: head_dim above kMaxHeadDim");
  InvFreq inv_freq{};
  ES_RETURN_IF_ERROR(kernels::RopeInverseFrequencies(head_dim, theta, std::span<float>(inv_freq.values, head_dim / 2)));
  // A norm with null data is "none"; its dtype then only picks a template instance.
  WeightKind q_kind = WeightKind::kF32;
  WeightKind k_kind = WeightKind::kF32;
  if (q_norm.data != nullptr) {
    ES_RETURN_IF_ERROR(CheckVector(q_norm, head_dim, "QkNormRope", "q_norm"));
    internal::ToWeightKind(q_norm.dtype, &q_kind);
  }
  if (k_norm.data != nullptr) {
    ES_RETURN_IF_ERROR(CheckVector(k_norm, head_dim, "QkNormRope", "k_norm"));
    internal::ToWeightKind(k_norm.dtype, &k_kind);
  }
  if (!(eps >= 0.0f)) return Status::InvalidArgument("QkNormRope: eps must be >= 0");
  if (tokens == 0) return Status::Ok();
  if (q == nullptr || k == nullptr || positions == nullptr) {
    return Status::InvalidArgument("QkNormRope: null q, k or positions");
  }
  const unsigned blocks = static_cast<unsigned>(tokens * (shape.num_heads + shape.num_kv_heads));
  const unsigned threads = internal::Blocks(head_dim, internal::kWarpSize) * internal::kWarpSize;
  const int heads = static_cast<int>(shape.num_heads);
  const int kv_heads = static_cast<int>(shape.num_kv_heads);
  const int dim = static_cast<int>(head_dim);
  cudaStream_t s = internal::Native(stream);
  switch (q_kind) {
    case WeightKind::kF32:
      LaunchQkNormRope<WeightKind::kF32>(k_kind, blocks, threads, s, q, k, heads, kv_heads, dim, q_norm.data,
                                         k_norm.data, eps, positions, inv_freq);
      break;
    case WeightKind::kF16:
      LaunchQkNormRope<WeightKind::kF16>(k_kind, blocks, threads, s, q, k, heads, kv_heads, dim, q_norm.data,
                                         k_norm.data, eps, positions, inv_freq);
      break;
    case WeightKind::kBF16:
      LaunchQkNormRope<WeightKind::kBF16>(k_kind, blocks, threads, s, q, k, heads, kv_heads, dim, q_norm.data,
                                          k_norm.data, eps, positions, inv_freq);
      break;
    default: break;  // weight vectors are F32, F16 or BF16 (ToWeightKind of a DType)
  }
  return internal::LaunchStatus("QkNormRope");
}

}  // namespace es::cuda

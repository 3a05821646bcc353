// Element-wise kernels of the CUDA backend's forward pass: the residual add, a projection's bias, and Qwen2-MoE's
// sigmoid-gated shared expert. Grid-stride loops over fp32 activations; bias weights widened exactly to fp32.
#include <string>

#include "compute/cuda/cuda_common.cuh"

namespace es::cuda {
namespace {

using internal::WeightKind;

constexpr int kThreads = 256;
constexpr size_t kMaxBlocks = 4096;

unsigned GridFor(size_t items) {
  const size_t blocks = (items + kThreads - 1) / kThreads;
  return static_cast<unsigned>(blocks < kMaxBlocks ? blocks : kMaxBlocks);
}

__global__ void AddInPlaceKernel(float* x, const float* y, size_t n) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    x[i] += y[i];
  }
}

template <WeightKind kKind>
__global__ void AddBiasKernel(float* y, const void* bias, size_t rows, size_t cols) {
  const size_t n = rows * cols;
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    y[i] += internal::LoadWeight<kKind>(bias, i % cols);
  }
}

__global__ void AddSigmoidGatedKernel(float* x, const float* gate, size_t gate_stride, const float* src, size_t rows,
                                      size_t cols) {
  const size_t n = rows * cols;
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const float g = gate[(i / cols) * gate_stride];
    x[i] += (1.0f / (1.0f + expf(-g))) * src[i];
  }
}

}  // namespace

Status AddInPlace(const CudaStream& stream, float* x, const float* y, size_t n) {
  ES_RETURN_IF_ERROR(internal::CheckStream(stream, "AddInPlace"));
  if (n == 0) return Status::Ok();
  if (x == nullptr || y == nullptr) return Status::InvalidArgument("AddInPlace: null pointer");
  AddInPlaceKernel<<<GridFor(n), kThreads, 0, internal::Native(stream)>>>(x, y, n);
  return internal::LaunchStatus("AddInPlace");
}

Status AddBias(const CudaStream& stream, float* y, size_t rows, const kernels::WeightVector& bias) {
  ES_RETURN_IF_ERROR(internal::CheckStream(stream, "AddBias"));
  WeightKind kind;
  if (!internal::ToWeightKind(bias.dtype, &kind)) {
    return Status::InvalidArgument("AddBias: the bias must be F32, F16 or BF16");
  }
  if (rows == 0 || bias.size == 0) return Status::Ok();
  if (y == nullptr || bias.data == nullptr) return Status::InvalidArgument("AddBias: null pointer");
  const unsigned grid = GridFor(rows * bias.size);
  cudaStream_t s = internal::Native(stream);
  switch (kind) {
    case WeightKind::kF32: AddBiasKernel<WeightKind::kF32><<<grid, kThreads, 0, s>>>(y, bias.data, rows, bias.size); break;
    case WeightKind::kF16: AddBiasKernel<WeightKind::kF16><<<grid, kThreads, 0, s>>>(y, bias.data, rows, bias.size); break;
    case WeightKind::kBF16: AddBiasKernel<WeightKind::kBF16><<<grid, kThreads, 0, s>>>(y, bias.data, rows, bias.size); break;
    default: break;  // weight vectors are F32, F16 or BF16 (ToWeightKind of a DType)
  }
  return internal::LaunchStatus("AddBias");
}

Status AddSigmoidGated(const CudaStream& stream, float* x, const float* gate, size_t gate_stride, const float* src,
                       size_t rows, size_t cols) {
  ES_RETURN_IF_ERROR(internal::CheckStream(stream, "AddSigmoidGated"));
  if (rows == 0 || cols == 0) return Status::Ok();
  if (x == nullptr || gate == nullptr || src == nullptr) return Status::InvalidArgument("AddSigmoidGated: null pointer");
  if (gate_stride == 0) return Status::InvalidArgument("AddSigmoidGated: gate_stride must be > 0");
  AddSigmoidGatedKernel<<<GridFor(rows * cols), kThreads, 0, internal::Native(stream)>>>(x, gate, gate_stride, src,
                                                                                          rows, cols);
  return internal::LaunchStatus("AddSigmoidGated");
}

}  // namespace es::cuda
